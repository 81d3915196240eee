"""Head relevance vectors: the maths, the probe against diffusers' own attention, exact merging
over any split (in process, Ray local mode, real Ray workers), resuming, and the command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from bridge.analysis.relevance.collect import GenerationPlan, RelevanceCounter, draw, word_embeddings
from bridge.analysis.relevance.concepts import load_concepts, parse_concepts
from bridge.analysis.relevance.distribute import ModelSpec, chunked, run_counts
from bridge.analysis.relevance.hrv import (add_winners, flatten_by_layer, head_winners, relevance_vectors, select_heads,
                                           split_by_layer)
from bridge.analysis.relevance.probe import UNetHeadProbe

TINY_SET = """
name = "tiny"
prompts = ["a photo of a cat on a red chair", "a blue car in the rain", "a green tree at night"]
[generation]
steps = 3
guidance = 5.0
[concepts]
animals = ["cat", "dog", "horse"]
colors = ["red", "blue", "green"]
objects = ["chair", "car", "lamp"]
"""
PLAN = GenerationPlan(seed=7, steps=3, guidance=5.0)
RUNS = 6


# ----------------------------------------------------------------------------- maths
def test_head_winners_pick_the_concept_the_queries_point_at():
    d = 4
    k = torch.eye(3, d)[None].repeat(2, 1, 1) * 10  # [heads=2, C=3, d]: concept c's key is axis c
    q = torch.zeros(1, 2, 5, d)
    q[0, 0, :, 2] = 1.0  # head 0 looks along axis 2
    q[0, 1, :, 0] = 1.0  # head 1 along axis 0
    assert head_winners(q, k, 1.0).tolist() == [[2, 0]]


def test_add_winners_counts_exactly_and_vectors_are_unit_length():
    counts = torch.zeros(3, 5, dtype=torch.int64)
    add_winners(counts, torch.tensor([[2, 0], [2, 2]]), offset=3)
    add_winners(counts, torch.tensor([[1, 1, 1]]), offset=0)
    assert counts.tolist() == [[0, 0, 0, 0, 1], [1, 1, 1, 0, 0], [0, 0, 0, 2, 1]]
    v = relevance_vectors(counts)
    assert torch.allclose(v.norm(dim=1), torch.ones(3, dtype=torch.float64))
    assert relevance_vectors(torch.zeros(2, 3, dtype=torch.int64)).abs().sum() == 0  # never won: zeros, no NaN


def test_layer_split_round_trips_and_selects_heads():
    layout = [("a", 2), ("b", 3)]
    w = split_by_layer([0.1, 0.5, 0.3, 0.0, 0.9], layout)
    assert w == {"a": [0.1, 0.5], "b": [0.3, 0.0, 0.9]}
    flat = flatten_by_layer(w, layout)
    assert flat.tolist() == [0.1, 0.5, 0.3, 0.0, 0.9]
    assert select_heads(flat, 2).tolist() == [0, 1, 0, 0, 1]
    assert select_heads(flat, 2, most=False).tolist() == [1, 0, 0, 1, 0]
    with pytest.raises(ValueError, match="k must be in 1..5"):
        select_heads(flat, 6)
    with pytest.raises(ValueError, match="lack layers"):
        flatten_by_layer({"a": [1, 2]}, layout)


# ----------------------------------------------------------------------------- concept sets
def test_shipped_concept_sets_load():
    shapes, sd = load_concepts("shapes"), load_concepts("sd14")
    assert {"shape", "colour", "size", "position", "background"} <= set(shapes.concepts)
    assert len(sd.concepts) == 34 and all(len(ws) == 10 for ws in sd.words)
    from bridge.models.shapes.vocab import WORDS

    assert all(w in WORDS for ws in shapes.words for w in ws)  # the shapes tokenizer knows every word
    assert all(w in WORDS for p in shapes.prompts for w in p.split())


@pytest.mark.parametrize("text, message", [
    ("prompts = ['x']\n[concepts]\na = ['w']", "at least 2 concepts"),
    ("prompts = ['x']\n[concepts]\na = ['w']\nb = []", "non-empty list"),
    ("[concepts]\na = ['w']\nb = ['v']", "'prompts' must be a non-empty list"),
    ("prompts = ['x']\nfoo = 1\n[concepts]\na = ['w']\nb = ['v']", "unknown keys"),
    ("prompts = ['x']\n[concepts]\n'a/b' = ['w']\nc = ['v']", "names a JSON file"),
    ("prompts = [", "not valid TOML"),
    ("prompts = ['x']\n[concepts]\na = [1, 2]\nb = ['v']", "list of words"),
    ("prompts = ['x', 3]\n[concepts]\na = ['w']\nb = ['v']", "list of strings"),
    ("prompts = ['x']\n[generation]\nsteps = 'many'\n[concepts]\na = ['w']\nb = ['v']", "steps must be a whole number"),
    ("prompts = ['x']\n[generation]\nwidth = 100\n[concepts]\na = ['w']\nb = ['v']", "multiple of 8"),
    ("prompts = ['x']\n[generation]\nguidance = -1\n[concepts]\na = ['w']\nb = ['v']", "guidance must be a number"),
    ("prompts = ['x']\n[generation]\nseed = 3\n[concepts]\na = ['w']\nb = ['v']", "takes steps, guidance"),
])
def test_bad_concept_sets_are_refused_with_a_reason(text, message):
    with pytest.raises(ValueError, match=message):
        parse_concepts(text)


def test_draws_depend_on_seed_and_index_only():
    cs = parse_concepts(TINY_SET)
    assert draw(cs, PLAN, 3) == draw(cs, PLAN, 3)
    assert len({draw(cs, PLAN, i).noise_seed for i in range(50)}) == 50
    assert draw(cs, PLAN, 3) != draw(cs, GenerationPlan(seed=8, steps=3), 3)


# ----------------------------------------------------------------------------- the probe
def test_probe_matches_diffusers_attention_scores(sd_pipe):
    """Winners from the probe equal an independent reference: diffusers' own get_attention_scores
    over the same layer inputs and the concept keys, per head, conditional rows only."""
    cs = parse_concepts(TINY_SET)
    probe = UNetHeadProbe(sd_pipe)
    emb = word_embeddings(sd_pipe, ["cat", "red", "chair"])
    e = torch.stack([emb["cat"], emb["red"], emb["chair"]])  # [C, D]
    prompt, keys = probe.prepare(cs.prompts[0], ["cat", "red", "chair"])
    assert prompt == cs.prompts[0]
    counts = torch.zeros(3, sum(h for _, h in probe.layout), dtype=torch.int64)
    ref = torch.zeros_like(counts)
    inputs: dict[str, list[torch.Tensor]] = {n: [] for n, _ in probe.layout}
    handles = [l.module.register_forward_pre_hook(lambda m, a, kw, n=l.name: inputs[n].append(a[0] if a else kw["hidden_states"]), with_kwargs=True)
               for l in probe.layers]
    try:
        with probe.counting(keys, counts):
            sd_pipe(prompt, num_inference_steps=2, guidance_scale=5.0, generator=torch.Generator().manual_seed(0), output_type="latent")
    finally:
        for h in handles:
            h.remove()
    offset = 0
    for layer in probe.layers:
        attn = layer.module
        for x in inputs[layer.name]:
            x = x[x.shape[0] // 2 :].double()  # cond rows
            q = attn.head_to_batch_dim(attn.to_q.double()(x))
            k = attn.head_to_batch_dim(attn.to_k.double()(e.double()[None]))
            probs = attn.get_attention_scores(q, k)  # [heads, N, C]
            win = probs.mean(1).argmax(-1)  # [heads]
            for h, c in enumerate(win.tolist()):
                ref[c, offset + h] += 1
        attn.to_q.float(), attn.to_k.float()
        offset += layer.heads
    assert counts.sum() == 2 * offset  # one win per head per step
    assert torch.equal(counts, ref)


def test_sdxl_heads_are_scored_with_both_text_encoders(sdxl_pipe):
    counter = RelevanceCounter(sdxl_pipe, parse_concepts(TINY_SET), GenerationPlan(seed=1, steps=2, guidance=3.0))
    emb = word_embeddings(sdxl_pipe, ["cat"])["cat"]
    assert emb.shape[-1] == sdxl_pipe.unet.config.cross_attention_dim  # both encoders' hidden states, concatenated
    counts, _ = counter.run([0])
    assert counts.sum() == 2 * sum(h for _, h in counter.layout)


# ----------------------------------------------------------------------------- exact merging
@pytest.fixture(scope="module")
def reference_counts():
    """All generations in one chunk, in this process, one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        counts, layout, stats = run_counts(ModelSpec("tiny", device="cpu"), parse_concepts(TINY_SET), PLAN, range(RUNS),
                                           workers=0, chunk=RUNS)
    finally:
        torch.set_num_threads(threads)
    assert stats.generations == RUNS and counts.sum() == RUNS * PLAN.steps * sum(h for _, h in layout)
    return counts


def test_chunking_in_process_does_not_change_counts(reference_counts):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seen: list[list[int]] = []
        counts, _, stats = run_counts(ModelSpec("tiny", device="cpu"), parse_concepts(TINY_SET), PLAN, [5, 0, 3, 1, 4, 2],
                                      workers=0, chunk=4, on_chunk=lambda idx, c: seen.append(idx))
    finally:
        torch.set_num_threads(threads)
    assert seen == [[0, 1, 2, 3], [4, 5]] and stats.chunks == 2
    assert np.array_equal(counts, reference_counts)


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray cluster on the CPU (Ray 2.60 removed ``local_mode``), shared by the split tests."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("workers, chunk", [(1, 2), (3, 1), (2, 4)])
def test_ray_any_split_gives_identical_counts(local_ray, reference_counts, workers, chunk):
    """Ray actors (separate worker processes on the CPU): 1 or several workers, any chunking."""
    counts, _, stats = run_counts(ModelSpec("tiny", device="cpu", threads=1), parse_concepts(TINY_SET), PLAN, range(RUNS),
                                  workers=workers, chunk=chunk)
    assert stats.backend == "ray" and stats.workers == workers and stats.chunks == math.ceil(RUNS / chunk)
    assert stats.generations == RUNS and stats.compute_s > 0 and stats.ray_overhead_s >= 0
    assert 1 <= len(stats.per_worker) <= workers and sum(stats.per_worker.values()) == RUNS
    assert local_ray.is_initialized()  # a cluster the caller started is left running
    assert np.array_equal(counts, reference_counts)


def test_head_sets_refuse_an_ablation_past_the_heads():
    from bridge.analysis.relevance.shapes_eval import head_sets

    rel = torch.arange(6, dtype=torch.float64)
    sets = head_sets(rel, 2, [1, 6])
    assert sets["top-2"].tolist() == [0, 0, 0, 0, 1, 1] and sets["bottom-2"].tolist() == [1, 1, 0, 0, 0, 0]
    assert sets["top-6"].sum() == 6 and sets["all heads (DAAM)"].sum() == 6
    with pytest.raises(ValueError, match="ablation k=7 is out of range"):
        head_sets(rel, 2, [7])


def test_chunked_rejects_zero():
    assert chunked([3, 1, 2], 2) == [[1, 2], [3]]
    with pytest.raises(ValueError):
        chunked([1], 0)


# ----------------------------------------------------------------------------- the command
def test_command_resumes_and_writes_what_serve_reads(tmp_path, reference_counts, capsys, sd_pipe):
    from bridge.capture import load_head_weights
    from bridge.cli import main

    cfile = tmp_path / "tiny.toml"
    cfile.write_text(TINY_SET)
    out = tmp_path / "weights"
    base = ["relevance", "--concepts", str(cfile), "-o", str(out), "--model", "tiny", "--device", "cpu", "--seed", "7",
            "--workers", "0", "--threads", "1", "--chunk", "2"]
    assert main(base + ["--runs", "4"]) == 0
    chunks_before = sorted(p.name for p in (out / ".relevance").glob("chunk-*.npz"))
    assert main(base + ["--runs", str(RUNS)]) == 0  # resumes: only generations 4 and 5 run
    assert "2 new generations" in capsys.readouterr().out
    chunks = sorted(p.name for p in (out / ".relevance").glob("chunk-*.npz"))
    assert set(chunks_before) < set(chunks) and len(chunks) == 3
    assert main(base + ["--runs", str(RUNS)]) == 0  # nothing left to run: no model loaded, timings kept
    summary = json.loads((out / ".relevance" / "summary.json").read_text())
    assert np.array_equal(np.array(summary["counts"]), reference_counts)
    assert [s["generations"] for s in summary["runs_stats"]] == [4, 2]
    assert (out / ".relevance" / "hrv.png").stat().st_size > 0
    names = sorted(p.stem for p in out.glob("*.json"))
    assert names == ["animals", "colors", "objects"]
    w = load_head_weights(out / "animals.json")  # serve --concepts reads exactly this
    layout = [tuple(x) for x in summary["layout"]]
    assert list(w) == [n for n, _ in layout]
    flat = flatten_by_layer(w, layout)
    assert flat.norm().item() == pytest.approx(1.0) or flat.abs().sum() == 0
    from bridge.capture import CaptureConfig, capture, top_heads

    for weights in (w, top_heads(w, 3)):  # the capture takes them as they are: selective aggregation
        with capture(sd_pipe, CaptureConfig(head_weights=weights)) as cap:
            sd_pipe("a cat", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="latent")
        assert torch.isfinite(cap.runs[-1].frames[-1].cross).all()
    # other settings into the same folder: refused, nothing overwritten
    before = (out / "animals.json").read_bytes()
    assert main(base + ["--runs", "2", "--steps", "5"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert (out / "animals.json").read_bytes() == before


def test_words_the_tokenizer_does_not_know_are_refused():
    from bridge.analysis.relevance.collect import check_words
    from bridge.models.loading import load_pipeline

    pipe, _ = load_pipeline()  # the shapes model's word-level tokenizer
    check_words(pipe, load_concepts("shapes").words[0])
    with pytest.raises(ValueError, match="unknown to this model's tokenizer: 'dog', 'laptop'"):
        RelevanceCounter(pipe, parse_concepts(TINY_SET.replace('"cat"', '"dog"').replace('"lamp"', '"laptop"')), PLAN)


def test_command_refuses_a_missing_concept_file(tmp_path, capsys):
    from bridge.cli import main

    assert main(["relevance", "--concepts", str(tmp_path / "nope.toml"), "--runs", "1", "-o", str(tmp_path / "o")]) == 2
    assert "nor a shipped set" in capsys.readouterr().err


# ----------------------------------------------------------------------------- MM-DiT
@pytest.mark.parametrize("builder", ["tiny_sd3_pipeline", "tiny_flux_pipeline"])
def test_mmdit_probe_scores_every_joint_head_once_per_step(builder):
    import bridge.models.tiny as tiny
    from bridge.analysis.relevance.probe import probe_for
    from bridge.analysis.relevance.probe_mmdit import MMDiTHeadProbe

    pipe = getattr(tiny, builder)()
    probe = probe_for(pipe)
    assert isinstance(probe, MMDiTHeadProbe)
    prompt, state = probe.prepare("a blue car", ["cat", "red", "chair"])
    assert prompt == "a blue car, cat, red, chair"
    counter = RelevanceCounter(pipe, parse_concepts(TINY_SET), GenerationPlan(seed=1, steps=2, guidance=3.0), probe)
    a, _ = counter.run([0, 1])
    b, _ = counter.run([1])
    c, _ = counter.run([0])
    assert a.sum() == 2 * 2 * sum(h for _, h in probe.layout)  # every head, every step, every generation
    assert np.array_equal(a, b + c)  # generations are independent
    with pytest.raises(ValueError, match="single words"):
        probe.prepare("x", ["ice cream", "red", "chair"])


# ----------------------------------------------------------------------------- selective aggregation
def test_all_heads_equal_the_capture_daam_map(sd_pipe):
    """The uniform mean over per-head maps is DAAM: the same map the capture aggregates itself."""
    from bridge.analysis.relevance.selective import head_maps
    from bridge.capture import capture

    probe = UNetHeadProbe(sd_pipe)
    hm = head_maps(sd_pipe, "a cat on a red chair", probe.layout, seed=3, steps=3, guidance=5.0)
    with capture(sd_pipe) as cap:
        sd_pipe("a cat on a red chair", num_inference_steps=3, guidance_scale=5.0, generator=torch.Generator().manual_seed(3))
    daam = cap.runs[-1].mean_word_maps(0)  # [words, H, W]
    ones = torch.ones(hm.maps.shape[0], dtype=torch.float64)
    for word in ("cat", "red", "chair"):
        assert torch.allclose(hm.word(word, ones), daam[hm.tokens.index(word)], rtol=1e-4, atol=1e-6)
    top = torch.zeros_like(ones)
    top[0] = 1.0
    assert torch.allclose(hm.word("cat", top), hm.maps[0, hm.tokens.index("cat")])


def test_eval_and_diagnose_commands_on_the_shapes_model(tmp_path, capsys):
    """A tiny HRV on the embedded model, then the tables and the diagnosis figure from it."""
    from PIL import Image

    from bridge.cli import main

    w = tmp_path / "w"
    assert main(["relevance", "--concepts", "shapes", "--runs", "1", "--steps", "2", "-o", str(w), "--workers", "0"]) == 0
    out = tmp_path / "eval"
    maps = tmp_path / "maps"
    args = ["relevance-eval", "--weights", str(w), "--prompts", "2", "--steps", "3", "--k", "4", "--ablation", "2", "6", "--maps", str(maps)]
    assert main(args + ["-o", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    # again from the kept per-head maps: no model at all (a path that does not exist is never loaded), same tables
    assert main(args + ["-o", str(tmp_path / "again"), "--model", str(tmp_path / "no-such-model")]) == 0
    assert json.loads((tmp_path / "again" / "results.json").read_text())["table"] == result["table"]
    assert main(args + ["-o", str(tmp_path / "other"), "--guidance", "2"]) == 2  # other settings: refused
    assert "other settings" in capsys.readouterr().err
    rows = result["table"]["shape:shape"]
    assert {"all heads (DAAM)", "top-4", "bottom-4", "top-2", "top-6"} <= set(rows)
    assert all(0.0 <= v <= 1.0 for r in rows.values() for v in r.values()) and result["objects_scored"] > 0
    assert "| all heads (DAAM) |" in (out / "table.md").read_text()
    png = tmp_path / "diag.png"
    assert main(["relevance-diagnose", "a red circle on a yellow background", "--word", "yellow", "--weights", str(w),
                 "--concepts", "colour", "background", "--steps", "3", "-o", str(png)]) == 0
    img = Image.open(png)
    assert img.size[0] > 2 * img.size[1]  # image + three panels side by side
    assert main(["relevance-diagnose", "a red circle", "--word", "blue", "--weights", str(w), "--steps", "2", "-o", str(png)]) == 2
    assert "not a word of the prompt" in capsys.readouterr().err
