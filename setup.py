"""Build step only (everything else is in pyproject.toml): the wheel carries the top-level
``shaders/`` folder as ``bridge/shaders/``, so an installed ``stepx preview`` finds its GLSL through
importlib.resources while the checkout keeps one copy of each shader where the design puts it."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SHADER_SUFFIXES = {".glsl", ".vert", ".frag", ".comp"}


class BuildPyWithShaders(build_py):
    def run(self) -> None:
        super().run()
        dest = Path(self.build_lib, "bridge", "shaders")
        dest.mkdir(parents=True, exist_ok=True)
        for src in sorted(Path(__file__).parent.joinpath("shaders").iterdir()):
            if src.suffix in SHADER_SUFFIXES:
                shutil.copy2(src, dest / src.name)


setup(cmdclass={"build_py": BuildPyWithShaders})
