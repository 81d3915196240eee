"""Load the GLSL files of the project's ``shaders/`` folder and splice ``#include "file.glsl"`` lines.

The shaders live in ``shaders/`` at the top of the checkout (shared with TouchDesigner's copies);
a built wheel carries them as package data in ``bridge/shaders/`` (setup.py's build step copies
them there). :data:`SHADER_DIR` is the one place they are looked up: the installed copy when
there is one, else the checkout's folder. ``$STEPX_SHADER_DIR`` (or a ``shader_dir`` argument)
points at another folder, for live-editing a copy. Includes are resolved relative to the
including file, recursively, each file at most once.
"""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path



def _shipped_dir() -> Path:
    """The wheel's copy (``bridge/shaders/``), else the checkout's ``shaders/`` (editable installs)."""
    installed = Path(str(resources.files("bridge"))) / "shaders"
    return installed if installed.is_dir() else Path(__file__).resolve().parents[2] / "shaders"


#: the one place shaders are looked up: the shipped copy unless the user points elsewhere
SHADER_DIR = Path(os.environ.get("STEPX_SHADER_DIR") or _shipped_dir())

_INCLUDE = re.compile(r'^\s*#include\s+"([^"]+)"\s*$')


def shader_path(name: str, shader_dir: str | Path | None = None) -> Path:
    """The file for shader ``name``; a clear error naming the folder when it is missing."""
    path = Path(shader_dir or SHADER_DIR) / name
    if not path.is_file():
        raise FileNotFoundError(
            f"shader {name!r} not found at {path}; a wheel ships them in bridge/shaders/, a "
            f"checkout in shaders/ (reinstall stepx-bridge), or set STEPX_SHADER_DIR to a folder holding a copy")
    return path


def load_shader(name: str, shader_dir: str | Path | None = None, defines: dict | None = None) -> str:
    """Return the source of ``name`` with includes spliced and ``defines`` after ``#version``."""
    path = shader_path(name, shader_dir)
    seen: set[Path] = set()

    def expand(p: Path) -> list[str]:
        if p in seen:
            return []
        seen.add(p)
        out = []
        for n, line in enumerate(p.read_text().splitlines(), 1):
            m = _INCLUDE.match(line)
            if m:
                inc = p.parent / m.group(1)
                if not inc.is_file():
                    raise FileNotFoundError(f"{p}:{n}: included file {m.group(1)!r} not found at {inc}")
                out.append(f"// begin include {m.group(1)}")
                out.extend(expand(inc))
                out.append(f"// end include {m.group(1)}")
            else:
                out.append(line)
        return out

    lines = expand(path)
    if defines:
        idx = next((i for i, l in enumerate(lines) if l.strip().startswith("#version")), -1)
        extra = [f"#define {k} {v}" for k, v in defines.items()]
        lines[idx + 1:idx + 1] = extra
    return "\n".join(lines) + "\n"
