"""Objects from attention: prompt handler, detection maths, annotate on live runs and traces,
stepx titan (COCO dataset, resumable), evaluation scoring."""

from __future__ import annotations

import json
from collections import deque

import numpy as np
import pytest
import torch

pytest.importorskip("lemminflect")
pytest.importorskip("pycocotools")

from bridge.analysis.objects import DetectConfig, Evidence, annotate, decode_rle, encode_rle, parse_prompt  # noqa: E402
from bridge.analysis.objects.detect import instances, label_components, refine, to_image  # noqa: E402

PROMPT = "a red circle left of a blue square on a yellow background"


# ---------------------------------------------------------------- prompt handler
def test_handler_ordinary_english():
    p = parse_prompt("a brass pitcher on a wooden table beside two red apples")
    assert [(o.name, o.category, o.attributes, o.count) for o in p.objects] == [
        ("brass pitcher", "brass pitcher", ("brass",), 1), ("wooden table", "wooden table", ("wooden",), 1),
        ("red apples", "red apple", ("red",), 2)]
    assert p.words[p.objects[2].word_indices[0]] == "apples" and p.unknown == []
    car = parse_prompt("A vintage car and buildings line the naturally lit street.")
    assert [(o.category, o.count) for o in car.objects] == [("vintage car", 1), ("building", None), ("street", 1)]
    assert [o.category for o in parse_prompt("a photo of three cats").objects] == ["cat"]
    cases = {
        "a cat sitting on a red chair": ["cat", "red chair"],
        "a man with a red umbrella walks down a rainy street": ["man", "red umbrella", "rainy street"],
        "a dog and a cat, oil painting": ["dog", "cat"],
        "a coffee cup on a table": ["coffee cup", "table"],
    }
    for prompt, want in cases.items():
        assert [o.category for o in parse_prompt(prompt).objects] == want, prompt
    assert parse_prompt("a dog and a cat, oil painting").scene == ["oil painting"]


def test_handler_reports_unknown_words_never_guesses():
    p = parse_prompt("a zorblax cat on a chair")
    assert p.unknown == ["zorblax"] and [o.category for o in p.objects] == ["cat", "chair"]


def test_categories_gather_counts_and_map_mentions_to_the_runs_words():
    from bridge.analysis.objects.annotate import categories, object_word_indices

    p = parse_prompt("a red apple beside two red apples and some red apples near a cat")
    cats = {c.name: c for c in categories(p)}
    assert cats["red apple"].count is None and cats["cat"].count == 1  # "some" apples: how many is unknown
    assert {c.name: c.count for c in categories(parse_prompt("a cat and two cats"))} == {"cat": 3}
    run_words = ["a", "red", "apple", "beside", "two", "red", "apples", "and", "some", "red", "apples", "near", "a", "cat"]
    got = dict((c.name, idx) for c, idx in object_word_indices(p, run_words))
    assert got == {"red apple": [[2, 1], [6, 5], [10, 9]], "cat": [[13]]}  # noun first, then attributes
    with pytest.raises(ValueError, match=r"the object 'red apple' needs the words \['red'\], which the run does not have"):
        object_word_indices(parse_prompt("a red apple"), ["a", "apple"])


def test_handler_reads_the_shapes_world():
    from bridge.models.shapes.evaluate import eval_prompts
    from bridge.models.shapes.world import parse_caption

    for prompt in eval_prompts(40, 7) + eval_prompts(20, 8, "train"):
        spec = parse_caption(prompt)
        got = parse_prompt(prompt)
        want = [" ".join(x for x in (o.get("size"), o["colour"], o["shape"]) if x) for o in spec["objects"]]
        assert [o.category for o in got.objects] == want, prompt
        assert got.unknown == [] and all(o.count == 1 for o in got.objects)
        assert got.scene == ([f"{spec['background']} background"] if "background" in prompt else [])


# ---------------------------------------------------------------- maths
def _bfs_count(mask: np.ndarray) -> int:
    seen, n = np.zeros_like(mask), 0
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        n += 1
        q = deque([(y0, x0)])
        seen[y0, x0] = True
        while q:
            y, x = q.popleft()
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    yy, xx = y + dy, x + dx
                    if 0 <= yy < mask.shape[0] and 0 <= xx < mask.shape[1] and mask[yy, xx] and not seen[yy, xx]:
                        seen[yy, xx] = True
                        q.append((yy, xx))
    return n


def test_label_components_matches_a_flood_fill():
    rng = np.random.default_rng(0)
    for density in (0.2, 0.45, 0.6):
        mask = rng.random((24, 31)) < density
        lab, n = label_components(torch.from_numpy(mask))
        assert n == _bfs_count(mask)
        assert set(np.unique(lab.numpy()[mask])) == set(range(1, n + 1)) and not lab.numpy()[~mask].any()


def test_instances_split_separate_regions_and_respect_count():
    prob = torch.zeros(32, 32)
    prob[2:10, 2:10] = 1.0
    prob[20:30, 18:30] = 0.9
    two = instances(prob, 0.4, 0.002, 2)
    assert len(two) == 2 and {int(m.sum()) for m, _ in two} == {64, 120}
    (best,) = instances(prob, 0.4, 0.002, 1)
    assert int(best[0].sum()) == 120  # more mass outranks a brighter but smaller region
    assert len(instances(prob, 0.4, 0.002, None)) == 2 and instances(torch.zeros(8, 8), 0.4, 0.0, 1) == []


def test_refine_follows_self_attention_edges():
    """A blurry word blob spilling over an object's edge is pulled back to the object by an affinity
    in which every cell attends to its own segment."""
    H = W = 16
    truth = torch.zeros(H, W, dtype=torch.bool)
    truth[4:10, 4:10] = True
    g = 8
    rows = []
    for i in range(g):
        for j in range(g):
            inside = truth[2 * i, 2 * j]
            rows.append((truth if inside else ~truth).float() / (truth if inside else ~truth).sum())
    aff = torch.stack(rows)  # [64, 16, 16]
    yy, xx = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    blob = torch.exp(-((yy - 8) ** 2 + (xx - 8) ** 2) / 30)  # centred off the object, too wide
    iou = lambda m: float((m & truth).sum() / (m | truth).sum())  # noqa: E731
    cfg = DetectConfig()
    assert iou(refine(blob, aff, cfg) >= cfg.guided_tau) > iou(to_image(blob, (H, W)) >= cfg.tau) + 0.1


def test_rle_round_trip_is_pycocotools():
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(1)
    m = rng.random((19, 23)) < 0.3
    rle = encode_rle(m)
    assert isinstance(rle["counts"], str) and json.loads(json.dumps(rle)) == rle
    assert np.array_equal(decode_rle(rle), m)
    assert mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode()}) == m.sum()


def test_annotate_rejects_a_prompt_the_run_lacks():
    ev = Evidence(["cat", "on", "chair"], torch.rand(2, 3, 8, 8), None, (32, 32))
    assert [i.category for i in annotate(ev, method="wordmap")] == ["cat", "chair"]
    with pytest.raises(ValueError, match="does not have"):
        annotate(ev, "a red dog")
    with pytest.raises(ValueError, match="unknown method"):
        annotate(ev, method="magic")
    from bridge.analysis.objects import detect_words

    (chair,) = detect_words(ev, ["chair"], method="wordmap")
    assert chair.category == "chair" and chair.mask.shape == (32, 32) and chair.method == "wordmap"
    with pytest.raises(ValueError, match="not among the run's words: cat, on, chair"):
        detect_words(ev, ["dog"])


# ---------------------------------------------------------------- the shapes model, live and from a trace
@pytest.fixture(scope="module")
def shapes_pipe():
    from bridge.models.loading import load_pipeline

    pipe, _ = load_pipeline()
    return pipe


def _truth(image: np.ndarray, prompt: str) -> dict[str, np.ndarray]:
    from bridge.analysis.objects.evaluate import ground_truth

    return {g["category"]: g["mask"] for g in ground_truth(image, prompt)}


def _iou(a, b) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_annotate_live_capture_finds_the_objects(shapes_pipe):
    from bridge.analysis.objects import from_capture
    from bridge.analysis.objects.evidence import detection_config
    from bridge.capture import capture

    with capture(shapes_pipe, detection_config(shapes_pipe)) as cap:
        image = np.asarray(shapes_pipe(PROMPT, num_inference_steps=20, guidance_scale=4.0,
                                       generator=torch.Generator().manual_seed(3)).images[0])
    ev = from_capture(cap.last_run, image)
    assert ev.affinity is not None and ev.affinity.shape == (64, 16, 16)
    found = annotate(ev, PROMPT)
    truth = _truth(image, PROMPT)
    assert sorted(i.category for i in found) == sorted(truth) == ["blue square", "red circle"]
    for inst in found:
        assert inst.method == "guided" and inst.mask.shape == (128, 128) and 0 < inst.score <= 1
        assert _iou(inst.mask, truth[inst.category]) > 0.5
        x, y, w, h = inst.bbox
        assert inst.mask[y:y + h, x:x + w].sum() == inst.area


@pytest.mark.slow
def test_titan_dataset_resumes_and_reads_traces(shapes_pipe, tmp_path, monkeypatch):
    from pycocotools.coco import COCO

    from bridge.commands import titan
    from bridge.cli import main

    monkeypatch.setattr("bridge.models.loading.load_pipeline", lambda *a, **k: (shapes_pipe, "stepx-shapes"))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"# objects\n{PROMPT}\n\na red circle left of a red circle\n")
    out = tmp_path / "ds"
    args = ["titan", str(prompts), "-o", str(out), "--guidance", "4", "--steps", "10"]
    assert main(args) == 0
    doc = json.loads((out / "annotations.json").read_text())
    assert [c["name"] for c in doc["categories"]] == ["red circle", "blue square"]
    coco = COCO(str(out / "annotations.json"))
    assert len(coco.getImgIds()) == 2 and len(coco.getAnnIds(imgIds=[2])) == 2  # two red circles: two instances
    for img in doc["images"]:
        for key in ("file_name", "trace", "maps", "visualisation"):
            assert (out / img[key]).is_file(), key
        assert img["seed"] == img["id"] - 1
    with np.load(out / doc["images"][0]["maps"]) as z:
        assert z["word_maps"].shape[:2] == (10, 12) and z["affinity"].shape == (64, 16, 16)
    from PIL import Image

    assert Image.open(out / "vis" / "000001.png").size == (384, 384)

    # interrupted after image 2's trace: its record is gone; a rerun annotates the trace, never regenerates
    (out / "records" / "000002.json").unlink()
    trace2 = (out / "traces" / "000002.stepx").read_bytes()
    record1 = (out / "records" / "000001.json").stat().st_mtime_ns
    monkeypatch.setattr(titan, "_generate", lambda *a, **k: pytest.fail("a finished image was generated again"))
    assert main(args) == 0
    assert (out / "traces" / "000002.stepx").read_bytes() == trace2
    assert (out / "records" / "000001.json").stat().st_mtime_ns == record1
    again = json.loads((out / "annotations.json").read_text())
    assert again["images"] == doc["images"] and again["categories"] == doc["categories"]
    # image 2 re-annotated from its trace's (float16) maps and its stored affinity: same objects, same method
    summary = lambda d: sorted((a["image_id"], a["category_id"], a["method"]) for a in d["annotations"])  # noqa: E731
    assert summary(again) == summary(doc) == [(1, 1, "guided"), (1, 2, "guided"), (2, 1, "guided"), (2, 1, "guided")]

    # a trace named in a prompt file is annotated from its word maps (no self-attention in traces)
    more = tmp_path / "more.txt"
    more.write_text(str(out / "traces" / "000001.stepx") + "\n")
    assert main(["titan", str(more), "-o", str(tmp_path / "ds2")]) == 0
    doc2 = json.loads((tmp_path / "ds2" / "annotations.json").read_text())
    assert doc2["images"][0]["prompt"] == PROMPT and {a["method"] for a in doc2["annotations"]} == {"wordmap"}
    assert sorted(c["name"] for c in doc2["categories"]) == ["blue square", "red circle"]

    # the prompt file changed under a finished dataset: refused, nothing overwritten
    prompts.write_text("a green star\n")
    assert main(args) == 2
    assert json.loads((out / "records" / "000001.json").read_text())["image"]["prompt"] == PROMPT


# ---------------------------------------------------------------- scoring
def test_score_perfect_and_shifted():
    from bridge.analysis.objects.evaluate import score

    m = np.zeros((32, 32), bool)
    m[4:14, 4:14] = True
    shifted = np.roll(m, 6, axis=1)
    gt = [{"category": "red circle", "rle": encode_rle(m)}]
    det = lambda mask: [{"category": "red circle", "score": 0.9, "rle": encode_rle(mask)}]  # noqa: E731
    rec = {"prompt": "a red circle", "seed": 0, "seconds": 1.0, "gt": gt, "detections": {"wordmap": det(shifted), "guided": det(m), "titan": []}}
    res = score([rec])
    assert res["guided"]["segm"]["AP"] == pytest.approx(1.0) and res["guided"]["mean_iou"] == 1.0
    assert res["wordmap"]["mean_iou"] == pytest.approx(40 / 160) and res["wordmap"]["segm"]["AP50"] == 0.0
    assert res["titan"]["detections"] == 0 and res["titan"]["mean_iou"] == 0.0


# ---------------------------------------------------------------- the objects packet
def test_runner_streams_an_objects_packet_before_end(shapes_pipe, tmp_path):
    from bridge.runner import Request, collect
    from bridge.trace import TraceReader, TraceWriter
    from bridge.protocol import decode, encode

    result, packets = collect(shapes_pipe, Request(PROMPT, seed=3, steps=8, guidance=4.0), image_every=0, objects=True)
    kinds = [p.kind for p in packets]
    assert result.status == "done" and kinds.count("objects") == 1 and kinds.index("objects") < kinds.index("end")
    assert kinds.index("objects") > max(i for i, k in enumerate(kinds) if k == "image")
    obj = packets[kinds.index("objects")]
    assert obj.header["run_id"] == result.run_id and obj.header["prompt"] == PROMPT and obj.header["size"] == [128, 128]
    truth = _truth(result.image, PROMPT)
    got = {i["category"]: i for i in obj.header["instances"]}
    assert sorted(got) == sorted(truth)
    for cat, inst in got.items():
        assert inst["method"] == "guided" and _iou(decode_rle(inst["segmentation"]), truth[cat]) > 0.5
    back = decode(encode(obj, "float16"))  # the wire carries it as it is (JSON header, no arrays)
    assert back.kind == "objects" and back.header == json.loads(json.dumps(obj.header))
    with TraceWriter(tmp_path / "o.stepx") as w:  # and a trace keeps it
        for p in packets:
            w.send(p)
    with TraceReader(tmp_path / "o.stepx") as r:
        assert [p.kind for p in r.packets()].count("objects") == 1
    # without the option: no objects packet and no grid queries
    _, plain = collect(shapes_pipe, Request(PROMPT, seed=3, steps=2, guidance=4.0), image_every=0)
    assert "objects" not in [p.kind for p in plain]
