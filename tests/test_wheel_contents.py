"""The wheel carries both embedded checkpoints as package data, and the VAE only once.

Built with setuptools' own commands into a fresh temporary build folder (a couple of seconds): an
in-tree `pip wheel` reuses ``build/lib`` from earlier builds, which could hide a missing
package-data glob. `.ci/wheel-smoke.sh` goes further: it installs the wheel in a fresh venv and
records with both checkpoints."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from bridge.models.shapes import SHAPES_FREE_WEIGHTS, SHAPES_WEIGHTS

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_both_checkpoints(tmp_path):
    subprocess.run([sys.executable, "setup.py", "-q", "build", "--build-base", str(tmp_path / "build"), "egg_info", "--egg-base", str(tmp_path),
                    "bdist_wheel", "--bdist-dir", str(tmp_path / "bdist"), "-d", str(tmp_path / "dist")],
                   cwd=ROOT, check=True, capture_output=True, timeout=600)
    (wheel,) = (tmp_path / "dist").glob("stepx_bridge-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in (SHAPES_WEIGHTS, SHAPES_FREE_WEIGHTS):
        files = [str(f.relative_to(ROOT)) for f in folder.rglob("*") if f.is_file()]
        assert files and not [f for f in files if f not in names], sorted(set(files) - names)
    vaes = [n for n in names if n.endswith("vae/diffusion_pytorch_model.safetensors")]
    assert vaes == ["bridge/models/shapes/weights/vae/diffusion_pytorch_model.safetensors"], vaes
