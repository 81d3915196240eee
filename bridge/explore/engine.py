"""Models and generation for the explorer: load on first use, generate with capture, answer
self-attention (DAAM-I2I) queries.

A generated run keeps each step's predicted clean latent (small: ``[1, C, h, w]``) and decodes it
with the model's own VAE the first time the page shows that step (then the run keeps the
image). Region queries re-run the same request (same seed, same model) with only that query's
self-attention rows captured: capture never changes the image (tested in tests/test_capture_*),
so the maps belong to the image on screen, and no full HW×HW matrix is ever built.

One lock serialises the model: a diffusers pipeline is not re-entrant.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bridge.capture import Capture, CaptureConfig, Query, adapter_for, build_token_map
from bridge.latent_preview import decode_full
from bridge.phases import PhaseConfig
from bridge.phases.morph import phase_index, run_progress

from .runs import InspectRun, scaled

log = logging.getLogger(__name__)

#: where the page's early / mid / late columns sit, as fractions of the run (0 = first step, 1 = last)
STAGES = {"early": 0.15, "mid": 0.5, "late": 1.0}


@dataclass(frozen=True)
class GenerateRequest:
    """What the Generate button sends: a generation (checked by the one request schema,
    ``bridge.request``) and the model to load. The seed is always set (a random one if none was
    given), so the run can be generated again for region queries."""

    prompt: str
    model: str = "shapes"
    seed: int = 0
    steps: int = 20
    guidance: float = 7.5
    width: int | None = None
    height: int | None = None
    negative_prompt: str = ""

    @classmethod
    def checked(cls, body: Any) -> "GenerateRequest":
        """From the page's JSON; a bad value raises ValueError (the schema's SchemaError) naming it
        and the allowed range."""
        from bridge.request import parse_generate

        params = parse_generate(body, allowed_extra=("model",))  # the same rules as every other door
        for unused in ("focus", "concept", "head_weights", "phase_boundaries"):
            if getattr(params, unused):
                raise ValueError(f"the explorer's Generate takes no {unused!r}; inspect any word after generating")
        model = str(body.get("model") or "shapes").strip() or "shapes"
        seed = params.seed if params.seed is not None else int(np.random.default_rng().integers(0, 2**32))
        guidance = params.guidance if body.get("guidance") is not None else _model_guidance(model)
        return cls(params.prompt, model, seed, params.steps, guidance, params.width, params.height, params.negative_prompt)


def _model_guidance(model: str) -> float:
    """The model's own default guidance (the embedded model's is its evaluation value, 4.0)."""
    from bridge.models.loading import default_guidance

    return default_guidance(model)  # 'shapes' and 'shapes-free' name embedded checkpoints


class Engine:
    """Loaded models (most recent ``keep_models``) and the generations made with them."""

    def __init__(self, device: str = "auto", dtype: str | None = None, keep_models: int = 1, refuse: str | None = None,
                 allowed: list[str] | None = None) -> None:
        """``refuse``: generation is off, and this says why (the explorer of ``stepx serve``
        leaves the model to the show). ``allowed``: the only models the page may load (None: any
        the loader takes; an explorer open to the network lists them, so nobody can make the
        server load an arbitrary file)."""
        self.device, self.dtype, self.keep_models, self.refuse = device, dtype, keep_models, refuse
        self.allowed = None if allowed is None else ["shapes", *[m for m in allowed if m != "shapes"]]
        self._models: OrderedDict[str, tuple[Any, str]] = OrderedDict()
        self._lock = threading.Lock()
        self._requests: dict[str, GenerateRequest] = {}
        self._regions: OrderedDict[tuple, dict[str, Any]] = OrderedDict()

    # --- models ----------------------------------------------------------------------------------
    def pipe(self, model: str) -> tuple[Any, str]:
        """The pipeline of ``model`` (loaded on first use; call with the lock held)."""
        key = "shapes" if model in ("", "shapes") else model
        if self.allowed is not None and key not in self.allowed:
            raise ValueError(f"this explorer loads only {', '.join(self.allowed)} (its --model options), not {model!r}")
        got = self._models.get(key)
        if got is None:
            from bridge.models.loading import load_pipeline

            path = Path(key).expanduser()
            if not path.exists() and (key.startswith(("/", ".", "~")) or path.suffix in (".safetensors", ".ckpt")):
                raise ValueError(f"cannot load the model {model!r}: no such file or folder")  # the loaded model stays
            if self.keep_models <= 1:
                self._models.clear()  # free the old model's memory before a big one loads
            try:
                got = load_pipeline(None if key == "shapes" else key, self.device, self.dtype)
            except (OSError, RuntimeError, ValueError) as exc:  # a path, hub id or file that does not load: the user's to fix
                raise ValueError(f"cannot load the model {model!r}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
            while len(self._models) >= self.keep_models:
                self._models.popitem(last=False)
            self._models[key] = got
        self._models.move_to_end(key)
        return got

    # --- generation ---------------------------------------------------------------------------------
    def generate(self, req: GenerateRequest) -> InspectRun:
        """One generation with capture: every step's word maps and predicted clean latent."""
        if self.refuse:
            raise ValueError(self.refuse)
        with self._lock:
            pipe, name = self.pipe(req.model)
            tokens = build_token_map(adapter_for(pipe).tokenizer(), req.prompt)
            if tokens.truncated_words:  # the page says so instead of showing maps of a cut prompt
                cut = tokens.truncated_words
                raise ValueError(f"the prompt is over {name}'s {tokens.length}-token limit: {len(cut)} word(s) do not fit, "
                                 f"from {cut[0]!r} on; shorten the prompt")
            if not tokens.words:
                raise ValueError("the prompt has no words to inspect (letters or digits)")
            latents: dict[int, torch.Tensor] = {}
            maps: list[np.ndarray] = []

            def on_step(frame: Any, run: Any) -> None:
                maps.append(run.tokens(0).word_maps(frame.cross[0]).float().cpu().numpy())  # [words, H, W]
                if frame.x0 is not None:
                    latents[frame.step] = frame.x0[:1].detach().clone()

            with torch.inference_mode():
                with Capture(pipe, CaptureConfig(keep_frames=False), on_step) as cap:
                    final = pipe(**self._kwargs(req)).images
                final_image = decode_full(pipe, final[:1])
            run = cap.last_run
        steps = np.arange(len(maps), dtype=np.int64)
        boundaries = PhaseConfig().boundaries
        phases = [phase_index(run_progress(int(s), len(maps)), boundaries) for s in steps]
        header = {"run_id": run.run_id, "prompt": req.prompt, "seed": req.seed, "steps": req.steps, "guidance": req.guidance,
                  "model": name, "words": list(tokens.words), "height": final_image.shape[0], "width": final_image.shape[1],
                  "phases": phases, "scheduler": run.info.get("scheduler")}

        def decode(step: int) -> np.ndarray | None:
            z = latents.get(step)
            if z is None:
                return None
            with self._lock, torch.inference_mode():
                return decode_full(self.pipe(req.model)[0], z)

        out = InspectRun(header, list(tokens.words), steps, np.stack(maps), image_source=decode, final_image=final_image)
        self._requests[out.id] = req
        return out

    def _kwargs(self, req: GenerateRequest) -> dict[str, Any]:
        from bridge.request import pipeline_kwargs

        kw = pipeline_kwargs(req.prompt, req.steps, req.guidance, req.width, req.height, req.negative_prompt)
        kw.update(generator=torch.Generator(device="cpu").manual_seed(req.seed), output_type="latent")
        return kw

    # --- DAAM-I2I ------------------------------------------------------------------------------------
    def region(self, run: InspectRun, query: Query) -> dict[str, Any]:
        """Self-attention maps of ``query`` at every step of ``run`` (re-running its request with
        only that query captured): ``{"steps": [...], "maps": [T, H, W] scaled, "stages": {...}}``.
        The last few answers are kept."""
        req = self._requests.get(run.id)
        if req is None:
            raise ValueError("region-to-region needs the model: this run came from a trace, which records no "
                             "self-attention; generate it in Generate & Inspect (same prompt and seed) to query regions")
        key = (run.id, query)
        if key in self._regions:
            self._regions.move_to_end(key)
            return self._regions[key]
        maps: list[np.ndarray] = []
        with self._lock:
            pipe, _ = self.pipe(req.model)
            cfg = CaptureConfig(keep_frames=False, cross=False, queries=[query])
            with torch.inference_mode(), Capture(pipe, cfg, lambda f, r: maps.append(f.self_maps[query.name][0].float().cpu().numpy())) as cap:
                pipe(**self._kwargs(req))
            del cap
        stack = np.stack([scaled(m) for m in maps])  # [T, H, W]
        n = len(maps)
        stages = {name: int(f * (n - 1) + 0.5) for name, f in STAGES.items()}  # step indices 0 … n-1
        answer = {"steps": list(range(n)), "maps": stack, "stages": stages}
        self._regions[key] = answer
        while len(self._regions) > 32:
            self._regions.popitem(last=False)
        return answer

    def recapture(self, run: InspectRun, config: CaptureConfig) -> Any:
        """The CaptureRun of ``run``'s request generated again under ``config`` (same seed, same
        image): for analyses that need more than the inspected maps (self-attention grids)."""
        req = self._requests.get(run.id)
        if req is None:
            raise ValueError("this needs the model: the run came from a trace, which records no self-attention; "
                             "generate it in Generate & Inspect (same prompt and seed)")
        with self._lock:
            pipe, _ = self.pipe(req.model)
            with torch.inference_mode(), Capture(pipe, config) as cap:
                pipe(**self._kwargs(req))
        return cap.last_run

    def forget(self, run_id: str) -> None:
        self._requests.pop(run_id, None)

    # --- head relevance --------------------------------------------------------------------------------
    def compare_heads(self, run: InspectRun, relevance: dict[str, list[float]], word: str, k: int) -> dict[str, np.ndarray]:
        """``word``'s map at the run's last step aggregated over all heads, over the ``k`` most
        relevant heads and over the ``k`` least relevant ones (selective aggregation: weights 1 on
        the chosen heads, 0 elsewhere), each scaled to its maximum: ``{"all", "top", "bottom"}``."""
        from bridge.capture import top_heads

        req = self._requests.get(run.id)
        if req is None:
            raise ValueError("comparing heads needs the model: generate the run in Generate & Inspect first")
        index = run.word_index(word)
        weights = {"all": None, "top": top_heads(relevance, k),
                   "bottom": top_heads({n: [-v for v in vs] for n, vs in relevance.items()}, k)}
        out: dict[str, np.ndarray] = {}
        with self._lock:
            pipe, _ = self.pipe(req.model)
            layers = {l.name: l.heads for l in Capture(pipe).cross_layers}
            unknown = sorted(set(relevance) - set(layers))
            if unknown or not relevance:
                raise ValueError(f"these head weights do not fit {req.model}: unknown layers {', '.join(unknown[:3]) or '(none given)'}; "
                                 f"its cross-attention layers are {', '.join(list(layers)[:3])}, …")
            for name, w in weights.items():
                maps = self._last_word_maps(pipe, req, CaptureConfig(keep_frames=False, head_weights=w))  # [words, H, W]
                out[name] = scaled(maps.sum(0) if index is None else maps[index])
        return out

    def _last_word_maps(self, pipe: Any, req: GenerateRequest, config: CaptureConfig) -> np.ndarray:
        """``[words, H, W]`` word maps of the request's last step under ``config`` (lock held)."""
        last: list[np.ndarray] = []

        def keep(frame: Any, run: Any) -> None:
            last[:] = [run.tokens(0).word_maps(frame.cross[0]).float().cpu().numpy()]

        with torch.inference_mode(), Capture(pipe, config, keep):
            pipe(**self._kwargs(req))
        return last[0]
