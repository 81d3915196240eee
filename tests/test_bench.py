"""The benchmark harness itself (bridge/bench.py): every variant runs, ratios are against plain in
the same process, latency is counted per step, and the profile names what each variant adds."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import torch

from bridge.bench import run_bench


def _free_port(count: int = 3) -> int:
    """A port that is free with the ``count - 1`` after it (run_bench binds the next ports too)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
            others = [socket.socket() for _ in range(count - 1)]
            try:
                for k, o in enumerate(others, 1):
                    o.bind(("127.0.0.1", base + k))
                return base
            except OSError:
                continue
            finally:
                for o in others:
                    o.close()


@pytest.fixture(scope="module")
def tiny_pipe():
    from bridge.models.loading import load_pipeline

    return load_pipeline("tiny", "cpu")[0]


@pytest.mark.slow
def test_every_variant_runs_and_is_compared_with_plain(tiny_pipe, tmp_path):
    variants = ["plain", "capture", "publish", "publish_device", "publish_inproc", "publish_null", "publish_ring", "capture_eager",
                "capture_unfused", "queries"]
    profile = tmp_path / "profile.txt"
    result = run_bench(tiny_pipe, steps=3, runs=2, warmup=0, variants=variants,
                       endpoint=f"tcp://127.0.0.1:{_free_port()}", profile=str(profile))
    assert result["errors"] == {}
    assert set(result["median_ratio_vs_plain"]) == set(variants)
    assert result["median_ratio_vs_plain"]["plain"] == 1.0
    assert all(r > 0 for r in result["median_ratio_vs_plain"].values())
    for v, (lo, hi) in result["ratio_ci95"].items():
        assert lo <= result["median_ratio_vs_plain"][v] <= hi
    assert result["best_ratio_vs_plain"]["plain"] == 1.0
    # the model's thread's CPU per call: some for every variant, never more than the call's wall time
    cpu = result["model_thread_cpu_ms"]
    assert set(cpu) == set(variants) and all(0 < ms <= 1e3 * max(result["seconds"][v]) + 1 for v, ms in cpu.items())
    lat = result["step_to_subscriber_latency"]
    # 4 subscribed publishing variants (publish, publish_device, publish_inproc, publish_ring;
    # publish_null has no sink) x (1 untimed + 2 timed + 2 profiled calls) x 3 steps, all received
    # by the subscriber in the other process (from the sink processes and from this one)
    assert lat["sent"] == 4 * 5 * 3 and lat["received"] == lat["sent"]
    assert 0 < lat["p50_ms"] <= lat["p99_ms"]
    # the publish variant's hand-overs were timed: each stage is a part of the whole
    assert set(lat["stages"]) == {"step_end_to_handover", "handover", "handover_to_receipt", "handover_to_built", "built_to_receipt"}
    # (not handover_to_built: the packet thread's end-of-hand-over stamp waits for the GIL, and on
    # a loaded CPU the sink has often built the packet by then, so that stage may be negative:
    # handover_stages' docstring; test_handover_stages_split_at_the_sink_stamp checks the split)
    assert all(0 <= st["p50_ms"] <= lat["p99_ms"] for k, st in lat["stages"].items() if k != "handover_to_built")
    assert lat["stages"]["handover_to_built"]["p50_ms"] <= lat["stages"]["handover_to_receipt"]["max_ms"]
    # and per variant: each its own 5 calls x 3 steps, the ring's and the packet thread's hand-overs timed
    assert {v: (one["sent"], one["received"]) for v, one in lat["by_variant"].items()} == {
        v: (15, 15) for v in ("publish", "publish_device", "publish_inproc", "publish_ring")}
    assert {v for v, one in lat["by_variant"].items() if "stages" in one} == {"publish", "publish_ring"}
    assert lat["by_variant"]["publish_ring"]["stages"]["handover"]["p50_ms"] >= 0
    # every run has 3 steps: 15 runs' first, last and middle steps, and the five worst among them
    assert {k: v["n"] for k, v in lat["by_place"].items()} == {"first": 20, "last": 20, "middle": 20}
    assert [w["of"] for w in lat["worst"]] == [3] * 5 and lat["worst"][0]["ms"] == round(max(
        v["max_ms"] for v in lat["by_place"].values()), 3)
    # the garbage collections of every timed call were counted, per variant
    assert {v for v, c in result["gc"].items() if isinstance(c, dict)} == set(variants)
    assert result["gc"]["tracked_objects"] > 0
    text = profile.read_text()
    for v in variants:
        assert f"=== {v}:" in text and f"=== python {v}:" in text
    assert "--- capture minus plain" in text and "aten::_softmax" in text  # the capture's own maths shows


def test_a_variant_that_cannot_run_is_reported_not_fatal(tiny_pipe):
    import sys

    had_spacy = "spacy" in sys.modules
    result = run_bench(tiny_pipe, steps=2, runs=1, warmup=0, variants=["plain", "daam"])
    # DAAM's import stubs spaCy where it is missing; the stub must not outlive it (the objects
    # analysis, in the same process, would take it for the real package)
    assert ("spacy" in sys.modules) == had_spacy
    if "daam" in result["median_ratio_vs_plain"]:  # DAAM installed here: then it simply ran
        return
    assert "daam" in result["errors"] and set(result["median_ratio_vs_plain"]) == {"plain"}


def test_max_seconds_reports_the_rounds_done(tiny_pipe):
    """A time budget stops starting rounds (at least one timed round runs) and the result says how many."""
    result = run_bench(tiny_pipe, steps=2, runs=50, warmup=1, variants=["plain", "capture"], max_seconds=0.0)
    assert result["runs"] == 1 and len(result["seconds"]["plain"]) == len(result["seconds"]["capture"]) == 1
    assert run_bench(tiny_pipe, steps=2, runs=3, warmup=0, variants=["plain", "capture"], max_seconds=600)["runs"] == 3


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_setaffinity"), reason="Linux's per-thread CPU affinity")
def test_pin_thread_keeps_the_model_thread_on_one_cpu_then_puts_it_back(tiny_pipe, monkeypatch):
    import os

    import bridge.bench as bench

    before = os.sched_getaffinity(0)
    cpu = max(before)
    seen: list[set[int]] = []
    plain_gen = tiny_pipe.__class__.__call__

    def spy(self, *a, **k):  # the timed calls run on the pinned thread
        seen.append(os.sched_getaffinity(0))
        return plain_gen(self, *a, **k)

    monkeypatch.setattr(tiny_pipe.__class__, "__call__", spy)
    result = bench.run_bench(tiny_pipe, steps=1, runs=2, warmup=0, variants=["plain", "capture"], pin_thread=cpu)
    assert result["pinned_thread_cpu"] == cpu and seen[-1] == {cpu} and seen[0] == before  # the untimed calls: not yet
    assert os.sched_getaffinity(0) == before
    with pytest.raises(ValueError, match="not one of this process's CPUs"):
        bench.run_bench(tiny_pipe, steps=1, runs=1, warmup=0, variants=["plain"], pin_thread=10_000)
    assert os.sched_getaffinity(0) == before


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_setaffinity") or len(__import__("os").sched_getaffinity(0)) < 2,
                    reason="Linux's per-thread CPU affinity, two CPUs")
def test_pin_alone_moves_the_other_threads_off_the_model_cpu_then_back(tiny_pipe, monkeypatch):
    import os
    import threading

    import bridge.bench as bench

    before = os.sched_getaffinity(0)
    cpu = max(before)
    other_id: list[int] = []
    started, stop = threading.Event(), threading.Event()

    def other() -> None:  # stands for ZeroMQ's I/O thread or the packet thread: started before the pin
        other_id.append(threading.get_native_id())
        started.set()
        stop.wait()

    t = threading.Thread(target=other, daemon=True)
    t.start()
    assert started.wait(30)
    seen: list[tuple[set[int], set[int]]] = []
    plain_gen = tiny_pipe.__class__.__call__

    def spy(self, *a, **k):
        seen.append((os.sched_getaffinity(0), os.sched_getaffinity(other_id[0])))
        return plain_gen(self, *a, **k)

    monkeypatch.setattr(tiny_pipe.__class__, "__call__", spy)
    try:
        result = bench.run_bench(tiny_pipe, steps=1, runs=2, warmup=0, variants=["plain"], pin_thread=cpu, pin_alone=True)
        assert result["pinned_alone"] is True
        assert seen[-1] == ({cpu}, before - {cpu})  # the model's thread alone on its CPU
        assert seen[0] == (before, before)  # the untimed call: not yet
        assert os.sched_getaffinity(0) == before and os.sched_getaffinity(other_id[0]) == before  # both put back
    finally:
        stop.set()
        t.join(30)


def test_gc_meter_counts_each_calls_collections_by_generation() -> None:
    import gc

    from bridge.bench import GcMeter

    meter = GcMeter()
    try:
        meter.start()
        gc.collect(0)
        gc.collect(2)
        meter.stop("a")
        meter.start()
        meter.stop("a")  # a call with none
        meter.start()
        threading.Thread(target=gc.collect, args=(1,)).start()  # another thread's collection counts too
        time.sleep(0.2)
        meter.stop("b")
    finally:
        out = meter.close()
    assert meter._callback not in gc.callbacks  # closed: no callback left behind
    assert out["a"]["collections_per_call"] == [0.5, 0.0, 0.5] and out["a"]["max_ms"] > 0
    assert out["b"]["collections_per_call"] == [0.0, 1.0, 0.0]


def test_median_interval_brackets_the_median_and_narrows_with_rounds():
    import numpy as np

    from bridge.bench import median_ci

    rng = np.random.default_rng(1)
    few, many = 1.0 + 0.2 * rng.standard_normal(15), 1.0 + 0.2 * rng.standard_normal(240)
    lo, hi = median_ci(few)
    assert lo <= float(np.median(few)) <= hi
    lo2, hi2 = median_ci(many)
    assert hi2 - lo2 < (hi - lo) / 2  # ~1/sqrt(n): 16x the rounds, a quarter of the width
    assert median_ci(np.array([1.02, 1.02, 1.02])) == [1.02, 1.02]


def test_latency_summary_splits_by_place_in_run() -> None:
    from bridge.bench import latency_summary

    sent = {("a", s): 10.0 + s for s in range(4)} | {("b", 0): 20.0}  # b: a one-step run
    got = {("a", 0): 10.005, ("a", 1): 11.002, ("a", 2): 12.001, ("a", 3): 13.050, ("b", 0): 20.003}
    out = latency_summary(sent, got)
    assert out["received"] == 5 and out["sent"] == 5
    assert out["by_place"]["first"]["n"] == 2 and out["by_place"]["last"]["n"] == 1  # a one-step run's step is its first
    assert out["by_place"]["middle"]["n"] == 2 and abs(out["by_place"]["last"]["max_ms"] - 50) < 1e-6
    assert out["worst"][0] == {"step": 3, "of": 4, "ms": 50.0}
    assert latency_summary(sent, {}) == {"received": 0, "sent": 5}


def test_handover_stages_split_at_the_sink_stamp() -> None:
    from bridge.bench import handover_stages

    sent = {("a", 0): 1.000, ("a", 1): 2.000}
    handover = {("a", 0): (1.001, 1.0012), ("a", 1): (2.002, 2.0025)}
    built = {("a", 0): 1.0032}  # step 1's packet carried no ``sent`` stamp
    received = {("a", 0): 1.0042, ("a", 1): 2.0065}
    st = handover_stages(sent, handover, built, received)
    assert st["step_end_to_handover"]["max_ms"] == pytest.approx(2.0)
    assert st["handover_to_receipt"]["max_ms"] == pytest.approx(4.0)
    assert st["handover_to_built"] == pytest.approx({"p50_ms": 2.0, "p99_ms": 2.0, "max_ms": 2.0})
    assert st["built_to_receipt"]["p50_ms"] == pytest.approx(1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (GPU step ends from CUDA events)")
def test_latency_from_the_gpu_step_end() -> None:
    from bridge.bench import Latency

    lat = Latency([f"tcp://127.0.0.1:{_free_port()}"])
    lat.reference(3)  # the three step events made ahead
    a = torch.randn(2048, 2048, device="cuda")
    for step in range(3):
        for _ in range(20):
            a = a @ a / 2048  # the host runs ahead of this
        lat.step_end("r", step)
    done = lat.gpu_done()
    ends = [done[("r", s)] for s in range(3)]
    assert ends == sorted(ends) and all(d >= lat.sent[("r", s)] - 1e-4 for s, d in enumerate(ends))
    lat.close()
