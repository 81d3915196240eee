"""Word ↔ token mapping with the pipeline's own tokenizer.

A prompt's *words* are runs of letters/digits (with inner apostrophes: ``it's``); punctuation
and the start/end/padding tokens belong to no word. Each word maps to the positions of its
sub-word tokens in the sequence that enters cross-attention, and a word's map is the mean of
its tokens' maps. Words past the tokenizer's limit are reported, never silently dropped.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from bridge.protocol import word_index

from .errors import PromptTooLongError, WordNotFoundError

log = logging.getLogger(__name__)

_WORD = re.compile(r"\w+(?:'\w+)*")
_PUNCT = re.compile(r"[^\w\s]+")
WORD_PATTERN = _WORD  #: what a prompt's word is, for modules that split prompts the same way (objects)


@dataclass(frozen=True)
class TokenMap:
    """How one prompt's words sit in the token sequence of length ``length``.

    ``word_tokens[i]`` are the sequence positions of ``words[i]``'s tokens; ``special`` are the
    positions of start, end and padding tokens; ``truncated_words`` were cut by the limit.
    """

    prompt: str
    length: int
    tokens: tuple[str, ...]
    words: tuple[str, ...]
    word_tokens: tuple[tuple[int, ...], ...]
    special: tuple[int, ...]
    truncated_words: tuple[str, ...] = ()
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    def index(self, word: str | int) -> int:
        """Index of ``word`` (case-insensitive; ``"a#2"`` is the second "a"), or its index if an int."""
        if isinstance(word, int):
            if 0 <= word < len(self.words):
                return word
            raise WordNotFoundError(f"word index {word} is out of range: the prompt has {len(self.words)} words: {self._listing()}")
        found = word_index(self.words, word)
        if found is not None:
            return found
        text = word.strip().lower().partition("#")[0]
        cut = " (it was cut by the tokenizer's limit)" if text in (w.lower() for w in self.truncated_words) else ""
        raise WordNotFoundError(f"{word!r} is not a word of the prompt{cut}; the prompt's words are: {self._listing()}")

    def _listing(self) -> str:
        return ", ".join(repr(w) for w in self.words) or "(none)"

    def averaging_matrix(self, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``[words, length]`` matrix whose row i averages word i's tokens."""
        key = (str(device), dtype)
        if key not in self._cache:
            m = torch.zeros(len(self.words), self.length, dtype=dtype)
            for i, pos in enumerate(self.word_tokens):
                if pos:
                    m[i, list(pos)] = 1.0 / len(pos)
            self._cache[key] = m.to(device)
        return self._cache[key]

    def _ranks(self, device: torch.device, dtype: torch.dtype) -> tuple[list[torch.Tensor], list[torch.Tensor | None], torch.Tensor | None]:
        """For each token rank r: ``[W]`` the position of every word's r-th token, and ``[W, 1]`` 0/1
        whether it has one (None: all do); ``[W, 1]`` token counts (None: one each). Cached per device and dtype."""
        key = ("ranks", str(device), dtype)
        if key not in self._cache:
            ranks = max(1, max((len(p) for p in self.word_tokens), default=0))
            index = torch.tensor([[p[r] if r < len(p) else 0 for p in self.word_tokens] for r in range(ranks)], dtype=torch.long)  # [R, W]
            has = [[float(r < len(p)) for p in self.word_tokens] for r in range(ranks)]
            counts = [float(max(len(p), 1)) for p in self.word_tokens]
            weights = torch.tensor([*has, counts], dtype=dtype)  # [R + 1, W]: which words have a token of rank r; counts
            if torch.device(device).type == "cuda":  # two copies, neither waits for the GPU (the run's first step)
                index, weights = (t.pin_memory().to(device, non_blocking=True) for t in (index, weights))
            self._cache[key] = (list(index.unbind(0)), [None if all(h) else weights[r].reshape(-1, 1) for r, h in enumerate(has)],
                                None if all(c == 1 for c in counts) else weights[ranks].reshape(-1, 1))
        return self._cache[key]

    def word_maps(self, token_maps: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``[tokens, H, W]`` → ``[words, H, W]``: each word's map is the mean of its tokens' maps
        (the sum in token order, then divided by their count; a word without tokens: zeros).

        Rows gathered by token rank, not a product with :meth:`averaging_matrix`: that small
        float32 product cost the host ≈ 150 µs a call on an H100 (cuBLAS, ``aten::mm`` self time in
        docs/bench_results/h100_run8/kernel/sd15_profile.txt), the runner's every step; a gather is
        one launch for one-token words. Deterministic (no atomics). ``out``: a contiguous
        ``[words, H·W]`` (or ``[words, H, W]``) tensor to write into."""
        t, h, w = token_maps.shape
        if t != self.length:
            raise ValueError(f"token maps have {t} tokens, this prompt's sequence has {self.length}")
        flat = token_maps.reshape(t, h * w)
        index, keep, counts = self._ranks(token_maps.device, token_maps.dtype)
        if out is None:
            result = torch.index_select(flat, 0, index[0])
        else:
            result = torch.index_select(flat, 0, index[0], out=out.view(len(self.words), h * w))
        if keep[0] is not None:
            result.mul_(keep[0])
        for rank, mask in zip(index[1:], keep[1:]):
            more = torch.index_select(flat, 0, rank)
            result.add_(more if mask is None else more.mul_(mask))
        if counts is not None:
            result.div_(counts)
        return result.view(len(self.words), h, w)

    def word_map(self, token_maps: torch.Tensor, word: str | int) -> torch.Tensor:
        """``[tokens, H, W]`` → ``[H, W]`` for one word."""
        pos = list(self.word_tokens[self.index(word)])
        return token_maps[pos].mean(0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "length": self.length,
            "tokens": list(self.tokens),
            "words": list(self.words),
            "word_tokens": [list(p) for p in self.word_tokens],
            "special": list(self.special),
            "truncated_words": list(self.truncated_words),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TokenMap":
        return cls(
            prompt=d["prompt"],
            length=int(d["length"]),
            tokens=tuple(d["tokens"]),
            words=tuple(d["words"]),
            word_tokens=tuple(tuple(p) for p in d["word_tokens"]),
            special=tuple(d["special"]),
            truncated_words=tuple(d.get("truncated_words", ())),
        )


def _chunks(prompt: str) -> list[tuple[str, bool]]:
    """Split a prompt into (text, is_word) chunks in order, dropping whitespace."""
    out: list[tuple[str, bool]] = []
    pos = 0
    for m in _WORD.finditer(prompt):
        out += [(p, False) for p in _PUNCT.findall(prompt[pos : m.start()])]
        out.append((m.group(0), True))
        pos = m.end()
    out += [(p, False) for p in _PUNCT.findall(prompt[pos:])]
    return out


def _per_tokenizer(build: Callable[..., TokenMap]) -> Callable[..., TokenMap]:
    """Keep the last maps built per tokenizer: a prompt maps the same way every run, and a map
    kept also keeps its averaging matrices on the device, so a repeated prompt costs the run
    neither tokenizing nor a host→device copy (a fixed cost per run, which weighs most in 1–4
    step models). A map that raised (strict, too long) is not kept."""
    cache: "weakref.WeakKeyDictionary[Any, OrderedDict]" = weakref.WeakKeyDictionary()
    lock = threading.Lock()  # the model's thread and a control thread (validating a request) may both ask

    @functools.wraps(build)
    def cached(tokenizer: Any, prompt: str, length: int | None = None, strict: bool = False) -> TokenMap:
        key = (prompt, length, strict, _vocabulary_size(tokenizer))  # tokens added since (textual inversion): built again
        with lock:
            try:
                maps = cache.setdefault(tokenizer, OrderedDict())
            except TypeError:  # not weak-referenceable: built every time
                maps = None
            if maps is not None and key in maps:
                maps.move_to_end(key)
                return maps[key]
        tm = build(tokenizer, prompt, length, strict)
        if maps is not None:
            with lock:
                maps[key] = tm
                if len(maps) > _MAPS_PER_TOKENIZER:
                    maps.popitem(last=False)
        return tm

    return cached


_MAPS_PER_TOKENIZER = 64


def _vocabulary_size(tokenizer: Any) -> int | None:
    try:
        return len(tokenizer)  # with added tokens
    except TypeError:
        return None


@_per_tokenizer
def build_token_map(tokenizer: Any, prompt: str, length: int | None = None, strict: bool = False) -> TokenMap:
    """Map ``prompt``'s words onto the token sequence that ``tokenizer`` produces for it.

    ``length`` is the sequence length entering attention (default: the tokenizer's
    ``model_max_length``). Words that do not fit are listed in ``truncated_words`` and logged;
    with ``strict=True`` they raise :class:`PromptTooLongError` instead.
    """
    length = int(length or tokenizer.model_max_length)
    full = tokenizer(prompt, truncation=False, add_special_tokens=True, verbose=False)["input_ids"]
    bos = 1 if full and full[0] == tokenizer.bos_token_id else 0
    pos = bos
    words: list[str] = []
    word_tokens: list[tuple[int, ...]] = []
    truncated: list[str] = []
    capacity = length - 1  # the last position holds the end token when the prompt is cut
    for text, is_word in _chunks(prompt):
        n = len(tokenizer.tokenize(text))
        span = tuple(p for p in range(pos, pos + n) if p < capacity)
        if is_word:
            if len(span) < n:
                truncated.append(text)
            if span:
                words.append(text)
                word_tokens.append(span)
        pos += n
    if pos != len(full) - (1 if full and full[-1] == tokenizer.eos_token_id else 0):
        # SentencePiece (T5): pieces tokenized one by one gain ``▁`` word starts that the whole
        # prompt's tokens lack; a fast tokenizer's character offsets place them exactly.
        if getattr(tokenizer, "is_fast", False):
            return build_offset_token_map(tokenizer, prompt, length, strict)
        raise RuntimeError(
            f"{type(tokenizer).__name__} does not tokenize {prompt!r} word by word as a whole "
            f"({pos} tokens from its words, {len(full)} ids); use its fast (offset-giving) version"
        )
    if truncated:
        msg = f"prompt is longer than the tokenizer's {length} tokens; these words were cut: {', '.join(truncated)}"
        if strict:
            raise PromptTooLongError(msg)
        log.warning(msg)
    ids = tokenizer(prompt, truncation=True, max_length=length, padding="max_length")["input_ids"]
    tokens = tuple(tokenizer.convert_ids_to_tokens(ids))
    in_words = {p for span in word_tokens for p in span}
    specials = set(tokenizer.all_special_ids)  # a property that rebuilds its list on every access
    special = tuple(p for p, i in enumerate(ids) if i in specials and p not in in_words)
    return TokenMap(prompt, length, tokens, tuple(words), tuple(word_tokens), special, tuple(truncated))


def token_maps_for(tokenizer: Any, prompts: Sequence[str], repeats: int = 1, length: int | None = None,
                   strict: bool = False) -> list[TokenMap]:
    """One TokenMap per batch row, in diffusers' order (each prompt repeated ``repeats`` times);
    ``strict``: a prompt longer than ``length`` raises PromptTooLongError."""
    maps = [build_token_map(tokenizer, p, length, strict) for p in prompts]
    return [m for m in maps for _ in range(repeats)]


#: a tokenizer with fewer tokens than this has a closed vocabulary (the embedded shapes model's
#: 123): only words it holds as one whole-word token were ever seen in training.
CLOSED_VOCABULARY = 1000


def unseen_words(tokenizer: Any, words: Sequence[str]) -> list[str]:
    """The words the model never saw: any word with an unknown-token piece, and, for a
    closed-vocabulary tokenizer (fewer than CLOSED_VOCABULARY tokens), any word it does not hold
    as one whole-word token (the embedded model spells "crimson" from fragments: c ri m s on).
    Their maps exist but mean nothing; callers report them instead of mapping them silently."""
    unk = getattr(tokenizer, "unk_token", None)
    closed = len(tokenizer) < CLOSED_VOCABULARY
    out = []
    for w in dict.fromkeys(words):
        pieces = tokenizer.tokenize(w)
        if (unk is not None and unk in pieces) or (closed and len(pieces) != 1):
            out.append(w)
    return out


# --- token offsets: fast tokenizers and joint text streams (SD3, FLUX) ----------------------------------------------------------------------------------------
@_per_tokenizer
def build_offset_token_map(tokenizer: Any, prompt: str, length: int, strict: bool = False) -> TokenMap:
    """Map ``prompt``'s words onto a *fast* tokenizer's sequence by character offsets.

    For SentencePiece tokenizers (T5), where tokenizing words one by one does not reproduce the
    tokens of the whole prompt (``▁`` word-start pieces, merged punctuation). A token belongs to
    the word whose characters it covers; tokens covering only punctuation or spaces belong to no
    word. The sequence is the pipeline's: ``length`` positions, end token, padding.
    """
    full = tokenizer(prompt, truncation=False, add_special_tokens=True, return_offsets_mapping=True, verbose=False)
    fits = len(full["input_ids"]) <= length
    ids = tokenizer(prompt, truncation=True, max_length=length, padding="max_length")["input_ids"]
    specials = set(tokenizer.all_special_ids)
    spans = [(m.start(), m.end(), m.group(0)) for m in _WORD.finditer(prompt)]
    words: list[str] = []
    word_tokens: list[tuple[int, ...]] = []
    truncated: list[str] = []
    for ws, we, text in spans:
        pos = [
            p for p, ((s, e), i) in enumerate(zip(full["offset_mapping"], full["input_ids"]))
            if i not in specials and e > s and s < we and e > ws
        ]
        kept = tuple(p for p in pos if fits or p < length - 1)  # the last position holds the end token
        if len(kept) < len(pos) or not pos:
            truncated.append(text)
        if kept:
            words.append(text)
            word_tokens.append(kept)
    if truncated:
        msg = f"prompt is longer than the tokenizer's {length} tokens; these words were cut: {', '.join(truncated)}"
        if strict:
            raise PromptTooLongError(msg)
        log.warning(msg)
    in_words = {p for span in word_tokens for p in span}
    special = tuple(p for p, i in enumerate(ids) if i in specials and p not in in_words)
    tokens = tuple(tokenizer.convert_ids_to_tokens(ids))
    return TokenMap(prompt, length, tokens, tuple(words), tuple(word_tokens), special, tuple(truncated))


def empty_token_map(prompt: str, length: int) -> TokenMap:
    """A sequence part that carries no words (SD3 without T5: zeros stand in for its tokens)."""
    return TokenMap(prompt, length, ("",) * length, (), (), tuple(range(length)))


def _keys(tm: TokenMap) -> list[tuple[str, int]]:
    seen: dict[str, int] = {}
    out = []
    for w in tm.words:
        seen[w.lower()] = seen.get(w.lower(), 0) + 1
        out.append((w.lower(), seen[w.lower()]))
    return out


def combine_token_maps(parts: Sequence[tuple[TokenMap, bool]], prompt: str) -> TokenMap:
    """One TokenMap over concatenated sequences (SD3: 77 CLIP positions, then T5).

    ``parts`` are ``(map, use)`` in sequence order; each part's positions are offset by the
    lengths before it. A word's tokens are its tokens in the parts with ``use=True`` (words are
    matched across parts by text and occurrence: the second "a" is the second "a"), so its map is
    the mean over the chosen encoders' tokens. Words with no token in any chosen part are listed
    as truncated.
    """
    order: list[tuple[str, int]] = []
    text: dict[tuple[str, int], str] = {}
    positions: dict[tuple[str, int], list[int]] = {}
    truncated: list[str] = []
    offsets = [sum(tm.length for tm, _ in parts[:i]) for i in range(len(parts))]
    ranked = sorted(range(len(parts)), key=lambda i: not parts[i][1])  # word order: chosen parts first
    for i in ranked:
        tm, use = parts[i]
        for key, w, span in zip(_keys(tm), tm.words, tm.word_tokens):
            if key not in text:
                order.append(key)
                text[key] = w
                positions[key] = []
            if use:
                positions[key] += [offsets[i] + p for p in span]
        if use:
            truncated += [w for w in tm.truncated_words if w not in truncated]
    tokens = tuple(t for tm, _ in parts for t in tm.tokens)
    special = [offsets[i] + p for i, (tm, _) in enumerate(parts) for p in tm.special]
    offset = sum(tm.length for tm, _ in parts)
    keep = [k for k in order if positions[k]]
    truncated += [text[k] for k in order if not positions[k] and text[k] not in truncated]
    return TokenMap(
        prompt, offset, tokens, tuple(text[k] for k in keep), tuple(tuple(positions[k]) for k in keep),
        tuple(special), tuple(truncated),
    )
