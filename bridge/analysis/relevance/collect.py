"""Random generations that count, per head, which concept wins: the unit of work that Ray spreads.

Generation ``i`` of a run is fully determined by ``(plan.seed, i)``: its prompt, the concept word
sampled for each concept and the noise seed come from a counter-based draw, so any split of the
indices over workers, chunks or restarts gives the same integer counts.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Iterable

import numpy as np
import torch

from bridge.capture.adapters import adapter_for
from bridge.capture.tokens import build_token_map

from .concepts import ConceptSet
from .probe import HeadProbe, probe_for


@dataclass(frozen=True)
class GenerationPlan:
    """Settings shared by every random generation of a run."""

    seed: int = 0
    steps: int = 20
    guidance: float = 7.5
    width: int | None = None
    height: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Draw:
    """What generation ``index`` uses: a prompt, one word index per concept, a noise seed."""

    index: int
    prompt: str
    words: tuple[int, ...]
    noise_seed: int


def draw(concepts: ConceptSet, plan: GenerationPlan, index: int) -> Draw:
    """Deterministic in ``(plan.seed, index)`` alone (numpy's counter-based Philox)."""
    rng = np.random.Generator(np.random.Philox(key=[plan.seed & (2**64 - 1), index]))
    prompt = concepts.prompts[int(rng.integers(len(concepts.prompts)))]
    words = tuple(int(rng.integers(len(ws))) for ws in concepts.words)
    return Draw(index, prompt, words, int(rng.integers(2**62)))


def word_embeddings(pipe: Any, words: Iterable[str]) -> dict[str, torch.Tensor]:
    """Each word encoded alone by the pipeline's own text encoder(s): the mean of its tokens' embeddings ``[D]``.

    The word is the whole prompt (start token, word, end token): the embedding the denoiser's
    ``to_k`` would see for that word with nothing around it, as in HRV.
    """
    adapter = adapter_for(pipe)
    out = {}
    for word in dict.fromkeys(words):
        tm = build_token_map(adapter.tokenizer(), word)
        pos = [p for ps in tm.word_tokens for p in ps]
        if not pos:
            raise ValueError(f"concept word {word!r} has no tokens for this model's tokenizer")
        with torch.no_grad():
            emb = pipe.encode_prompt(prompt=word, device=pipe.device, num_images_per_prompt=1, do_classifier_free_guidance=False)[0]
        out[word] = emb[0, pos].float().mean(0)  # [D]
    return out


def check_words(pipe: Any, words: Iterable[str]) -> None:
    """Refuse concept words the pipeline's tokenizer does not know (they would all be one ``<unk>`` token)."""
    tok = adapter_for(pipe).tokenizer()
    unk = getattr(tok, "unk_token_id", None)
    if unk is None:
        return
    unknown = [w for w in dict.fromkeys(words) if unk in tok(w, add_special_tokens=False)["input_ids"]]
    if unknown:
        shown = ", ".join(repr(w) for w in unknown[:8]) + (f" and {len(unknown) - 8} more" if len(unknown) > 8 else "")
        raise ValueError(f"concept words unknown to this model's tokenizer: {shown}; use a concept set written for this model")


class RelevanceCounter:
    """Runs generations on one pipeline and returns their summed counts ``[concepts, total_heads]`` (int64)."""

    def __init__(self, pipe: Any, concepts: ConceptSet, plan: GenerationPlan, probe: HeadProbe | None = None) -> None:
        self.pipe, self.concepts, self.plan = pipe, concepts, plan
        check_words(pipe, [w for ws in concepts.words for w in ws])
        self.probe = probe or probe_for(pipe)
        self.layout = list(self.probe.layout)

    @property
    def total_heads(self) -> int:
        return sum(h for _, h in self.layout)

    def run(self, indices: Iterable[int]) -> tuple[np.ndarray, float]:
        """Counts summed over the generations ``indices`` and the seconds they took."""
        t0 = time.perf_counter()
        device = self.pipe.device
        counts = torch.zeros(len(self.concepts.concepts), self.total_heads, dtype=torch.int64, device=device)
        for i in indices:
            d = draw(self.concepts, self.plan, int(i))
            prompt, state = self.probe.prepare(d.prompt, [ws[j] for ws, j in zip(self.concepts.words, d.words)])
            size = {k: v for k, v in (("width", self.plan.width), ("height", self.plan.height)) if v}
            with torch.no_grad(), self.probe.counting(state, counts):
                self.pipe(prompt, num_inference_steps=self.plan.steps, guidance_scale=self.plan.guidance,
                          generator=torch.Generator("cpu").manual_seed(d.noise_seed), output_type="latent", **size)
        return counts.cpu().numpy(), time.perf_counter() - t0
