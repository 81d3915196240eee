"""``annotate(run, prompt) -> list[Instance]``: the prompt's objects found in a run's attention.

The stable entry point for the CLI, the TITAN dataset, the explorer and the daemon. ``run`` is
an :class:`Evidence`, a live :class:`~bridge.capture.CaptureRun` (frames kept), or a trace path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .detect import METHODS, DetectConfig, instances, object_evidence, refine, to_image
from .evidence import Evidence, from_capture, from_trace
from .prompt import Parsed, PromptObject, parse_prompt

log = logging.getLogger(__name__)


@dataclass
class Instance:
    """One found object instance. ``mask`` is ``[height, width]`` bool; ``bbox`` is COCO's
    ``[x, y, width, height]``; ``rle`` is pycocotools' compressed RLE (``counts`` as text)."""

    category: str
    mentions: tuple[str, ...]
    score: float
    mask: np.ndarray = field(repr=False)
    method: str = "guided"

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    @property
    def bbox(self) -> list[int]:
        rows, cols = np.flatnonzero(self.mask.any(1)), np.flatnonzero(self.mask.any(0))
        if not len(rows):
            return [0, 0, 0, 0]
        return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]

    @property
    def rle(self) -> dict[str, Any]:
        return encode_rle(self.mask)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready record (the packet and the dataset use it)."""
        return {"category": self.category, "mentions": list(self.mentions), "score": round(self.score, 5),
                "bbox": self.bbox, "area": self.area, "segmentation": self.rle, "method": self.method}


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """pycocotools' compressed RLE of a bool ``[H, W]`` mask, ``counts`` decoded to text (JSON-ready)."""
    from pycocotools import mask as mask_utils  # noqa: PLC0415 (the ``objects`` extra)

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """Inverse of :func:`encode_rle`: a bool ``[H, W]`` mask."""
    from pycocotools import mask as mask_utils  # noqa: PLC0415

    counts = rle["counts"]
    r = {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    if isinstance(counts, list):
        r = mask_utils.frPyObjects(r, *rle["size"])
    return mask_utils.decode(r).astype(bool)


def as_evidence(run: Any) -> Evidence:
    """An :class:`Evidence` from what ``annotate`` accepts."""
    if isinstance(run, Evidence):
        return run
    if isinstance(run, (str, Path)):
        return from_trace(run)
    if hasattr(run, "frames") and hasattr(run, "token_maps"):
        return from_capture(run)
    raise TypeError(f"annotate takes an Evidence, a CaptureRun or a trace path, not {type(run).__name__}")


def align(prompt_words: list[str], run_words: list[str]) -> list[int | None]:
    """Position in ``run_words`` of each of ``prompt_words``, matched in order, case-insensitive;
    None for a word the run does not have (a run's words may leave some out)."""
    folded = [w.lower() for w in run_words]
    out: list[int | None] = []
    j = 0
    for w in prompt_words:
        k = folded.index(w.lower(), j) if w.lower() in folded[j:] else None
        out.append(k)
        if k is not None:
            j = k + 1
    return out


def object_word_indices(parsed: Parsed, run_words: list[str]) -> list[tuple["Category", list[list[int]]]]:
    """Each category with its mentions' word positions in the run (noun first, then attributes).

    A word an object needs that the run does not have raises, listing the run's words."""
    pos = align(parsed.words, run_words)
    out = []
    for cat in categories(parsed):
        idx: list[list[int]] = []
        for m in cat.mentions:
            found = [pos[i] for i in m.word_indices]
            positions = [k for k in found if k is not None]
            if len(positions) < len(found):
                missing = [parsed.words[i] for i, k in zip(m.word_indices, found) if k is None]
                raise ValueError(f"the object {m.name!r} needs the words {missing}, which the run does not have; "
                                 f"its words are: {', '.join(run_words)}")
            idx.append(positions)
        out.append((cat, idx))
    return out


@dataclass(frozen=True)
class Category:
    """Mentions of one category gathered: ``"a red circle left of a red circle"`` -> red circle ×2."""

    name: str
    mentions: tuple[PromptObject, ...]

    @property
    def count(self) -> int | None:
        known = [m.count for m in self.mentions if m.count is not None]
        return sum(known) if len(known) == len(self.mentions) else None  # a mention of "several": unknown


def categories(parsed: Parsed) -> list[Category]:
    """The prompt's objects grouped by category, in order of first mention."""
    groups: dict[str, list[PromptObject]] = {}
    for o in parsed.objects:
        groups.setdefault(o.category, []).append(o)
    return [Category(k, tuple(v)) for k, v in groups.items()]


def detect_category(ev: Evidence, word_index: list[list[int]], count: int | None, method: str,
                    cfg: DetectConfig) -> tuple[list[tuple[torch.Tensor, float]], str]:
    """Instances ``[(mask [H, W] bool, score)]`` of one category from its mentions' word indices
    (each list: noun first, then attributes), and the method actually used."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; methods: {', '.join(METHODS)}")
    evidence = torch.stack([object_evidence(ev.word_maps, idx, cfg) for idx in word_index]).mean(0)  # [h, w]
    if method == "guided" and ev.affinity is not None:
        return instances(to_image(refine(evidence, ev.affinity, cfg), ev.size), cfg.guided_tau, cfg.min_area, count), method
    used = "wordmap" if method == "guided" else method  # no self-attention in this run (a trace): say so on every instance
    return instances(to_image(evidence, ev.size), cfg.tau, cfg.min_area, count), used


def annotate(run: Any, prompt: str | None = None, *, method: str = "guided", config: DetectConfig | None = None) -> list[Instance]:
    """Find the objects of ``prompt`` (default: the run's own words) in ``run``.

    Categories are objects, not words: "two red apples" is the category "red apple", asked for
    twice. A word the prompt handler cannot classify is logged, never guessed into an object."""
    ev = as_evidence(run)
    cfg = config or DetectConfig()
    parsed = parse_prompt(prompt if prompt is not None else " ".join(ev.words))
    if parsed.unknown:
        log.info("words the prompt handler could not classify (not objects): %s", ", ".join(parsed.unknown))
    out: list[Instance] = []
    for cat, idx in object_word_indices(parsed, ev.words):
        found, used = detect_category(ev, idx, cat.count, method, cfg)
        out += [Instance(cat.name, tuple(m.name for m in cat.mentions), s, m.numpy(), used) for m, s in found]
    return out


def detect_words(run: Any, words: list[str], *, count: int | None = 1, method: str = "guided",
                 config: DetectConfig | None = None) -> list[Instance]:
    """Text-guided detection of chosen words (the explorer's detection tab): ``words[0]`` is the
    noun, the rest its attributes; each must be a word of the run (an error lists them)."""
    ev = as_evidence(run)
    if not words:
        raise ValueError(f"name at least one word; the run's words are: {', '.join(ev.words)}")
    folded = [w.lower() for w in ev.words]
    missing = [w for w in words if w.lower() not in folded]
    if missing:
        raise ValueError(f"{', '.join(map(repr, missing))} not among the run's words: {', '.join(ev.words)}")
    idx = [folded.index(w.lower()) for w in words]
    found, used = detect_category(ev, [idx], count, method, config or DetectConfig())
    name = " ".join([*words[1:], words[0]])
    return [Instance(name, (name,), s, m.numpy(), used) for m, s in found]
