"""A small CLIP-format tokenizer for the shapes vocabulary.

It is cut out of the full CLIP BPE (``bridge/data/clip_tokenizer``): for every vocabulary
word we replay CLIP's byte-level BPE and keep exactly the merges it applies, in CLIP's rank
order, and every token those merges produce. BPE always applies the lowest-ranked merge
present, and each merge CLIP applies to one of our words is kept, so the small tokenizer
segments each vocabulary word exactly as CLIP does: one token ``word</w>``. Text outside
the vocabulary falls back to fragments and ``<|unk|>`` (never an error).

The saved folder (vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json)
is read by ``transformers.CLIPTokenizer.from_pretrained``.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from bridge.data import bytes_to_unicode

from .vocab import MAX_LENGTH, WORDS

CLIP_TOKENIZER_DIR = Path(__file__).resolve().parents[2] / "data" / "clip_tokenizer"
BOS, EOS, UNK = "<|startoftext|>", "<|endoftext|>", "<|unk|>"


def _clip_merges() -> list[tuple[str, str]]:
    lines = (CLIP_TOKENIZER_DIR / "merges.txt").read_text(encoding="utf-8").splitlines()
    return [tuple(line.split()) for line in lines[1:] if line.strip()]  # type: ignore[misc]


def _bpe_trace(word: str, ranks: dict[tuple[str, str], int]) -> tuple[list[str], list[tuple[str, str]]]:
    """Replay CLIP's BPE on one word; return (final tokens, merges applied)."""
    b2u = bytes_to_unicode()
    symbols = [b2u[b] for b in word.encode("utf-8")]
    symbols[-1] += "</w>"
    used: list[tuple[str, str]] = []
    while len(symbols) > 1:
        pairs = [(symbols[i], symbols[i + 1]) for i in range(len(symbols) - 1)]
        best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
        if best not in ranks:
            break
        used.append(best)
        merged, i = [], 0
        while i < len(symbols):
            if i < len(symbols) - 1 and (symbols[i], symbols[i + 1]) == best:
                merged.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols, used


def build_vocab(words: tuple[str, ...] = WORDS) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Return (vocab token -> id, merges in CLIP rank order) for ``words``."""
    merges = _clip_merges()
    ranks = {m: i for i, m in enumerate(merges)}
    used: set[tuple[str, str]] = set()
    base: set[str] = set()
    b2u = bytes_to_unicode()
    for w in words:
        final, applied = _bpe_trace(w, ranks)
        if final != [w + "</w>"]:
            raise ValueError(f"CLIP does not segment {w!r} into one token: {final}")
        used.update(applied)
        chars = [b2u[b] for b in w.encode("utf-8")]
        base.update(chars[:-1])
        base.add(chars[-1] + "</w>")
    kept = sorted(used, key=ranks.__getitem__)
    tokens: list[str] = sorted(base)
    for a, b in kept:
        for t in (a, b, a + b):
            if t not in tokens:
                tokens.append(t)
    tokens += [BOS, EOS, UNK]
    return {t: i for i, t in enumerate(tokens)}, kept


def save_tokenizer(out_dir: str | Path) -> Path:
    """Write the small tokenizer to ``out_dir`` in CLIPTokenizer's format."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab()
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "pad_token": EOS}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=1) + "\n")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_LENGTH, "do_lower_case": True, **special}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=1) + "\n")
    return out


@lru_cache(maxsize=None)
def word_ids(tokenizer_dir: str | None = None) -> dict[str, int]:
    """Vocabulary word -> its single token id, plus ``<bos>``/``<eos>``/``<pad>``."""
    if tokenizer_dir is None:
        vocab, _ = build_vocab()
    else:
        vocab = json.loads((Path(tokenizer_dir) / "vocab.json").read_text(encoding="utf-8"))
    ids = {w: vocab[w + "</w>"] for w in WORDS}
    ids.update({"<bos>": vocab[BOS], "<eos>": vocab[EOS], "<pad>": vocab[EOS]})
    return ids
