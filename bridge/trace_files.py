"""The files of a rotated recording: ``show.stepx``, ``show.0001.stepx``, ``show.0002.stepx``, …

Why a scheme of its own: a capped recording (``--record-max-mb``) continues in numbered files
beside the one the user named, and every tool must agree on which files belong to it and in
which order. The number goes before the last suffix, so the files keep their extension (the
explorer and file managers still know them) and sort by number; the named file comes first.
A plain shell glob (``show*.stepx``) lists them in the wrong order (``show.0001.stepx`` sorts
before ``show.stepx``), so :func:`recording_order` sorts any list of paths into recording order.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

#: digits of a rotated file's number (more when it passes 9999: the number is never cut)
DIGITS = 4


def _split(path: Path) -> tuple[str, str]:
    """``(stem, suffix)`` with the number going between them (``night.show.stepx`` → ``night.show``, ``.stepx``)."""
    name = path.name
    stem, dot, ext = name.rpartition(".")
    return (stem, dot + ext) if dot and stem else (name, "")


def numbered(path: str | os.PathLike[str], number: int) -> Path:
    """The ``number``-th rotated file of the recording named ``path`` (0: ``path`` itself)."""
    p = Path(path)
    if number == 0:
        return p
    stem, ext = _split(p)
    return p.with_name(f"{stem}.{number:0{DIGITS}d}{ext}")


def _pattern(base: Path) -> re.Pattern[str]:
    stem, ext = _split(base)
    return re.compile(rf"{re.escape(stem)}\.(\d{{{DIGITS},}}){re.escape(ext)}")


def number_of(path: str | os.PathLike[str], base: str | os.PathLike[str]) -> int | None:
    """The rotation number of ``path`` in the recording named ``base`` (0 for ``base``), else None."""
    p, b = Path(path), Path(base)
    if p.name == b.name:
        return 0
    m = _pattern(b).fullmatch(p.name)
    return int(m.group(1)) if m else None


def base_of(path: str | os.PathLike[str]) -> Path:
    """The named file of the recording ``path`` belongs to (``show.0003.stepx`` → ``show.stepx``)."""
    p = Path(path)
    stem, ext = _split(p)
    head, dot, digits = stem.rpartition(".")
    if dot and head and len(digits) >= DIGITS and digits.isdigit():
        return p.with_name(head + ext)
    return p


def rotated_files(base: str | os.PathLike[str]) -> list[Path]:
    """Every finished file of the recording named ``base`` that is on disk, in recording order
    (``base`` first if it is there, then by number). ``.partial`` files are not listed."""
    b = Path(base)
    folder = b.parent if str(b.parent) else Path(".")
    pat = _pattern(b)
    found: list[tuple[int, Path]] = [(0, b)] if b.is_file() else []
    try:
        names = os.listdir(folder)
    except OSError:
        names = []
    for name in names:
        m = pat.fullmatch(name)
        if m and (folder / name).is_file():
            found.append((int(m.group(1)), b.with_name(name)))
    return [p for _, p in sorted(found)]


def unfinished_files(base: str | os.PathLike[str]) -> list[Path]:
    """The ``.partial`` files of the recording named ``base`` (runs cut off by a crash or a full
    disk), which :func:`rotated_files` leaves out; in recording order."""
    b = Path(base)
    folder = b.parent if str(b.parent) else Path(".")
    pat = _pattern(b)
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    found: list[tuple[int, Path]] = []
    for name in names:
        if name == b.name + ".partial":
            found.append((0, b.with_name(name)))
        elif name.endswith(".partial") and (m := pat.fullmatch(name.removesuffix(".partial"))):
            found.append((int(m.group(1)), b.with_name(name)))
    return [p for _, p in sorted(found)]


def highest_number(base: str | os.PathLike[str]) -> int:
    """The highest rotation number in use beside ``base`` (finished or ``.partial``), 0 if none:
    the next file takes a higher one, so the numbers stay in recording order."""
    b = Path(base)
    folder = b.parent if str(b.parent) else Path(".")
    pat = _pattern(b)
    top = 0
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    for name in names:
        m = pat.fullmatch(name.removesuffix(".partial"))
        if m:
            top = max(top, int(m.group(1)))
    return top


def recording_order(paths: list[Path]) -> list[Path]:
    """``paths`` sorted so the files of one rotated recording play in the order they were
    written (named file, then by number); different recordings keep the order given."""
    first_seen: dict[Path, int] = {}
    for i, p in enumerate(paths):
        first_seen.setdefault(base_of(p), i)
    return sorted(paths, key=lambda p: (first_seen[base_of(p)], number_of(p, base_of(p)) or 0))
