"""``stepx eval-objects``: objects from attention scored against the shapes world's ground truth.

Each held-out composition (``bridge.models.shapes.evaluate.eval_prompts``) is generated with
several seeds on the embedded model, with capture on and the self-attention grid queries. The
ground truth is the shapes world's: every object's pixels in the generated image (its colour's
largest region; the palette is pure), for objects the model actually drew. Three methods:

- ``wordmap``: the object's noun map alone (mean over steps, τ 0.4, its largest region) — the
  baseline DAAM segmentation;
- ``guided``: text-guided detection given the object's words (noun + attributes), refined by
  self-attention (``detect.refine``);
- ``titan``: the whole pipeline from the prompt text alone: the prompt handler finds the objects
  and their categories, then ``annotate`` (guided) finds their instances.

Scored with pycocotools' COCOeval (box and mask AP, AP50) and per-object IoU (each ground-truth
object against its category's best-scoring detection). Every generation is appended to
``records.jsonl`` as it finishes, so a long run can be stopped and resumed (``--resume``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .annotate import annotate, decode_rle, encode_rle
from .detect import DetectConfig, instances, object_evidence, refine, to_image
from .evidence import Evidence, detection_config, from_capture
from .prompt import parse_prompt

log = logging.getLogger(__name__)
METHOD_NAMES = ("wordmap", "guided", "titan")




def ground_truth(image: np.ndarray, prompt: str) -> list[dict[str, Any]]:
    """The world's objects in a generated ``[H, W, 3]`` uint8 image: category (the handler's name
    for the mention), mask; only objects the model drew (``score_image``'s ``present``)."""
    from bridge.models.shapes.evaluate import score_image  # noqa: PLC0415

    sc = score_image(image.astype(np.float32) / 255.0, prompt)
    mentions = parse_prompt(prompt).objects
    if len(mentions) != len(sc["objects"]):
        raise ValueError(f"the prompt handler found {len(mentions)} objects in {prompt!r}, the world {len(sc['objects'])}")
    return [{"category": m.category, "noun": m.noun, "words": list(m.word_indices), "mask": o["mask"]}
            for m, o in zip(mentions, sc["objects"]) if o["present"]]


def _mention_detections(ev: Evidence, prompt: str, cfg: DetectConfig) -> dict[str, list[dict[str, Any]]]:
    """Detections of the ``wordmap`` and ``guided`` methods, given each mention's words."""
    out: dict[str, list[dict[str, Any]]] = {"wordmap": [], "guided": []}
    for m in parse_prompt(prompt).objects:
        noun = object_evidence(ev.word_maps, [m.word_indices[0]], cfg)
        for mask, score in instances(to_image(noun, ev.size), cfg.tau, cfg.min_area, 1):
            out["wordmap"].append({"category": m.category, "score": score, "mask": mask.numpy()})
        if ev.affinity is None:
            raise ValueError("scoring the guided method needs the run's self-attention (capture with detection_config)")
        words = object_evidence(ev.word_maps, list(m.word_indices), cfg)
        for mask, score in instances(to_image(refine(words, ev.affinity, cfg), ev.size), cfg.guided_tau, cfg.min_area, m.count):
            out["guided"].append({"category": m.category, "score": score, "mask": mask.numpy()})
    return out


def generate_record(pipe: Any, prompt: str, seed: int, args: argparse.Namespace, cfg: DetectConfig) -> dict[str, Any]:
    """One generation: its ground truth and every method's detections (masks as RLE)."""
    from bridge.capture import capture  # noqa: PLC0415

    t0 = time.perf_counter()
    with capture(pipe, detection_config(pipe, args.grid)) as cap:
        out = pipe(prompt, num_inference_steps=args.steps, guidance_scale=args.guidance,
                   generator=torch.Generator("cpu").manual_seed(seed))
    seconds = time.perf_counter() - t0
    image = np.asarray(out.images[0])
    ev = from_capture(cap.last_run, image)
    dets = _mention_detections(ev, prompt, cfg)
    dets["titan"] = [{"category": i.category, "score": i.score, "mask": i.mask} for i in annotate(ev, prompt, config=cfg)]
    rle = lambda d: {**{k: v for k, v in d.items() if k != "mask"}, "rle": encode_rle(d["mask"])}  # noqa: E731
    return {"prompt": prompt, "seed": seed, "seconds": seconds,
            "gt": [rle({"category": g["category"], "mask": g["mask"]}) for g in ground_truth(image, prompt)],
            "detections": {k: [rle(d) for d in v] for k, v in dets.items()}}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    u = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / u) if u else 0.0


def score(records: list[dict[str, Any]]) -> dict[str, Any]:
    """COCOeval box/mask AP and AP50 and mean per-object IoU, per method."""
    from pycocotools.coco import COCO  # noqa: PLC0415
    from pycocotools.cocoeval import COCOeval  # noqa: PLC0415

    names = sorted({g["category"] for r in records for g in r["gt"]} | {d["category"] for r in records for v in r["detections"].values() for d in v})
    cat_id = {n: i + 1 for i, n in enumerate(names)}
    images: list[dict[str, Any]] = []
    gts: list[dict[str, Any]] = []
    for i, r in enumerate(records, start=1):
        h, w = r["gt"][0]["rle"]["size"] if r["gt"] else (128, 128)
        images.append({"id": i, "width": w, "height": h, "file_name": f"{i}.png"})
        for g in r["gt"]:
            m = decode_rle(g["rle"])
            gts.append({"id": len(gts) + 1, "image_id": i, "category_id": cat_id[g["category"]], "iscrowd": 0,
                        "segmentation": g["rle"], "area": float(m.sum()), "bbox": _bbox(m)})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": gts, "categories": [{"id": v, "name": k} for k, v in cat_id.items()]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    out: dict[str, Any] = {"generations": len(records), "compositions": len({r["prompt"] for r in records}),
                           "seeds": sorted({r["seed"] for r in records}), "objects": len(gts)}
    for method in METHOD_NAMES:
        dts = [{"image_id": i, "category_id": cat_id[d["category"]], "score": float(d["score"]), "segmentation": d["rle"],
                "bbox": _bbox(decode_rle(d["rle"]))} for i, r in enumerate(records, start=1) for d in r["detections"][method]]
        res: dict[str, Any] = {"detections": len(dts)}
        for kind in ("segm", "bbox"):
            if not dts:
                res[kind] = {"AP": 0.0, "AP50": 0.0}
                continue
            with contextlib.redirect_stdout(io.StringIO()):
                dt = gt.loadRes([dict(d) for d in dts])
                e = COCOeval(gt, dt, kind)
                e.evaluate()
                e.accumulate()
                e.summarize()
            res[kind] = {"AP": float(e.stats[0]), "AP50": float(e.stats[1])}
        ious = []
        for r in records:
            for g in r["gt"]:
                cands = sorted((d for d in r["detections"][method] if d["category"] == g["category"]), key=lambda d: -d["score"])
                gm = decode_rle(g["rle"])
                ious.append(max((_iou(decode_rle(d["rle"]), gm) for d in cands), default=0.0))
        res["mean_iou"] = float(np.mean(ious)) if ious else 0.0
        res["iou_over_0.5"] = float(np.mean([v > 0.5 for v in ious])) if ious else 0.0
        out[method] = res
    out["seconds_per_generation"] = float(np.median([r["seconds"] for r in records])) if records else None
    return out


def _read_records(path: Path) -> list[dict[str, Any]]:
    """The finished generations in ``records.jsonl``; a last line torn by a kill is dropped (and
    regenerated), a damaged line elsewhere is an error naming it."""
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    out = []
    for i, line in enumerate(lines, start=1):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines):
                log.warning("%s: the last record was cut short; it is generated again", path)
                break
            raise ValueError(f"{path}: line {i} is not a JSON record") from None
    return out


def _bbox(m: np.ndarray) -> list[float]:
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    if not len(rows):
        return [0.0, 0.0, 0.0, 0.0]
    return [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm  # noqa: PLC0415

    from bridge.models.shapes import load_shapes_pipeline  # noqa: PLC0415
    from bridge.models.shapes.evaluate import eval_prompts  # noqa: PLC0415

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "records.jsonl"
    done: list[dict[str, Any]] = []
    if (args.resume or args.score_only) and path.exists():
        done = _read_records(path)
    elif path.exists() and path.stat().st_size:
        raise ValueError(f"{path} already holds records: pass --resume to continue it, or choose another --out")
    have = {(r["prompt"], r["seed"]) for r in done}
    prompts = list(dict.fromkeys(eval_prompts(args.prompts, args.prompt_seed, "heldout")))  # the sampler may repeat one
    jobs = [(p, s) for s in args.seeds for p in prompts]  # seed by seed: a stopped run has covered every composition
    cfg = DetectConfig()
    todo = [] if args.score_only else [j for j in jobs if j not in have]
    pipe = load_shapes_pipeline("cpu", torch.float32) if todo else None
    if done and path.read_text()[-1:] != "\n":  # drop a torn last line before appending
        path.write_text("".join(json.dumps(r) + "\n" for r in done))
    with path.open("a") as f:
        for prompt, seed in tqdm(todo, desc="eval-objects", unit="image", file=sys.stderr):
            rec = generate_record(pipe, prompt, seed, args, cfg)
            f.write(json.dumps(rec) + "\n")
            f.flush()
            done.append(rec)
    unique = {(r["prompt"], r["seed"]): r for r in reversed(done)}  # one record per job (the first written)
    res = score([unique[j] for j in jobs if j in unique])
    res["settings"] = {"prompts": args.prompts, "seeds": args.seeds, "prompt_seed": args.prompt_seed, "steps": args.steps,
                       "guidance": args.guidance, "grid": args.grid, "threads": args.threads, "config": DetectConfig().__dict__}
    (out / "results.json").write_text(json.dumps(res, indent=1))
    print(format_table(res))
    return 0


def format_table(res: dict[str, Any]) -> str:
    """The results as the Markdown table docs/OBJECTS.md shows."""
    rows = ["| method | mask AP | mask AP50 | box AP | box AP50 | mean IoU | IoU > 0.5 | detections |", "|---|---|---|---|---|---|---|---|"]
    for m in METHOD_NAMES:
        r = res[m]
        rows.append(f"| {m} | {r['segm']['AP']:.3f} | {r['segm']['AP50']:.3f} | {r['bbox']['AP']:.3f} | {r['bbox']['AP50']:.3f} "
                    f"| {r['mean_iou']:.3f} | {r['iou_over_0.5']:.1%} | {r['detections']} |")
    head = (f"{res['generations']} generations ({res['compositions']} compositions, seeds {res['seeds']}), "
            f"{res['objects']} objects drawn")
    return head + "\n" + "\n".join(rows)
