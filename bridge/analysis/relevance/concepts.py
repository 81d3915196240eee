"""Concept sets: named visual concepts, each with its concept words, and the prompts of the
random generations that score the heads. Concept sets are data (TOML), not code.

A concept-set file::

    name = "shapes"
    description = "..."
    prompts = ["a red circle", "a blue square above a green star", ...]
    [generation]          # defaults for `stepx relevance` (the command line wins)
    steps = 20
    guidance = 4.0
    [concepts]
    shape = ["circle", "square", ...]
    colour = ["red", "green", ...]
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: concept sets shipped with the package: name -> file in ``concept_sets/``
SHIPPED = ("shapes", "sd14")


@dataclass(frozen=True)
class ConceptSet:
    """Concept names (in file order), their words, and the generation prompts."""

    name: str
    concepts: tuple[str, ...]
    words: tuple[tuple[str, ...], ...]  # words[c] = the concept words of concepts[c]
    prompts: tuple[str, ...]
    generation: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    digest: str = ""  # sha256 of the source text: a resumed run must use the same set

    def __post_init__(self) -> None:
        if len(self.concepts) < 2:
            raise ValueError(f"concept set {self.name!r}: relevance needs at least 2 concepts (an argmax over one is always it), got {len(self.concepts)}")
        if len(set(self.concepts)) != len(self.concepts):
            raise ValueError(f"concept set {self.name!r}: concept names must be unique, got {list(self.concepts)}")
        for c, ws in zip(self.concepts, self.words):
            if not ws or not all(isinstance(w, str) and w.strip() for w in ws):
                raise ValueError(f"concept set {self.name!r}: concept {c!r} needs a non-empty list of non-empty words")
        if not self.prompts or not all(isinstance(p, str) and p.strip() for p in self.prompts):
            raise ValueError(f"concept set {self.name!r}: 'prompts' must be a non-empty list of prompts for the random generations")
        for c in self.concepts:
            if not c.replace("-", "").replace("_", "").isalnum():
                raise ValueError(f"concept set {self.name!r}: concept name {c!r} must be letters, digits, '-' or '_' (it names a JSON file)")


def parse_concepts(text: str, name: str = "concepts") -> ConceptSet:
    """Parse a concept-set TOML text; a clear ValueError for anything malformed."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"concept set {name}: not valid TOML: {exc}") from None
    known = {"name", "description", "prompts", "generation", "concepts"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"concept set {name}: unknown keys {unknown}; known keys: {sorted(known)}")
    concepts = data.get("concepts")
    if not isinstance(concepts, dict) or not concepts:
        raise ValueError(f"concept set {name}: needs a [concepts] table mapping each concept to a list of words")
    for c, ws in concepts.items():
        if not isinstance(ws, list) or not all(isinstance(w, str) for w in ws):
            raise ValueError(f"concept set {name}: concept {c!r} must be a list of words (strings)")
    prompts = data.get("prompts", [])
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"concept set {name}: 'prompts' must be a list of strings")
    generation = data.get("generation", {})
    if not isinstance(generation, dict) or set(generation) - {"steps", "guidance", "width", "height"}:
        raise ValueError(f"concept set {name}: [generation] takes steps, guidance, width, height")
    for key, value in generation.items():
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0) if key == "guidance" else (
            isinstance(value, int) and not isinstance(value, bool) and value >= 1 and (key == "steps" or value % 8 == 0))
        if not ok:
            want = "a number ≥ 0" if key == "guidance" else "a whole number ≥ 1" if key == "steps" else "a positive multiple of 8"
            raise ValueError(f"concept set {name}: [generation] {key} must be {want}, got {value!r}")
    return ConceptSet(
        name=str(data.get("name", name)),
        concepts=tuple(str(c) for c in concepts),
        words=tuple(tuple(str(w).strip() for w in ws) for ws in concepts.values()),
        prompts=tuple(prompts),
        generation=dict(generation),
        description=str(data.get("description", "")),
        digest=hashlib.sha256(text.encode()).hexdigest(),
    )


def load_concepts(source: str | Path) -> ConceptSet:
    """A concept set from a TOML file, or a shipped one by name (``shapes``, ``sd14``)."""
    if str(source) in SHIPPED:
        text = resources.files(__package__).joinpath("concept_sets").joinpath(f"{source}.toml").read_text()
        return parse_concepts(text, str(source))
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"concept set {source} is not a file nor a shipped set ({', '.join(SHIPPED)})")
    return parse_concepts(path.read_text(), path.stem)
