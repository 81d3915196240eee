"""Resolve ``#include "file.glsl"`` in TouchDesigner shader files (stdlib only).

Why: TouchDesigner compiles a shader from a DAT's text; splicing the shared force model
(``particles_common.glsl``) in at build time keeps ONE copy of the maths, the same way the
preview's loader (bridge/preview/shaders.py) does it.
"""

from __future__ import annotations

import re
from pathlib import Path

_INCLUDE = re.compile(r'^\s*#include\s+"([^"]+)"\s*$')


def splice_includes(path: str | Path, _seen: tuple[Path, ...] = ()) -> str:
    """Source of ``path`` with each ``#include "name"`` replaced by that file (same folder)."""
    path = Path(path).resolve()
    if path in _seen:
        raise ValueError(f"include cycle: {' -> '.join(str(p) for p in _seen + (path,))}")
    out: list[str] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        m = _INCLUDE.match(line)
        if not m:
            out.append(line)
            continue
        inc = path.parent / m.group(1)
        if not inc.is_file():
            raise FileNotFoundError(f"{path}:{n}: included file {m.group(1)!r} not found at {inc}")
        out += [f"// begin include {m.group(1)}", splice_includes(inc, _seen + (path,)), f"// end include {m.group(1)}"]
    return "\n".join(out) + "\n"
