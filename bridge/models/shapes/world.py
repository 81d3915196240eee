"""The shapes world: procedurally rendered scenes with captions and per-object masks.

Everything is batched tensor work on one device (the GPU for training, the CPU for tests
and evaluation): a batch of scenes is sampled as tensors, rendered as tensors, and its
captions are assembled directly as token ids, so the training loop never tokenises text
and never waits on the host.

Layout: the image is a 3x3 grid of cells; each object sits in its own cell (jittered inside
it), so objects never overlap and every mask is exact. A relation joins consecutive objects:
"above"/"below" put them in one column, "left of"/"right of" in one row, so the named axis is
always the dominant one.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from itertools import product
from typing import Sequence, TypedDict

import torch

from .tokenizer import word_ids
from .vocab import (
    BACKGROUNDS,
    COLOURS,
    DEFAULT_BACKGROUND,
    HELD_OUT_PAIRS,
    MAX_LENGTH,
    RELATIONS,
    SHAPES,
    SIZES,
)

COLOUR_NAMES = tuple(COLOURS)
BG_NAMES = tuple(BACKGROUNDS)
REL_NAMES = tuple(RELATIONS)
GRAY = BG_NAMES.index(DEFAULT_BACKGROUND)
MAX_OBJECTS = 3
#: object radius as a fraction of the image side: (small, large); no size word -> anywhere in between
SMALL_R = (0.085, 0.110)
LARGE_R = (0.135, 0.160)
N_OBJECT_PROBS = (0.2, 0.45, 0.35)


@dataclass
class Scenes:
    """A batch of scenes. Object slots past ``n`` are padding (shape/colour -1)."""

    n: torch.Tensor  # [B] long, 1..3
    colour: torch.Tensor  # [B, 3] long, index into COLOUR_NAMES, -1 = none
    shape: torch.Tensor  # [B, 3] long, index into SHAPES, -1 = none
    size_word: torch.Tensor  # [B, 3] long, 0 = no size word, 1 = small, 2 = large
    radius: torch.Tensor  # [B, 3] float, pixels
    cx: torch.Tensor  # [B, 3] float, pixels from the left
    cy: torch.Tensor  # [B, 3] float, pixels from the top
    rel: torch.Tensor  # [B, 2] long, index into REL_NAMES, -1 = none (rel[i] joins object i and i+1)
    bg: torch.Tensor  # [B] long, index into BG_NAMES
    bg_word: torch.Tensor  # [B] bool, caption names the background
    size: int = 128

    def __len__(self) -> int:
        return int(self.n.shape[0])


def _layouts() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All valid (n, relations, cells) combinations: returns cells [T,3], rels [T,2], n [T]."""

    def ok(a: int, b: int, rel: int) -> bool:
        ra, ca, rb, cb = a // 3, a % 3, b // 3, b % 3
        return [ca == cb and ra < rb, ca == cb and ra > rb, ra == rb and ca < cb, ra == rb and ca > cb][rel]

    rows: list[tuple[int, list[int], list[int]]] = [(1, [c, -1, -1], [-1, -1]) for c in range(9)]
    for r1, a, b in product(range(4), range(9), range(9)):
        if ok(a, b, r1):
            rows.append((2, [a, b, -1], [r1, -1]))
    for r1, r2, a, b, c in product(range(4), range(4), range(9), range(9), range(9)):
        if len({a, b, c}) == 3 and ok(a, b, r1) and ok(b, c, r2):
            rows.append((3, [a, b, c], [r1, r2]))
    n = torch.tensor([r[0] for r in rows])
    cells = torch.tensor([r[1] for r in rows])
    rels = torch.tensor([r[2] for r in rows])
    return cells, rels, n


def allowed_pairs(held_out: bool = False) -> torch.Tensor:
    """[P, 2] (colour, shape) index pairs: training pairs, or the held-out ones."""
    held = {(COLOUR_NAMES.index(c), SHAPES.index(s)) for c, s in HELD_OUT_PAIRS}
    pairs = [(c, s) for c in range(len(COLOUR_NAMES)) for s in range(len(SHAPES)) if ((c, s) in held) == held_out]
    return torch.tensor(pairs)


class World:
    """Samples and renders batches of scenes on ``device``.

    ``held_out=False`` (training) never pairs a colour with a shape listed in HELD_OUT_PAIRS.
    """

    def __init__(self, size: int = 128, device: str | torch.device = "cpu", seed: int = 0, tokenizer_dir: str | None = None):
        self.size = size
        self.device = torch.device(device)
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(seed)
        cells, rels, n = _layouts()
        order = torch.argsort(n, stable=True)
        self.cells, self.rels, self.layout_n = cells[order].to(self.device), rels[order].to(self.device), n[order]
        counts = torch.bincount(n, minlength=4)
        self.layout_offset = (torch.cumsum(counts, 0) - counts).to(self.device)
        self.layout_count = counts.to(self.device)
        self.n_probs = torch.tensor((0.0, *N_OBJECT_PROBS), device=self.device)
        self.pairs = allowed_pairs(False).to(self.device)
        bg_w = torch.ones(len(BG_NAMES))
        bg_w[GRAY] = 3.0
        self.bg_weights = bg_w.to(self.device)
        self.palette = torch.tensor([BACKGROUNDS[c] for c in BG_NAMES], device=self.device)  # [9, 3], object colours first
        ids = word_ids(tokenizer_dir)
        self.ids = ids
        self._colour_ids = torch.tensor([ids[c] for c in COLOUR_NAMES], device=self.device)
        self._bg_ids = torch.tensor([ids[c] for c in BG_NAMES], device=self.device)
        self._shape_ids = torch.tensor([ids[s] for s in SHAPES], device=self.device)
        self._size_ids = torch.tensor([0, ids["small"], ids["large"]], device=self.device)
        self._rel1_ids = torch.tensor([ids[RELATIONS[r][0]] for r in REL_NAMES], device=self.device)
        self._r_lo = torch.tensor((SMALL_R[0], SMALL_R[0], LARGE_R[0]), device=self.device)
        self._r_hi = torch.tensor((LARGE_R[1], SMALL_R[1], LARGE_R[1]), device=self.device)
        self._const = {w: torch.tensor(i, device=self.device) for w, i in ids.items()}
        self._true = torch.ones((), dtype=torch.bool, device=self.device)
        ys, xs = torch.meshgrid(torch.arange(size, device=self.device) + 0.5, torch.arange(size, device=self.device) + 0.5, indexing="ij")
        self._xs, self._ys = xs, ys

    def _rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=self.gen, device=self.device)

    # ------------------------------------------------------------------ sampling
    def sample(self, batch: int) -> Scenes:
        """Sample ``batch`` training scenes (no held-out colour-shape pair). No host syncs."""
        s = self.size
        n = torch.multinomial(self.n_probs.expand(batch, -1), 1, generator=self.gen).squeeze(1)  # [B]
        li = self.layout_offset[n] + (self._rand(batch) * self.layout_count[n]).long().clamp_max(self.layout_count[n] - 1)
        cells, rel = self.cells[li], self.rels[li]  # [B,3], [B,2]
        valid = cells >= 0
        pi = (self._rand(batch, MAX_OBJECTS) * len(self.pairs)).long().clamp_max(len(self.pairs) - 1)
        colour = torch.where(valid, self.pairs[pi, 0], -1)
        shape = torch.where(valid, self.pairs[pi, 1], -1)
        size_word = torch.where(self._rand(batch, MAX_OBJECTS) < 0.6, 1 + (self._rand(batch, MAX_OBJECTS) < 0.5).long(), 0)
        lo, hi = self._r_lo[size_word], self._r_hi[size_word]
        radius = (lo + (hi - lo) * self._rand(batch, MAX_OBJECTS)) * s
        cx, cy = self._place(cells, radius)
        # background: any colour no object has, gray three times as likely
        used = (torch.nn.functional.one_hot(colour.clamp_min(0), len(BG_NAMES)).bool() & valid[..., None]).any(1)  # [B, 9]
        bg = torch.multinomial(self.bg_weights * (~used), 1, generator=self.gen).squeeze(1)
        bg_word = (bg != GRAY) | (self._rand(batch) < 0.5)
        return Scenes(n, colour, shape, size_word, radius, cx, cy, rel, bg, bg_word, s)

    def _place(self, cells: torch.Tensor, radius: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cs = self.size / 3
        slack = (cs / 2 - radius - 1).clamp_min(0)
        jx = (self._rand(*cells.shape) * 2 - 1) * slack
        jy = (self._rand(*cells.shape) * 2 - 1) * slack
        c = cells.clamp_min(0)
        return (c % 3 + 0.5) * cs + jx, (c // 3 + 0.5) * cs + jy

    def scenes_from_specs(self, specs: Sequence[CaptionSpec]) -> Scenes:
        """Build scenes from parsed captions (see ``parse_caption``); positions are sampled to fit."""
        b = len(specs)
        colour = torch.full((b, 3), -1, dtype=torch.long)
        shape = torch.full((b, 3), -1, dtype=torch.long)
        size_word = torch.zeros((b, 3), dtype=torch.long)
        rel = torch.full((b, 2), -1, dtype=torch.long)
        n = torch.zeros(b, dtype=torch.long)
        bg = torch.full((b,), GRAY, dtype=torch.long)
        bg_word = torch.zeros(b, dtype=torch.bool)
        li = torch.zeros(b, dtype=torch.long)
        rels_cpu, n_cpu = self.rels.cpu(), self.layout_n
        for i, sp in enumerate(specs):
            objs = sp["objects"]
            n[i] = len(objs)
            for k, o in enumerate(objs):
                colour[i, k] = COLOUR_NAMES.index(o["colour"])
                shape[i, k] = SHAPES.index(o["shape"])
                size_word[i, k] = 0 if o.get("size") is None else 1 + SIZES.index(o["size"])
            for k, r in enumerate(sp["relations"]):
                rel[i, k] = REL_NAMES.index(r)
            if sp.get("background") is not None:
                bg[i] = BG_NAMES.index(sp["background"])
                bg_word[i] = True
            match = ((n_cpu == n[i]) & (rels_cpu == rel[i]).all(1)).nonzero().flatten()
            li[i] = match[int(torch.randint(len(match), (1,), generator=torch.Generator().manual_seed(int(self._rand(1).item() * 2**31))))]
        dev, s = self.device, self.size
        colour, shape, size_word, rel, n, bg, bg_word = (t.to(dev) for t in (colour, shape, size_word, rel, n, bg, bg_word))
        cells = self.cells[li.to(dev)]
        lo, hi = self._r_lo[size_word], self._r_hi[size_word]
        radius = (lo + (hi - lo) * self._rand(b, 3)) * s
        cx, cy = self._place(cells, radius)
        return Scenes(n, colour, shape, size_word, radius, cx, cy, rel, bg, bg_word, s)

    # ------------------------------------------------------------------ rendering
    def render(self, sc: Scenes) -> tuple[torch.Tensor, torch.Tensor]:
        """Return images [B, 3, H, W] in [0, 1] and object masks [B, 3, H, W] (bool)."""
        valid = sc.shape >= 0  # [B, 3]
        u = (self._xs - sc.cx[..., None, None]) / sc.radius[..., None, None]  # [B, 3, H, W]
        v = (self._ys - sc.cy[..., None, None]) / sc.radius[..., None, None]
        masks = shape_masks(u, v, sc.shape.clamp_min(0)) & valid[..., None, None]
        img = self.palette[sc.bg][:, :, None, None].expand(-1, -1, self.size, self.size).clone()  # [B, 3, H, W]
        for k in range(MAX_OBJECTS):
            col = self.palette[sc.colour[:, k].clamp_min(0)][:, :, None, None]
            img = torch.where(masks[:, k : k + 1], col, img)
        return img, masks

    # ------------------------------------------------------------------ captions
    def caption_ids(self, sc: Scenes, length: int = MAX_LENGTH) -> torch.Tensor:
        """Token ids [B, length] of the scenes' captions (bos, words, eos, padded with eos)."""
        return self.caption_tokens(sc, length)[0]

    def rewrite(self, sc: Scenes, p: float = 0.5) -> tuple[Scenes, torch.Tensor]:
        """The same scenes described the other way round, each with probability ``p``.

        A chain "A rel1 B rel2 C" is equivalently "C inv(rel2) B inv(rel1) A" (above <-> below,
        left of <-> right of); the objects, their cells and the background are unchanged, so the
        rendered image is the same. Returns the scenes and ``perm`` [B, 3]: rewritten slot k holds
        original slot ``perm[:, k]`` (a reversal, so perm is its own inverse). No host syncs.
        """
        b = len(sc)
        flip = self._rand(b) < p  # [B]
        k = torch.arange(MAX_OBJECTS, device=self.device)[None]  # [1, 3]
        perm = torch.where(flip[:, None] & (k < sc.n[:, None]), sc.n[:, None] - 1 - k, k)  # [B, 3]
        j = k[:, : MAX_OBJECTS - 1]  # [1, 2]
        rperm = torch.where(flip[:, None] & (j < sc.n[:, None] - 1), sc.n[:, None] - 2 - j, j)  # [B, 2]
        rel = sc.rel.gather(1, rperm)
        rel = torch.where(flip[:, None] & (rel >= 0), rel ^ 1, rel)  # REL_NAMES pairs inverses: (above, below), (left of, right of)
        g = lambda t: t.gather(1, perm)  # noqa: E731
        return Scenes(sc.n, g(sc.colour), g(sc.shape), g(sc.size_word), g(sc.radius), g(sc.cx), g(sc.cy), rel, sc.bg, sc.bg_word, sc.size), perm

    def caption_tokens(self, sc: Scenes, length: int = MAX_LENGTH, rewrite: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Token ids ``[B, length]`` and where the grounded words sit: ``{"colour", "shape", "size":
        [B, 3], "background": [B]}`` token positions (-1 where the caption has no such word).

        ``rewrite``: half the captions describe their scene the other way round (``rewrite``), so
        a word's caption position says nothing about where its object is; positions stay indexed
        by the scenes' own object slots (what ``render``'s masks follow)."""
        if rewrite:
            sc2, perm = self.rewrite(sc)
            tok, positions = self.caption_tokens(sc2, length)
            return tok, {w: (v.gather(1, perm) if v.dim() == 2 else v) for w, v in positions.items()}
        b, dev, ids = len(sc), self.device, self.ids
        slots: list[torch.Tensor] = []  # each [B]: one token slot
        keep: list[torch.Tensor] = []  # each [B] bool: whether the slot's word is in the caption
        where: dict[str, list[int]] = {"colour": [], "shape": [], "size": [], "background": []}

        def add(tok: torch.Tensor, present: torch.Tensor, word: str | None = None) -> None:
            if word is not None:
                where[word].append(len(slots))
            slots.append(tok.expand(b) if tok.dim() == 0 else tok)
            keep.append(present.expand(b) if present.dim() == 0 else present)

        true = self._true
        const = self._const.__getitem__
        add(const("<bos>"), true)
        for k in range(MAX_OBJECTS):
            present = sc.n > k
            if k > 0:
                r = sc.rel[:, k - 1].clamp_min(0)
                add(self._rel1_ids[r], present)
                add(const("of"), present & (r >= 2))
            add(const("a"), present)
            add(self._size_ids[sc.size_word[:, k]], present & (sc.size_word[:, k] > 0), "size")
            add(self._colour_ids[sc.colour[:, k].clamp_min(0)], present, "colour")
            add(self._shape_ids[sc.shape[:, k].clamp_min(0)], present, "shape")
        for w in ("on", "a"):
            add(const(w), sc.bg_word)
        add(self._bg_ids[sc.bg], sc.bg_word, "background")
        add(const("background"), sc.bg_word)
        add(const("<eos>"), true)
        tok = torch.stack(slots, 1)  # [B, S]
        keep_t = torch.stack(keep, 1)
        pos = torch.where(keep_t, torch.cumsum(keep_t, 1) - 1, length)
        out = torch.full((b, length + 1), ids["<pad>"], dtype=torch.long, device=dev)  # last column: dropped slots
        out.scatter_(1, pos.clamp_max(length), tok)
        pos = torch.where(pos < length, pos, -1)  # [B, S]: a slot's token position, -1 if absent
        positions = {w: pos[:, idx] for w, idx in where.items()}
        positions["background"] = positions["background"][:, 0]
        return out[:, :length], positions

    @staticmethod
    def captions(sc: Scenes) -> list[str]:
        """The scenes' captions as text (host side)."""
        out = []
        n, colour, shape, size_word, rel, bg, bg_word = (t.cpu().tolist() for t in (sc.n, sc.colour, sc.shape, sc.size_word, sc.rel, sc.bg, sc.bg_word))
        for i in range(len(n)):
            words: list[str] = []
            for k in range(n[i]):
                if k:
                    words += RELATIONS[REL_NAMES[rel[i][k - 1]]]
                words.append("a")
                if size_word[i][k]:
                    words.append(SIZES[size_word[i][k] - 1])
                words += [COLOUR_NAMES[colour[i][k]], SHAPES[shape[i][k]]]
            if bg_word[i]:
                words += ["on", "a", BG_NAMES[bg[i]], "background"]
            out.append(" ".join(words))
        return out


# ---------------------------------------------------------------------- shapes
def shape_masks(u: torch.Tensor, v: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    """Inside test in object-local coordinates (u right, v down, radius 1). shape: [...] index into SHAPES,
    broadcast against u/v's leading dims."""
    sh = shape[..., None, None]
    out = torch.zeros_like(u, dtype=torch.bool)
    for i, name in enumerate(SHAPES):
        out = torch.where(sh == i, _inside(name, u, v), out)
    return out


def _inside(name: str, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    if name == "circle":
        return u * u + v * v <= 1.0
    if name == "square":
        return torch.maximum(u.abs(), v.abs()) <= 0.85
    if name == "triangle":  # apex up, base down
        return (v <= 0.85) & (u.abs() * 1.85 <= v + 1.0)
    if name == "star":  # five points, one pointing up
        rho = torch.sqrt(u * u + v * v)
        theta = torch.atan2(v, u) + math.pi / 2
        seg = 2 * math.pi / 5
        phi = math.pi / 5 - (torch.remainder(theta, seg) - math.pi / 5).abs()  # angle from nearest point
        x, y = rho * torch.cos(phi), rho * torch.sin(phi)
        ri = 0.45
        px, py = ri * math.cos(math.pi / 5), ri * math.sin(math.pi / 5)
        # inside iff on the origin's side of the edge (1,0)->(px,py)
        return (px - 1.0) * y - py * (x - 1.0) >= 0.0
    if name == "heart":
        x, y = 1.15 * u, -1.15 * v + 0.2
        return (x * x + y * y - 1.0) ** 3 - x * x * y**3 <= 0.0
    if name == "cross":
        a, b = u.abs(), v.abs()
        return ((a <= 1.0) & (b <= 0.33)) | ((b <= 1.0) & (a <= 0.33))
    raise ValueError(f"unknown shape {name!r}; known: {', '.join(SHAPES)}")


# ---------------------------------------------------------------------- parsing
_OBJ = r"a (?:(small|large) )?(\w+) (\w+)"
_REL = r"(above|below|left of|right of)"


class ObjectSpec(TypedDict):
    """One object of a caption: its size word (``small``, ``large``; None when unsaid), colour, shape."""

    size: str | None
    colour: str
    shape: str


class CaptionSpec(TypedDict):
    """A caption's scene: 1 to 3 objects, the relation between each and the next, the background
    colour word (None when unsaid)."""

    objects: list[ObjectSpec]
    relations: list[str]
    background: str | None


def parse_caption(caption: str) -> CaptionSpec:
    """Parse a caption of the world's grammar back into its scene description.

    Raises ValueError naming the grammar when the caption does not follow it.
    """
    text = " ".join(caption.lower().split())
    bg = None
    m = re.fullmatch(r"(.*) on a (\w+) background", text)
    if m:
        text, bg = m.group(1), m.group(2)
        if bg not in BACKGROUNDS:
            raise ValueError(f"unknown background colour {bg!r}; known: {', '.join(BACKGROUNDS)}")
    parts = re.split(" " + _REL + " ", text)
    objects: list[ObjectSpec] = []
    relations = parts[1::2]
    for p in parts[0::2]:
        om = re.fullmatch(_OBJ, p)
        if not om or om.group(2) not in COLOURS or om.group(3) not in SHAPES:
            raise ValueError(
                f"cannot parse object {p!r}: expected 'a [small|large] COLOUR SHAPE' with COLOUR in "
                f"{', '.join(COLOURS)} and SHAPE in {', '.join(SHAPES)}"
            )
        objects.append({"size": om.group(1), "colour": om.group(2), "shape": om.group(3)})
    if not 1 <= len(objects) <= MAX_OBJECTS:
        raise ValueError(f"a caption holds 1 to {MAX_OBJECTS} objects, got {len(objects)}")
    return {"objects": objects, "relations": relations, "background": bg}


def relation_holds(rel: str, a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Does ``a`` (x, y centre, y down) stand in ``rel`` to ``b``? The named axis must dominate."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    if rel == "above":
        return dy > 0 and abs(dy) > abs(dx)
    if rel == "below":
        return dy < 0 and abs(dy) > abs(dx)
    if rel == "left of":
        return dx > 0 and abs(dx) > abs(dy)
    if rel == "right of":
        return dx < 0 and abs(dx) > abs(dy)
    raise ValueError(f"unknown relation {rel!r}; known: {', '.join(RELATIONS)}")
