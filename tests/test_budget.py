"""Requests that would take the machine are refused before they start, with the reason."""

from __future__ import annotations

import threading
import time

import pytest

from bridge.budget import Budget, BudgetError, StepRate, latent_tokens, memory_bytes, predict_step_seconds
from bridge.daemon import Daemon, DaemonOptions
from bridge.runner import Runner
from bridge.transport.control import handle_object


def test_predictions_follow_the_documented_model(sd_pipe):
    scale = sd_pipe.vae_scale_factor  # 2 on the tiny pipeline (64×64 images, 32×32 latents)
    assert latent_tokens(sd_pipe, None, None) == 32 * 32
    assert latent_tokens(sd_pipe, 4096, 2048) == (4096 // scale) * (2048 // scale)
    assert predict_step_seconds(StepRate(1024, 0.5), 4096) == pytest.approx(0.5 * 4 ** 1.5)
    width = sd_pipe.unet.config.block_out_channels[0]
    assert memory_bytes(sd_pipe, 1000, 7.5) == 1000 * width * 2 * 4 * 8 and memory_bytes(sd_pipe, 1000, 1.0) == 1000 * width * 4 * 8


def test_an_oversized_request_is_refused_at_the_door_and_on_the_model_thread(sd_pipe):
    published = []
    daemon = Daemon(Runner(sd_pipe, published.append, "tiny"), published.append,
                    DaemonOptions(idle_replay=False, max_step_seconds=0.5))
    thread = threading.Thread(target=daemon.serve_forever, daemon=True)
    thread.start()
    try:
        big = {"cmd": "generate", "prompt": "a red circle", "steps": 2, "width": 4096, "height": 4096}
        # nothing measured yet: the door knows only memory, the model's thread times a probe
        assert handle_object(big, daemon.handle)["ok"] is True
        t0 = time.monotonic()
        while "refused" not in daemon.status()["message"]:
            assert time.monotonic() - t0 < 60, daemon.status()
            time.sleep(0.05)
        assert daemon.runs_done == 0 and "per step" in daemon.status()["message"]
        errors = [p for p in published if p.kind == "status" and "refused" in str(p.header.get("error"))]
        assert errors and not [p for p in published if p.kind == "run"]
        ok = handle_object({"cmd": "generate", "prompt": "a red circle", "steps": 2, "seed": 1}, daemon.handle)
        assert ok["ok"] is True
        while daemon.runs_done < 1:
            assert time.monotonic() - t0 < 60
            time.sleep(0.05)
        reply = handle_object(big, daemon.handle)  # measured now: refused at the door with the reason
        assert reply["ok"] is False and "refused" in reply["error"] and "s per step" in reply["error"]
    finally:
        daemon.stop()
        thread.join(30)


def test_memory_beyond_what_the_device_has_is_refused(sd_pipe, monkeypatch):
    import bridge.budget as budget

    monkeypatch.setattr(budget, "free_memory", lambda device: 10 * 2**20)  # a device with 10 MiB free
    with pytest.raises(BudgetError, match=r"needs at least .* GiB .* has 0.0 GiB free"):
        Budget(sd_pipe).check(4096, 4096, 7.5)
    Budget(sd_pipe).check(64, 64, 7.5)
