"""Convert CLIP's BPE vocabulary (as shipped in open_clip_torch) into the vocab.json and
merges.txt that transformers' CLIPTokenizer reads. Run once; the result is package data in
bridge/data/clip_tokenizer/.

    python tools/convert_clip_vocab.py PATH/TO/bpe_simple_vocab_16e6.txt.gz
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

from bridge.data import bytes_to_unicode

OUT = Path(__file__).resolve().parents[1] / "bridge" / "data" / "clip_tokenizer"


def main(src: str) -> None:
    lines = gzip.open(src).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (OUT / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    (OUT / "special_tokens_map.json").write_text(json.dumps(special, indent=1))
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True, **special}
    (OUT / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    print(f"wrote {len(vocab)} tokens and {len(merges)} merges to {OUT}")


if __name__ == "__main__":
    main(sys.argv[1])
