"""Noun phrases as units ("a red car"): which words form one, behind a seam.

:class:`PhraseGrouper` is the seam: the TITAN prompt handler of ``bridge.analysis.objects``
(its phrases) can replace :class:`TaggedPhrases`, the minimal grouping used until then: a
phrase is a run of attributes ending in a noun (object, background or detail), with the
determiner just before it.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import torch
from torch import Tensor

from .prompts import NOUN_ROLES

DETERMINERS = frozenset({"a", "an", "the", "one", "two", "some"})


class PhraseGrouper(Protocol):
    """Groups a prompt's words into phrases: ``(phrase text, word indices)`` in prompt order."""

    def phrases(self, words: Sequence[str], roles: Sequence[str]) -> list[tuple[str, list[int]]]: ...


class TaggedPhrases:
    """[determiner] attribute* noun, from the template's role tags."""

    def phrases(self, words: Sequence[str], roles: Sequence[str]) -> list[tuple[str, list[int]]]:
        out, start = [], None
        for i, role in enumerate(roles):
            if role == "attribute":
                start = i if start is None else start
            elif role in NOUN_ROLES:
                first = i if start is None else start
                if first > 0 and words[first - 1].casefold() in DETERMINERS:
                    first -= 1
                idx = list(range(first, i + 1))
                out.append((" ".join(words[k] for k in idx), idx))
                start = None
            else:
                start = None
        return out


def phrase_maps(word_maps: Tensor, groups: list[tuple[str, list[int]]]) -> Tensor:
    """A phrase's map is the sum of its words' raw maps (attention the phrase gets, as DAAM
    sums a multi-token word). word_maps: ``[T, N, H, W]`` -> ``[T, P, H, W]``."""
    if not groups:
        return word_maps.new_zeros((word_maps.shape[0], 0, *word_maps.shape[2:]))
    return torch.stack([word_maps[:, idx].sum(dim=1) for _, idx in groups], dim=1)
