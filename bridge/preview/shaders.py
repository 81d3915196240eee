"""Load the GLSL files shipped in ``bridge/shaders/`` and splice ``#include "file.glsl"`` lines.

The shaders are package data: :data:`SHADER_DIR` is found through :mod:`importlib.resources`, so
an installed wheel finds them as a checkout does. ``$STEPX_SHADER_DIR`` (or a ``shader_dir``
argument) points at another folder, for live-editing a copy. Includes are resolved relative to
the including file, recursively, each file at most once.
"""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path

#: the one place shaders are looked up: the package's own copy unless the user points elsewhere
SHADER_DIR = Path(os.environ.get("STEPX_SHADER_DIR") or str(resources.files("bridge") / "shaders"))

_INCLUDE = re.compile(r'^\s*#include\s+"([^"]+)"\s*$')


def shader_path(name: str, shader_dir: str | Path | None = None) -> Path:
    """The file for shader ``name``; a clear error naming the folder when it is missing."""
    path = Path(shader_dir or SHADER_DIR) / name
    if not path.is_file():
        raise FileNotFoundError(
            f"shader {name!r} not found at {path}; the package ships them in bridge/shaders/ "
            f"(reinstall stepx-bridge), or set STEPX_SHADER_DIR to a folder holding a copy")
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
