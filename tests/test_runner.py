"""The runner: packets in run order, and step packets that hold exactly the phases of the captured maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bridge.capture import capture
from bridge.phases import PhaseEngine
from bridge.runner import Request, collect

PROMPT = "a red circle above a blue square"


@pytest.mark.parametrize("phases_on", ["host", "device"])
def test_packets_in_order_and_equal_to_an_independent_run(sd_pipe, phases_on):
    result, packets = collect(sd_pipe, Request(PROMPT, seed=5, steps=4, focus=["square"]), image_every=2, phases_on=phases_on)
    assert result.status == "done"
    kinds = [p.kind for p in packets]
    assert kinds[0] == "run" and kinds[-2:] == ["timeline", "end"]
    steps = [p for p in packets if p.kind == "step"]
    assert [p.header["step"] for p in steps] == [0, 1, 2, 3]
    images = [p for p in packets if p.kind == "image"]
    assert [p.header["step"] for p in images] == [0, 2, 3] and images[-1].header["final"]
    assert images[0].arrays["image"].dtype == np.uint8 and images[0].arrays["image"].shape == (64, 64, 3)
    assert packets[0].header["focus"] == [6] and packets[0].header["words"][6] == "square"

    # the same generation by hand: capture, word maps, phases
    with capture(sd_pipe) as cap:
        g = torch.Generator().manual_seed(5)
        sd_pipe(PROMPT, num_inference_steps=4, generator=g, output_type="latent")
    run = cap.last_run
    engine = PhaseEngine(run.words)
    for frame, packet in zip(run.frames, steps):
        pf = engine.update(run.tokens(0).word_maps(frame.cross[0]), frame.step, frame.total_steps)
        np.testing.assert_allclose(packet.arrays["textures"], pf.arrays()["textures"], rtol=0, atol=1e-6)
        assert packet.header["phase_weights"] == pf.scalars()["phase_weights"]
        assert packet.header["timestep"] == float(frame.timestep)


def test_step_clock_is_called_on_the_model_thread_before_each_step_packet(sd_pipe):
    """Benchmarks time step → subscriber latency from ``step_clock``: it must fire once per
    step, in order, on the denoising thread, before that step's packet is published."""
    import threading

    from bridge.runner import Runner

    calls: list[tuple[str, int, bool]] = []
    published: list[tuple[str, int]] = []

    def clock(run_id: str, step: int) -> None:
        calls.append((run_id, step, threading.current_thread() is threading.main_thread()))

    def publish(p) -> None:
        if p.kind == "step" and (p.header["run_id"], p.header["step"], True) in calls:  # else missing below
            published.append((p.header["run_id"], p.header["step"]))

    runner = Runner(sd_pipe, publish, image_every=0, step_clock=clock)
    result = runner.run(Request("a cat", seed=0, steps=4))
    assert result.status == "done"
    assert calls == [(result.run_id, s, True) for s in range(4)]
    assert published == [(result.run_id, s) for s in range(4)]


def test_cancel_stops_the_run_after_the_current_step(sd_pipe):
    import threading

    from bridge.runner import Runner

    cancel = threading.Event()
    packets = []

    def publish(p):
        packets.append(p)
        if p.kind == "step" and p.header["step"] == 1:
            cancel.set()  # set while the run goes on (the worker publishes as steps end)

    def step_clock(run_id, step):  # the model waits at step 2 for the cancel (ordering, not timing:
        if step == 2:               # a starved packet thread must not let all 30 steps run first)
            assert cancel.wait(30), "step 1 was never published"

    runner = Runner(sd_pipe, publish, image_every=0, step_clock=step_clock)
    result = runner.run(Request(PROMPT, seed=5, steps=30), cancel)
    assert result.status == "cancelled"
    assert 2 <= result.steps < 30  # stops within a few steps of the request, never runs all 30
    assert [p.kind for p in packets][-1] == "end" and packets[-1].header["status"] == "cancelled"
    assert not sd_pipe._interrupt  # the next run starts clean
    assert collect(sd_pipe, Request(PROMPT, seed=5, steps=3))[0].steps == 3


class _Recipes:
    """A remote Publisher, as a PacketProcess is (its recipes built here instead of in a child),
    that notes which thread handed each packet over."""

    remote = True

    def __init__(self, fail_step: int | None = None) -> None:
        self.got: list[tuple[str, int | None, str]] = []
        self.packets = []
        self.recipes = []
        self.fail_step = fail_step

    def publish(self, packet) -> None:
        import threading

        self.got.append((packet.kind, packet.header.get("step"), threading.current_thread().name))
        self.packets.append(packet)

    def publish_recipe(self, recipe) -> None:
        self.recipes.append(recipe)
        packet = recipe()
        if packet is None:  # a recipe with nothing to send (prepare_run), as the sink process skips it
            return
        if packet.kind == "step" and packet.header["step"] == self.fail_step:
            raise ConnectionError("the sink process went away")
        self.publish(packet)

    def alive(self) -> bool:
        return True


def test_the_phase_state_is_made_before_step_0_where_the_packets_are_built(sd_pipe, monkeypatch):
    """With the run packet goes a recipe that makes the run's phase state for the maps' size, so
    the first step's packet does not wait for it; the first step then uses that state, not a new one."""
    import bridge.phases.engine as engine_module
    from bridge.runner import Runner
    from bridge.stream.recipes import host_step_packet, prepare_run

    made: list[tuple[int, int, int]] = []
    real = engine_module.initial_state
    monkeypatch.setattr(engine_module, "initial_state", lambda n, h, w, device: made.append((n, h, w)) or real(n, h, w, device))
    pub = _Recipes()
    result = Runner(sd_pipe, pub, image_every=0).run(Request(PROMPT, seed=5, steps=3))
    assert result.status == "done"
    first, second = pub.recipes[0], pub.recipes[1]
    assert first.func is prepare_run and second.func is host_step_packet and second.args[4] == 0  # before step 0's recipe
    maps = second.args[3]  # [words, H, W]
    assert first.args[3:] == maps.shape[1:] and first.args[1] == second.args[1] and first.args[2] == second.args[2]
    assert made == [maps.shape[:1] + maps.shape[1:]]  # made once, by prepare_run: step 0 used it
    assert [(k, s) for k, s, _ in pub.got][:2] == [("run", None), ("step", 0)]  # nothing sent for it


def test_recipes_go_out_in_order_from_the_packet_thread(sd_pipe):
    """A remote publisher gets recipes (phases where they are built), all from the packet thread;
    the packets equal those a plain callable gets."""
    from bridge.runner import Runner
    from bridge.stream.publisher import Publisher

    pub = _Recipes()
    assert isinstance(pub, Publisher)
    runner = Runner(sd_pipe, pub, image_every=2)
    assert runner.phases_where() == "host"
    result = runner.run(Request(PROMPT, seed=5, steps=4))
    assert result.status == "done"
    assert [(k, s) for k, s, _ in pub.got] == [("run", None), ("step", 0), ("image", 0), ("step", 1), ("step", 2), ("image", 2),
                                               ("step", 3), ("image", 3), ("timeline", None), ("end", None)]
    assert {name for _, _, name in pub.got} == {"stepx-packets"}
    _, reference = collect(sd_pipe, Request(PROMPT, seed=5, steps=4), image_every=0)
    mine, theirs = [p for p in pub.packets if p.kind == "step"], [p for p in reference if p.kind == "step"]
    assert len(mine) == len(theirs) == 4
    for a, b in zip(mine, theirs):
        np.testing.assert_array_equal(a.arrays["rgba"], b.arrays["rgba"])


def test_a_hand_over_that_fails_is_logged_and_the_run_goes_on(sd_pipe, caplog):
    from bridge.runner import Runner

    pub = _Recipes(fail_step=1)
    result = Runner(sd_pipe, pub, image_every=0).run(Request(PROMPT, seed=5, steps=4))
    assert result.status == "done"
    assert [s for kind, s, _ in pub.got if kind == "step"] == [0, 2, 3]
    assert [k for k, _, _ in pub.got][-1] == "end"
    assert "the sink process went away" in caplog.text


def test_ordered_worker_busy_until_its_jobs_have_run():
    import threading

    from bridge.stream.host import OrderedWorker

    worker = OrderedWorker()
    gate = threading.Event()
    worker.put(gate.wait)
    assert worker.busy
    gate.set()
    worker.flush()
    assert not worker.busy
    worker.put(lambda: 1 / 0)  # a failing job still counts as finished
    worker.flush()
    assert not worker.busy
    worker.close()


@pytest.mark.parametrize("arch", ["flux", "sd3"])
def test_mmdit_pipelines_publish_with_their_own_word_map(arch):
    """FLUX's words are T5 (SentencePiece) tokens: the focus check before the run uses the run's own
    word map, and the final image is decoded from FLUX's unpacked latents."""
    from bridge.models.tiny import tiny_flux_pipeline, tiny_sd3_pipeline

    pipe = tiny_flux_pipeline() if arch == "flux" else tiny_sd3_pipeline()
    prompt = "a red circle, above a blue square."
    result, packets = collect(pipe, Request(prompt, seed=2, steps=2, width=64, height=64, focus=["square"]))
    assert result.status == "done", result.error
    run = packets[0]
    assert run.kind == "run" and run.header["words"][run.header["focus"][0]] == "square"
    assert run.header["words"] == ["a", "red", "circle", "above", "a", "blue", "square"]
    assert [p.header["step"] for p in packets if p.kind == "step"] == [0, 1]
    image = [p for p in packets if p.kind == "image"][-1]
    assert image.header["final"] and image.arrays["image"].shape == (64, 64, 3)
    bad, _ = collect(pipe, Request(prompt, seed=2, steps=2, width=64, height=64, focus=["hexagon"]))
    assert bad.status == "error" and "'hexagon' is not a word of the prompt" in bad.error


def test_every_step_packet_is_handed_over_before_the_final_decode(sd_pipe, monkeypatch):
    """The last step's packet must not wait behind the VAE decode (on a GPU-bound model that
    wait was the whole decode): the decode starts only once every step packet is published.

    The last step's publish holds the packet thread until the runner waits for that thread
    (``_drain``), so a decode launched without waiting would see it missing, every time."""
    import threading

    from bridge import runner as runner_module
    from bridge.runner import Runner

    published: list[str] = []
    at_decode: list[list[str]] = []
    go = threading.Event()
    real_decode, real_drain = runner_module.decode_full, Runner._drain

    def publish(p) -> None:
        if p.kind == "step" and p.header["step"] == 2:
            go.wait()
        published.append(p.kind)

    def drain(self) -> None:
        go.set()
        real_drain(self)

    def decode_full(pipe, latents):
        at_decode.append(list(published))
        go.set()  # without the wait, let the packet thread go on after the decode
        return real_decode(pipe, latents)

    monkeypatch.setattr(runner_module, "decode_full", decode_full)
    monkeypatch.setattr(Runner, "_drain", drain)
    result = Runner(sd_pipe, publish, image_every=0).run(Request("a cat", seed=0, steps=3))
    assert result.status == "done"
    assert at_decode == [["run", "step", "step", "step"]]
    assert published[-3:] == ["image", "timeline", "end"]


def test_staging_holds_the_word_maps_and_the_timestep_in_one_buffer():
    """The host phases' one copy a step: the word maps bit for bit as ``TokenMap.word_maps``, then
    a timestep given as a tensor (integer or float) as one float32 more; a host number is not
    staged; the buffer is the run's, reused while the shape holds."""
    from bridge.capture.tokens import TokenMap
    from bridge.runner import RunState, _stage_step

    tm = TokenMap(prompt="a red fox", length=6, tokens=("<s>", "a", "red", "fox", "</s>", "</s>"),
                  words=("a", "red", "fox"), word_tokens=((1,), (2,), (3,)), special=(0, 4, 5))
    state = RunState(phases="host")
    cross = torch.rand(6, 8, 8, generator=torch.Generator().manual_seed(0))  # [T, H, W]
    staged = _stage_step(state, tm, cross, torch.tensor([981, 961])[0])
    assert staged.shape == (3 * 64 + 1,) and staged[-1].item() == 981.0
    assert torch.equal(staged[:-1].view(3, 8, 8), tm.word_maps(cross))
    again = _stage_step(state, tm, cross * 2, torch.tensor(0.25))
    assert again.data_ptr() == staged.data_ptr() and again[-1].item() == 0.25
    assert torch.equal(again[:-1].view(3, 8, 8), tm.word_maps(cross * 2))
    plain = _stage_step(state, tm, cross, 500.0)  # known on the host: nothing to copy
    assert plain.shape == (3 * 64,) and torch.equal(plain.view(3, 8, 8), tm.word_maps(cross))
    with pytest.raises(ValueError, match="token maps have 5 tokens"):
        _stage_step(state, tm, cross[:5], 1.0)


def test_the_run_packet_is_handed_over_before_step_0_is_computed(sd_pipe):
    """The run packet leaves as the run starts (its first model evaluation), so step 0's packet does
    not wait behind it on its way to a receiver: by the end of the first evaluation it is queued,
    and no step's is."""
    from bridge.runner import Runner

    runner = Runner(sd_pipe, lambda p: None, image_every=0)
    queued: list[str] = []
    later = runner._later

    def spy(fetch):
        sent = fetch.__qualname__.startswith("Runner._send.")  # a ready Packet (a step's fetch would wait for its copy)
        ready = fetch.__qualname__.startswith("Runner._begin.")  # the run's preparation: a recipe, ready too
        queued.append(fetch().kind if sent else fetch().func.__name__ if ready else fetch.__qualname__)
        later(fetch)

    runner._later = spy
    seen: list[list[str]] = []
    handle = sd_pipe.unet.register_forward_hook(lambda *_: seen.append(list(queued)))
    try:
        result = runner.run(Request(PROMPT, seed=5, steps=3))
    finally:
        handle.remove()
    assert result.status == "done"
    assert seen[0] == ["run", "prepare_run"]  # after the first evaluation: the run packet and the phases' state, no step


def test_capture_calls_on_run_once_per_run_before_its_first_evaluation(sd_pipe):
    from bridge.capture import Capture

    events: list[tuple] = []
    cap = Capture(sd_pipe, on_run=lambda run: events.append(("run", run.run_id, run.total_steps, tuple(run.resolution), run.words[:2])))
    cap.on_step(lambda frame, run: events.append(("step", run.run_id, frame.step)))
    handle = sd_pipe.unet.register_forward_hook(lambda *_: events.append(("eval",)))
    try:
        with cap:
            for seed in (1, 2):
                sd_pipe(PROMPT, num_inference_steps=2, generator=torch.Generator().manual_seed(seed), output_type="latent")
    finally:
        handle.remove()
    a, b = (r.run_id for r in cap.runs)
    assert [e[0] for e in events] == ["run", "eval", "step", "eval", "step"] * 2
    # its steps, grid and words were known as it started: what the run packet says
    assert events[0] == ("run", a, 2, tuple(cap.runs[0].resolution), ["a", "red"]) and events[5][:3] == ("run", b, 2)
