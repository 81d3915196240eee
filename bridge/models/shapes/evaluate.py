"""Evaluate the shapes model: ``stepx eval-shapes``.

For held-out compositions (every prompt holds at least one colour-shape pair never seen in
training) it generates images on the CPU with attention capture on, and scores:

1. prompt adherence, from colour segmentation of the generated image (the palette is pure
   and known): an object counts when its colour's largest connected region is at least
   ``--min-area`` pixels and its shape, matched against the world's own shape templates fitted
   to that region, is the named one; a relation counts when both objects are found and their
   centres satisfy it (named axis dominant); the background when the most common colour is it;
2. attention localisation (DAAM): each word's map is averaged over all steps, upsampled
   bilinearly to the image, normalised to [0, 1] (min-max), thresholded at tau, and compared
   by IoU with the object's region in the generated image; for shape words and colour words.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypedDict

import numpy as np
import torch
import torch.nn.functional as F

from .vocab import BACKGROUNDS, COLOURS, DEFAULT_BACKGROUND, HELD_OUT_PAIRS, RELATIONS, SHAPES
from .world import BG_NAMES, ObjectSpec, parse_caption, relation_holds, shape_masks

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

    from bridge.capture.tokens import TokenMap

    #: one row of the contact sheet: the image, its word maps [words, h, w], their words, its scores
    _Tile = tuple[PILImage, torch.Tensor, TokenMap, "ImageScore"]

log = logging.getLogger("bridge.shapes.eval")
TAUS = (0.3, 0.4, 0.5)
#: an object's words whose attention maps are scored against its region (keys of :class:`ObjectScore`)
ScoredWord = Literal["shape", "colour"]




# ---------------------------------------------------------------------- prompts
def eval_prompts(n: int, seed: int = 1234, split: str = "heldout") -> list[str]:
    """Deterministic evaluation captions. Objects in one prompt have distinct colours and shapes
    (so every colour and shape word names one object) and differ from the background."""
    rng = random.Random(seed)
    held = set(HELD_OUT_PAIRS)
    seen = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in held]
    rels = list(RELATIONS)
    out: list[str] = []
    while len(out) < n:
        k = rng.choice((1, 2, 2, 3, 3))
        first = rng.choice(HELD_OUT_PAIRS if split == "heldout" else seen)
        objs = [first]
        while len(objs) < k:
            c, s = rng.choice(list(COLOURS)), rng.choice(SHAPES)
            if c in {o[0] for o in objs} or s in {o[1] for o in objs} or (split == "train" and (c, s) in held):
                continue
            objs.append((c, s))
        rng.shuffle(objs)
        relations = [rng.choice(rels) for _ in range(k - 1)]
        if k == 3 and not _layout_possible(relations):
            continue
        bg_choices = [b for b in BACKGROUNDS if b not in {o[0] for o in objs}]
        bg = rng.choice(bg_choices + [DEFAULT_BACKGROUND] * 3)
        words = []
        for i, (c, s) in enumerate(objs):
            if i:
                words.append(relations[i - 1])
            size = rng.choice((None, None, "small", "large"))
            words.append(f"a {size + ' ' if size else ''}{c} {s}")
        cap = " ".join(words)
        if bg != DEFAULT_BACKGROUND or rng.random() < 0.5:
            cap += f" on a {bg} background"
        out.append(cap)
    return out


def _layout_possible(relations: list[str]) -> bool:
    from .world import _layouts

    cells, rels, n = _layouts()
    want = torch.tensor([list(RELATIONS).index(r) for r in relations])
    return bool(((n == 3) & (rels == want).all(1)).any())


# ---------------------------------------------------------------------- segmentation
_PALETTE_NAMES = list(BG_NAMES)
_PALETTE = np.array([BACKGROUNDS[c] for c in _PALETTE_NAMES], dtype=np.float32)  # [9, 3]


def segment(image: np.ndarray, max_dist: float = 0.35) -> np.ndarray:
    """[H, W, 3] float in [0, 1] -> [H, W] index into BG_NAMES (nearest palette colour), -1 = none."""
    d = np.linalg.norm(image[:, :, None, :] - _PALETTE[None, None], axis=-1)  # [H, W, 9]
    lab = d.argmin(-1)
    lab[d.min(-1) > max_dist] = -1
    return lab


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Largest 8-connected component of a bool mask."""
    h, w = mask.shape
    seen = np.zeros_like(mask, dtype=bool)
    best: list[tuple[int, int]] = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        comp, q = [], deque([(y0, x0)])
        seen[y0, x0] = True
        while q:
            y, x = q.popleft()
            comp.append((y, x))
            for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1), (y - 1, x - 1), (y - 1, x + 1), (y + 1, x - 1), (y + 1, x + 1)):
                if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not seen[yy, xx]:
                    seen[yy, xx] = True
                    q.append((yy, xx))
        if len(comp) > len(best):
            best = comp
    out = np.zeros_like(mask, dtype=bool)
    if best:
        ys, xs = zip(*best)
        out[list(ys), list(xs)] = True
    return out


def _template_constants(res: int = 256) -> dict[str, tuple[float, float, float]]:
    """Per shape: (area / r^2, centroid offset u, centroid offset v) of the world's unit shape."""
    g = (torch.arange(res) + 0.5) / res * 2.4 - 1.2
    v, u = torch.meshgrid(g, g, indexing="ij")
    out = {}
    for i, s in enumerate(SHAPES):
        m = shape_masks(u[None], v[None], torch.tensor([i]))[0].float()
        area = m.sum() * (2.4 / res) ** 2
        out[s] = (float(area), float((m * u).sum() / m.sum()), float((m * v).sum() / m.sum()))
    return out


_TEMPLATES: dict[str, tuple[float, float, float]] | None = None


def classify_shape(region: np.ndarray) -> tuple[str, dict[str, float]]:
    """Best-matching world shape for a region: each shape's template is fitted by area and
    centroid, and the one with the highest IoU wins. Returns (shape, IoU per shape)."""
    global _TEMPLATES
    if _TEMPLATES is None:
        _TEMPLATES = _template_constants()
    ys, xs = np.nonzero(region)
    area, cy, cx = len(ys), ys.mean() + 0.5, xs.mean() + 0.5
    h, w = region.shape
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    reg = torch.from_numpy(region)
    scores = {}
    for i, s in enumerate(SHAPES):
        k, du, dv = _TEMPLATES[s]
        r = math.sqrt(area / k)
        u = torch.from_numpy((xx - (cx - du * r)) / r).float()
        v = torch.from_numpy((yy - (cy - dv * r)) / r).float()
        m = shape_masks(u[None], v[None], torch.tensor([i]))[0]
        scores[s] = float((m & reg).sum() / (m | reg).sum())
    return max(scores, key=scores.__getitem__), scores


class ObjectScore(ObjectSpec):
    """One caption object in a generated image: found (its colour's largest region has at least
    ``min_area`` pixels), the shape fitted to that region, right (found with the named shape)."""

    present: bool
    shape_found: str | None
    correct: bool
    area: int  # pixels of the region
    centre: tuple[float, float] | None  # (x, y) of the region, None when not found
    mask: np.ndarray  # [H, W] bool: the region


class ImageScore(TypedDict):
    """An image's adherence to its caption: per object, per relation (both objects found and
    placed so), and whether the most common colour is the caption's background."""

    objects: list[ObjectScore]
    relations: list[bool]
    background: bool
    background_found: str


def score_image(image: np.ndarray, caption: str, min_area: int = 60) -> ImageScore:
    """Adherence of one image [H, W, 3] in [0, 1] to its caption. Returns per-object results with masks."""
    spec = parse_caption(caption)
    lab = segment(image)
    counts = np.bincount(lab[lab >= 0].ravel(), minlength=len(_PALETTE_NAMES))
    bg_found = _PALETTE_NAMES[int(counts.argmax())]
    bg_want = spec["background"] or DEFAULT_BACKGROUND
    objects: list[ObjectScore] = []
    for o in spec["objects"]:
        ci = _PALETTE_NAMES.index(o["colour"])
        region = largest_component(lab == ci) if o["colour"] != bg_found else np.zeros(lab.shape, bool)
        present = int(region.sum()) >= min_area
        shape = classify_shape(region)[0] if present else None
        centre = (float(np.nonzero(region)[1].mean() + 0.5), float(np.nonzero(region)[0].mean() + 0.5)) if present else None
        objects.append({**o, "present": present, "shape_found": shape, "correct": present and shape == o["shape"],
                        "area": int(region.sum()), "centre": centre, "mask": region})
    rels = []
    for i, r in enumerate(spec["relations"]):
        a, b = objects[i]["centre"], objects[i + 1]["centre"]  # None exactly when the object is not present
        rels.append(a is not None and b is not None and relation_holds(r, a, b))
    return {"objects": objects, "relations": rels, "background": bg_found == bg_want, "background_found": bg_found}


def map_iou(word_map: torch.Tensor, mask: np.ndarray, tau: float) -> float:
    """IoU of a [h, w] attention map (upsampled, min-max normalised, thresholded) with a mask."""
    h, w = mask.shape
    m = F.interpolate(word_map[None, None].float().cpu(), size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    m = (m - m.min()) / (m.max() - m.min()).clamp_min(1e-8)
    pred = (m >= tau).numpy()
    inter, union = (pred & mask).sum(), (pred | mask).sum()
    return float(inter / union) if union else 0.0


# ---------------------------------------------------------------------- main
def evaluate(pipe: Any, prompts: list[str], steps: int = 20, guidance: float = 4.0, seed: int = 1234, min_area: int = 60,
             sheet: Path | None = None) -> dict[str, Any]:
    from bridge.analysis import capture_prompts

    objs_total = objs_ok = objs_present = 0
    rel_total = rel_ok = bg_ok = 0
    iou: dict[str, dict[float, list[float]]] = {kind: {t: [] for t in TAUS} for kind in ("shape", "colour")}
    per_prompt: list[dict[str, Any]] = []
    times: list[float] = []
    tiles: list[_Tile] = []
    for done in capture_prompts(pipe, prompts, steps=steps, guidance=guidance, seed=seed):
        i, prompt, run = done.index, done.prompt, done.run
        times.append(done.seconds)
        image = np.asarray(done.image, dtype=np.float32) / 255.0
        sc = score_image(image, prompt, min_area)
        tm = run.tokens(0)
        maps = run.mean_word_maps(0)  # [words, h, w], mean over steps (DAAM)
        rec: dict[str, Any] = {"prompt": prompt, "objects": [], "relations": sc["relations"], "background": sc["background"]}
        for o in sc["objects"]:
            objs_total += 1
            objs_present += o["present"]
            objs_ok += o["correct"]
            r: dict[str, Any] = {k: o[k] for k in ("colour", "shape", "present", "shape_found", "correct", "area")}
            if o["present"]:
                for kind, word in (("shape", o["shape"]), ("colour", o["colour"])):
                    wm = maps[tm.index(word)]
                    for t in TAUS:
                        v = map_iou(wm, o["mask"], t)
                        iou[kind][t].append(v)
                        r[f"iou_{kind}_{t}"] = round(v, 3)
            rec["objects"].append(r)
        rel_total += len(sc["relations"])
        rel_ok += sum(sc["relations"])
        bg_ok += sc["background"]
        per_prompt.append(rec)
        if sheet is not None and len(tiles) < 12:
            tiles.append((done.image, maps, tm, sc))
        log.info("%d/%d %s: %s", i + 1, len(prompts), prompt, [o["correct"] for o in sc["objects"]])
    summary = {
        "prompts": len(prompts),
        "objects": objs_total,
        "adherence_objects": objs_ok / max(1, objs_total),
        "objects_present_right_colour": objs_present / max(1, objs_total),
        "relations": rel_total,
        "relations_satisfied": rel_ok / max(1, rel_total),
        "background_correct": bg_ok / max(1, len(prompts)),
        "prompts_fully_right": sum(all(o["correct"] for o in p["objects"]) and all(p["relations"]) and p["background"] for p in per_prompt) / max(1, len(prompts)),
        "iou": {kind: {str(t): (float(np.mean(v)) if v else None) for t, v in d.items()} for kind, d in iou.items()},
        "iou_count": len(iou["shape"][0.4]),
        "adherence_by_shape": {
            sh: (float(np.mean(marks)) if (marks := [o["correct"] for p in per_prompt for o in p["objects"] if o["shape"] == sh]) else None)
            for sh in SHAPES
        },
        "seconds_per_generation_with_capture": float(np.median(times)),
    }
    if sheet is not None and tiles:
        _save_sheet(tiles, sheet)
    return {"summary": summary, "per_prompt": per_prompt}


def _save_sheet(tiles: list[_Tile], path: Path) -> None:
    """Image, then the shape-word map of each object (mean over steps), per row."""
    from PIL import Image

    rows = []
    for img, maps, tm, sc in tiles:
        row = Image.new("RGB", (128 * 4, 128))
        row.paste(img, (0, 0))
        for j, o in enumerate(sc["objects"][:3]):
            m = F.interpolate(maps[tm.index(o["shape"])][None, None], size=(128, 128), mode="bilinear")[0, 0]
            pixels = ((m - m.min()) / (m.max() - m.min()).clamp_min(1e-8) * 255).byte().cpu().numpy()
            row.paste(Image.fromarray(pixels).convert("RGB"), (128 * (j + 1), 0))
        rows.append(row)
    sheet = Image.new("RGB", (512, 128 * len(rows)))
    for i, r in enumerate(rows):
        sheet.paste(r, (0, 128 * i))
    sheet.save(path)


def time_generation(pipe: Any, n: int = 5, steps: int = 20, guidance: float = 4.0) -> dict[str, float]:
    """Median seconds of a 20-step CFG generation, without and with capture."""
    from bridge.capture import CaptureConfig, capture

    prompt = "a small red circle left of a large blue square on a yellow background"
    pipe(prompt, num_inference_steps=steps, guidance_scale=guidance)  # warm-up
    plain, captured = [], []
    for i in range(n):
        t = time.perf_counter()
        pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, generator=torch.Generator().manual_seed(i))
        plain.append(time.perf_counter() - t)
        t = time.perf_counter()
        with capture(pipe, CaptureConfig()):
            pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, generator=torch.Generator().manual_seed(i))
        captured.append(time.perf_counter() - t)
    return {"plain_s": float(np.median(plain)), "capture_s": float(np.median(captured)), "threads": torch.get_num_threads()}


def run(args: argparse.Namespace) -> int:
    from . import CHECKPOINTS, load_shapes_pipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = load_shapes_pipeline(args.device, torch.float32, path=CHECKPOINTS.get(args.weights, args.weights))
    prompts = eval_prompts(args.prompts, args.seed, args.split)
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    res = evaluate(pipe, prompts, args.steps, args.guidance, args.seed, args.min_area, sheet=out / f"sheet_{args.split}.png" if out else None)
    if args.time:
        res["summary"]["timing"] = time_generation(pipe, steps=args.steps, guidance=args.guidance)
    s = res["summary"]
    print(f"split {args.split}: {s['prompts']} prompts, {s['objects']} objects, guidance {args.guidance}, {args.steps} steps")
    print(f"  adherence (right colour and shape): {s['adherence_objects']:.1%}   present in right colour: {s['objects_present_right_colour']:.1%}")
    print(f"  relations satisfied: {s['relations_satisfied']:.1%} of {s['relations']}   background right: {s['background_correct']:.1%}   prompts fully right: {s['prompts_fully_right']:.1%}")
    for kind in ("shape", "colour"):
        print(f"  mean IoU {kind} words (n={s['iou_count']}): " + "  ".join(f"tau={t}: {v:.3f}" if v is not None else f"tau={t}: -" for t, v in s["iou"][kind].items()))
    print("  adherence by shape: " + "  ".join(f"{k} {v:.0%}" for k, v in s["adherence_by_shape"].items() if v is not None))
    print(f"  median seconds per generation with capture: {s['seconds_per_generation_with_capture']:.2f}")
    if "timing" in s:
        t = s["timing"]
        print(f"  20-step CFG generation on CPU ({t['threads']} threads): plain {t['plain_s']:.2f} s, with capture {t['capture_s']:.2f} s")
    if out:
        (out / f"results_{args.split}.json").write_text(json.dumps(res, indent=1))
    return 0
