"""Noun phrases as units ("red car"): which words form one, behind a seam.

:class:`PhraseGrouper` is the seam. :class:`TitanPhrases` (the default) takes the phrases of
the TITAN prompt handler (``bridge.analysis.objects.parse_prompt``: attributes + head noun,
objects and scene phrases such as "yellow background"); :class:`TaggedPhrases` groups by the
template's role tags instead ([determiner] attribute* noun).
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


class TitanPhrases:
    """The TITAN prompt handler's noun phrases (objects, then scene phrases), as word indices
    into the capture's words; phrases whose words cannot be found in them are left out."""

    def phrases(self, words: Sequence[str], roles: Sequence[str]) -> list[tuple[str, list[int]]]:
        from bridge.analysis.objects import parse_prompt

        parsed = parse_prompt(" ".join(words))
        folded = [w.casefold() for w in words]
        if [w.casefold() for w in parsed.words] != folded:  # the handler split differently: nothing to map
            return []
        out = [(o.name, sorted(o.word_indices)) for o in parsed.objects]
        for scene in parsed.scene:  # "yellow background": the first match not already used
            sw = scene.split()
            used = {i for _, idx in out for i in idx}
            for i in range(len(folded) - len(sw) + 1):
                if folded[i:i + len(sw)] == sw and not used & set(range(i, i + len(sw))):
                    out.append((scene, list(range(i, i + len(sw)))))
                    break
        return sorted(out, key=lambda g: g[1][0])


def phrase_maps(word_maps: Tensor, groups: list[tuple[str, list[int]]]) -> Tensor:
    """A phrase's map is the sum of its words' raw maps (attention the phrase gets, as DAAM
    sums a multi-token word). word_maps: ``[T, N, H, W]`` -> ``[T, P, H, W]``."""
    if not groups:
        return word_maps.new_zeros((word_maps.shape[0], 0, *word_maps.shape[2:]))
    return torch.stack([word_maps[:, idx].sum(dim=1) for _, idx in groups], dim=1)
