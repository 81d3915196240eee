"""Experiment: head relevance with a *peak* vote instead of the paper's spatial mean.

The HRV votes, per head and step, for the concept with the largest attention averaged over the
image (``hrv.head_winners``). In the shapes world an object covers about 4 % of the image, so that
mean rewards heads that spread a word over the image rather than heads that put it on its object
(docs/RELEVANCE.md, "Why the most relevant heads are not the best localisers here"). This script
runs `stepx` with the UNet probe's vote replaced by the maximum over image positions, to test that
explanation; it is an experiment, not a supported mode (its output folder records the same
settings as a mean-vote run, so keep the two in separate folders).

    python bench/relevance_peak_vote.py relevance --concepts shapes --runs 120 -o out/hrv_peak --workers 0 --model shapes-free
    stepx relevance-eval --weights out/hrv_peak --maps out/maps_free ...      # the tables, from kept maps
"""

from __future__ import annotations

import sys

import torch


def head_winners_peak(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """As ``hrv.head_winners`` (``q [B, heads, N, d]``, ``k [heads, C, d]`` → ``[B, heads]``) with the
    maximum over the N image positions in place of the mean."""
    logits = torch.einsum("bhnd,hcd->bhnc", q.float(), k.float()) * scale  # [B, heads, N, C]
    return logits.softmax(dim=-1).amax(dim=2).argmax(dim=-1)


def main(argv: list[str]) -> int:
    import bridge.analysis.relevance.probe as probe
    from bridge.cli import main as stepx

    probe.head_winners = head_winners_peak  # the UNet probe's vote (in-process runs: --workers 0)
    return stepx(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
