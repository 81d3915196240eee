"""Head relevance for MM-DiT pipelines (SD3/3.5, FLUX): what a "head" is under joint attention.

In an MM-DiT block, image and text tokens share one attention. A *head* here is one head of
one joint-attention block (SD3: every block's ``attn``; FLUX: the double- and single-stream
blocks), and its cross-attention is the image-query → text-key part of the joint matrix.

Unlike a UNet, the text keys of block l are not a projection of the text encoder's output:
the text stream has been transformed by l blocks, together with the image. So a concept word
has no context-free key per block; the probe puts the sampled concept words into the prompt
(``"PROMPT, word_1, …, word_C"``) and scores them with the keys the block itself computes for
them. Per head and step, for each image position n, the joint probability of each concept word
(the mean over its tokens, the capture's word-map rule, so a word split into many T5 pieces
gains nothing) is renormalised over the C words — for one-token words exactly a softmax over
the concept words' keys, as the joint normaliser cancels — then averaged over n; the argmax wins.
The probabilities are the capture's own (``CaptureConfig(detail_layers=...)``), per step.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import torch

from bridge.capture import CaptureConfig, capture
from bridge.capture.adapters import adapter_for

from .hrv import add_winners


class MMDiTHeadProbe:
    """HeadProbe for SD3/FLUX: concept words appended to the prompt, scored with the blocks' own keys."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.adapter = adapter_for(pipe)
        layers = [l for l in self.adapter.layers() if l.cross]
        if not layers:
            raise ValueError(f"{type(pipe).__name__} has no joint-attention layers to score")
        self.layout = [(l.name, l.heads) for l in layers]

    def prepare(self, prompt: str, words: Sequence[str]) -> tuple[str, list[str]]:
        for w in words:
            if not w.replace("-", "").isalnum() or "-" in w:
                raise ValueError(f"concept word {w!r}: MM-DiT relevance needs single words (letters and digits)")
        return f"{prompt}, {', '.join(words)}", list(words)

    @contextlib.contextmanager
    def counting(self, words: list[str], counts: torch.Tensor) -> Iterator[None]:
        names = [n for n, _ in self.layout]
        offsets = dict(zip(names, [sum(h for _, h in self.layout[:i]) for i in range(len(self.layout))]))
        c = len(words)

        def on_step(frame: Any, run: Any) -> None:
            tm = run.tokens(0)
            if [w.lower() for w in tm.words[-c:]] != [w.lower() for w in words]:
                raise RuntimeError(f"the concept words were cut from the prompt by the tokenizer's limit: {tm.truncated_words}")
            select = tm.averaging_matrix(frame.cross.device)[len(tm.words) - c :]  # [C, T]: a word = the mean of its tokens
            for name in names:
                p = frame.layers[name]  # [B, heads, T, h, w]
                b, heads, t = p.shape[:3]
                per_word = torch.einsum("ct,bhtn->bhcn", select, p.reshape(b, heads, t, -1).float())  # [B, heads, C, N]
                share = per_word / per_word.sum(dim=2, keepdim=True).clamp_min(1e-30)
                add_winners(counts, share.mean(dim=3).argmax(dim=2), offsets[name])

        with capture(self.pipe, CaptureConfig(layers=names, detail_layers=names, keep_frames=False, cuda_graphs=False), on_step=on_step):
            yield
