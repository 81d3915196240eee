"""stepx export: overlay pixels, frame/GIF counts and sizes, CSV values, plots, COCO masks, ZIP."""

from __future__ import annotations

import argparse
import csv
import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from bridge.commands import export as export_cmd
from bridge.export import (
    ExportOptions, auc_so_far, coco_document, export_trace, load_run, mask_from_map, overlay, polygons, rle_encode,
    select_words, step_table,
)
from bridge.export.coco import rle_decode
from bridge.protocol import Packet
from bridge.phases.timeline import area_under_curve
from bridge.colormap import colormap
from bridge.trace import TraceReader, TraceWriter

WORDS = ["cat", "table"]
T, H, W = 5, 8, 8  # steps, map size
IH, IW = 16, 24  # image size (maps are upscaled 2x / 3x)


def maps_at(step: int) -> np.ndarray:
    """cat: top-left quadrant hot (value rises with the step); table: bottom half at 0.5."""
    m = np.zeros((3, H, W), np.float32)
    m[0, : H // 2, : W // 2] = 0.5 + 0.1 * step
    m[1, H // 2:, :] = 0.5
    m[2] = m[:2].mean(0)
    return m


def image_at(step: int) -> np.ndarray:
    img = np.zeros((IH, IW, 3), np.uint8)
    img[..., 0] = 40 * step
    img[..., 1] = 200
    img[..., 2] = np.arange(IW, dtype=np.uint8)[None, :] * 10
    return img


@pytest.fixture
def trace(tmp_path):
    path = tmp_path / "e.trace"
    with TraceWriter(path) as w:
        w.send(Packet("run", {"run_id": "r1", "prompt": "a cat on a table", "words": WORDS, "total_steps": T,
                              "seed": 0, "model": "synthetic", "width": IW, "height": IH, "map_size": [H, W]}))
        for s in range(T):
            w.send(Packet("step", {"run_id": "r1", "step": s, "total_steps": T, "phase": s * 3 // T, "words": WORDS},
                          {"textures": maps_at(s)}))
            if s in (1, 3):  # step 0 has no image (grey), step 2 reuses step 1's, step 4 reuses step 3's
                w.send(Packet("image", {"run_id": "r1", "step": s, "final": s == 3}, {"image": image_at(s)}))
        w.send(Packet("end", {"run_id": "r1", "status": "done"}))
    return path


def expected_blend(bg: np.ndarray, value: float, alpha: float, cmap: str = "inferno") -> np.ndarray:
    return np.rint((1 - alpha) * bg.astype(np.float64) + alpha * 255 * colormap(value, cmap)).astype(np.uint8)


def test_overlay_is_the_documented_blend():
    img = image_at(2)
    m = np.zeros((IH, IW), np.float32)
    m[3, 5] = 0.75
    out = overlay(img, m, 0.3, "turbo")
    assert out.shape == (IH, IW, 3) and out.dtype == np.uint8
    assert np.array_equal(out[3, 5], expected_blend(img[3, 5], 0.75, 0.3, "turbo"))
    assert np.array_equal(out[10, 20], expected_blend(img[10, 20], 0.0, 0.3, "turbo"))
    assert np.array_equal(overlay(img, m, 0.0), img)
    with pytest.raises(ValueError, match="alpha"):
        overlay(img, m, 1.5)


def test_export_everything(trace, tmp_path):
    out = tmp_path / "out"
    with TraceReader(trace) as tr:
        files = export_trace(tr, out, ExportOptions(alpha=0.4, gif=True, csv=True, plots=True, coco=True, zip=True))
    frames = sorted((out / "frames").rglob("*.png"))
    assert len(frames) == T * len(WORDS)
    for f in frames:
        assert Image.open(f).size == (IW, IH)
    # overlay pixels at known points: cat's hot quadrant is the top-left (row 0 = top)
    cat0 = np.asarray(Image.open(out / "frames" / "00_cat" / "step_000.png").convert("RGB"))
    assert np.array_equal(cat0[1, 1], expected_blend(np.array([128, 128, 128]), np.float16(0.5), 0.4))  # grey: no image yet
    assert np.array_equal(cat0[IH - 2, IW - 2], expected_blend(np.array([128, 128, 128]), 0.0, 0.4))
    cat2 = np.asarray(Image.open(out / "frames" / "00_cat" / "step_002.png").convert("RGB"))
    v2 = float(np.float16(0.5 + 0.1 * 2))
    assert np.array_equal(cat2[1, 2], expected_blend(image_at(1)[1, 2], v2, 0.4))  # last earlier image
    table4 = np.asarray(Image.open(out / "frames" / "01_table" / "step_004.png").convert("RGB"))
    assert np.array_equal(table4[IH - 1, 7], expected_blend(image_at(3)[IH - 1, 7], 0.5, 0.4))
    assert np.array_equal(table4[0, 7], expected_blend(image_at(3)[0, 7], 0.0, 0.4))
    # GIFs: one per word, one frame per step (identical neighbours merged, time kept), image-sized
    assert Image.open(out / "gifs" / "00_cat.gif").n_frames == T
    for word in ("00_cat", "01_table"):
        g = Image.open(out / "gifs" / f"{word}.gif")
        total = 0
        for i in range(g.n_frames):
            g.seek(i)
            total += g.info["duration"]
        assert g.size == (IW, IH) and total == T * 120  # 8 fps -> 12 hundredths of a second per step
    # CSV: one row per step and word; values equal the pure measures
    rows = list(csv.DictReader(open(out / "measures.csv")))
    assert len(rows) == T * len(WORDS) and rows[0]["word"] == "cat" and rows[1]["word"] == "table"
    cat_mass = [float(r["mass"]) for r in rows if r["word"] == "cat"]
    expect = [float(np.float16(0.5 + 0.1 * s)) * 0.25 for s in range(T)]
    assert np.allclose(cat_mass, expect, rtol=1e-5)
    last = [r for r in rows if r["word"] == "cat"][-1]
    assert float(last["auc_so_far"]) == pytest.approx(np.mean(expect), rel=1e-5)
    assert float(last["peak"]) == pytest.approx(float(np.float16(0.9)), rel=1e-5)
    assert float(last["centroid_x"]) == pytest.approx(0.25) and float(last["centroid_y"]) == pytest.approx(0.25)
    summary = list(csv.DictReader(open(out / "summary.csv")))
    assert [r["word"] for r in summary] == WORDS and int(summary[0]["peak_step"]) == T - 1 and summary[0]["measures_from"] == "textures"
    # plots: one PNG per measure
    for m in ("mass", "entropy", "peak", "auc_so_far"):
        assert Image.open(out / "plots" / f"{m}.png").size == (800, 450)
    # COCO: a category per object of "a cat on a table" (not per word), masks at image size;
    # cat = top-left quadrant, table = bottom half
    doc = json.loads((out / "coco.json").read_text())
    assert [c["name"] for c in doc["categories"]] == WORDS
    assert doc["images"][0] == {"id": 1, "file_name": "final.png", "width": IW, "height": IH}
    anns = {a["category_id"]: a for a in doc["annotations"]}
    cat = rle_decode(anns[1]["rle"])
    assert cat.shape == (IH, IW) and cat[:6, :9].all() and not cat[10:, :].any() and not cat[:, 15:].any()
    x, y, w, h = anns[1]["bbox"]
    assert x == 0 and y == 0 and 9 <= w <= 15 and 6 <= h <= 10
    table = rle_decode(anns[2]["rle"])
    assert table[10:, :].all() and not table[:6].any()
    assert anns[1]["segmentation"] and len(anns[1]["segmentation"][0]) >= 6
    # final image, manifest, ZIP of everything
    assert np.array_equal(np.asarray(Image.open(out / "final.png")), image_at(3))
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["steps"] == list(range(T)) and manifest["words"] == WORDS
    with zipfile.ZipFile(out / "export.zip") as z:
        names = set(z.namelist())
    expected = {f.relative_to(out).as_posix() for f in files if f.name != "export.zip"}
    assert names == expected and "gifs/00_cat.gif" in names and "coco.json" in names


def test_word_selection_and_unknown_word(trace, tmp_path):
    assert select_words(WORDS, ["Table"]) == [1]
    with pytest.raises(ValueError, match="its words are: cat, table"):
        select_words(WORDS, ["dog"])
    out = tmp_path / "only"
    with TraceReader(trace) as tr:
        export_trace(tr, out, ExportOptions(words=["table"], gif=True))
    assert not (out / "frames" / "00_cat").exists()
    assert len(list((out / "frames" / "01_table").glob("*.png"))) == T
    assert not (out / "measures.csv").exists() and not (out / "export.zip").exists()


def test_cli_export_and_errors(trace, tmp_path, capsys):
    p = argparse.ArgumentParser()
    export_cmd.add_arguments(p)
    assert export_cmd.run(p.parse_args([str(trace), "-o", str(tmp_path / "c"), "--csv", "--zip"])) == 0
    assert (tmp_path / "c" / "export.zip").exists() and (tmp_path / "c" / "measures.csv").exists()
    assert export_cmd.run(p.parse_args([str(trace), "-o", str(tmp_path / "d"), "--words", "dog"])) == 2
    assert "not in the prompt" in capsys.readouterr().err
    assert export_cmd.run(p.parse_args([str(trace), "-o", str(tmp_path / "d"), "--alpha", "2"])) == 2
    cut = tmp_path / "cut.trace"
    cut.write_bytes(trace.read_bytes()[:-40])
    assert export_cmd.run(p.parse_args([str(cut), "-o", str(tmp_path / "d")])) == 2
    assert "partial" in capsys.readouterr().err


def test_pure_measures_and_masks():
    maps = np.stack([maps_at(s)[:2] for s in range(T)])
    tab = step_table(maps)
    assert tab["mass"].shape == (T, 2)
    assert np.allclose(auc_so_far(tab["mass"])[-1], area_under_curve(tab["mass"]))
    assert np.allclose(tab["peak_x"][:, 0], 0.5 / W) and np.allclose(tab["peak_y"][:, 1], (H // 2 + 0.5) / H)
    m = np.zeros((4, 4), np.float32)
    m[1:3, 1:3] = 1.0
    mask = mask_from_map(m, (4, 4), 0.4)
    assert mask.sum() == 4 and not mask_from_map(np.zeros((4, 4)), (4, 4), 0.4).any()
    rle = rle_encode(mask)
    assert rle == {"size": [4, 4], "counts": [5, 2, 2, 2, 5]} and np.array_equal(rle_decode(rle), mask)
    (poly,) = polygons(mask)
    xs, ys = poly[0::2], poly[1::2]
    assert min(xs) == 1 and max(xs) == 3 and min(ys) == 1 and max(ys) == 3
    doc = coco_document([("cat", [[0]], 1)], [np.zeros((4, 4))], (4, 4), 0.4, "x.png")
    assert doc["annotations"] == [] and doc["categories"][0]["name"] == "cat"


def test_coco_categories_are_objects_with_instances():
    """Words like "a" are no category; "two red apples" is one category with two instances."""
    from bridge.export.coco import prompt_objects

    words = ["a", "brass", "pitcher", "beside", "two", "red", "apples"]
    objects, unknown = prompt_objects("a brass pitcher beside two red apples", words)
    assert [(n, c) for n, _, c in objects] == [("brass pitcher", 1), ("red apple", 2)] and unknown == []
    maps = np.zeros((len(words), 8, 8), np.float32)
    maps[1:3, 0:3, 0:3] = 1.0  # brass, pitcher: top-left
    maps[5:7, 6:8, 0:2] = 1.0  # red, apples: two separate spots at the bottom
    maps[5:7, 6:8, 5:8] = 1.0
    maps[0] = 1.0  # "a" covers everything: it must not become an object
    doc = coco_document(objects, maps, (8, 8), 0.4, "x.png")
    assert [c["name"] for c in doc["categories"]] == ["brass pitcher", "red apple"]
    by_cat = [[a for a in doc["annotations"] if a["category_id"] == k] for k in (1, 2)]
    assert len(by_cat[0]) == 1 and rle_decode(by_cat[0][0]["rle"])[:3, :3].all()
    assert sorted(a["area"] for a in by_cat[1]) == [4, 6] and sum(a["area"] for a in doc["annotations"]) == 19


def test_load_run_aligns_images(trace):
    with TraceReader(trace) as tr:
        run = load_run(tr)
    assert run.steps.tolist() == list(range(T)) and run.maps.shape == (T, 3, H, W)
    assert run.image_at(0) is None and np.array_equal(run.image_at(2), image_at(1))
    assert run.canvas_size() == (IH, IW)


def test_timeline_lines_are_all_distinct():
    """Eleven words (the demo prompt) must not share a line look: the default cycle has ten."""
    from bridge.export.plots import line_styles, timeline_png

    for n in (1, 10, 11, 20, 45):
        styles = line_styles(n)
        assert len(styles) == n and len(set(styles)) == n
    assert timeline_png(np.arange(3), np.random.rand(3, 11), [f"w{i}" for i in range(11)], "mass")[:4] == b"\x89PNG"


def test_summary_csv_agrees_with_the_timeline_packet(tmp_path):
    """A real run's trace: summary.csv's AUC, peak and stabilisation steps are the timeline
    packet's numbers for the same words (one definition per name), from the raw-map series the
    step packets carry, not from the textures."""
    import torch

    from bridge.phases import PhaseEngine
    from bridge.stream.recipes import timeline_of

    words = ["red", "car"]
    engine = PhaseEngine(words)
    g = torch.Generator().manual_seed(3)
    path = tmp_path / "t.trace"
    n_steps = 8
    with TraceWriter(path) as w:
        w.send(Packet("run", {"run_id": "r", "prompt": "a red car", "words": words, "total_steps": n_steps}))
        for s in range(n_steps):
            raw = torch.rand(2, 8, 8, generator=g) * (0.02 if s > 4 else 0.2) + torch.linspace(0, 0.1, 64).view(1, 8, 8)
            frame = engine.update(raw, s, n_steps)
            w.send(Packet("step", {"run_id": "r", **frame.scalars()}, {"textures": frame.textures.numpy()}))
        tl = timeline_of("r", engine)
        w.send(Packet("end", {"run_id": "r", "status": "done"}))
    out = tmp_path / "x"
    export_trace(path, out, ExportOptions(csv=True))
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [r["measures_from"] for r in rows] == ["raw", "raw"]
    h = tl.header
    for j, r in enumerate(rows):
        assert float(r["auc"]) == pytest.approx(h["auc"][j], rel=1e-5)  # the CSV keeps 6 digits
        assert int(r["peak_step"]) == h["peak_step"][j]
        assert int(r["stabilisation_step"]) == h["stabilisation_step"][j]
        assert int(r["emergence_step"]) == h["emergence_step"][j]
