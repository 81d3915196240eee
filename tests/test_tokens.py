"""Word ↔ token mapping and the packaged CLIP tokenizer."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.capture import PromptTooLongError, WordNotFoundError, build_token_map
from bridge.models.tiny import clip_tokenizer

TOK = clip_tokenizer()


def open_clip_tokenizer():
    """open_clip's own SimpleTokenizer, loaded from its file (its package __init__ needs torchvision)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("open_clip_torch is not installed (make test installs it)")
    folder = Path(list(spec.submodule_search_locations)[0])
    mod_spec = importlib.util.spec_from_file_location("_oc_tokenizer", folder / "tokenizer.py")
    mod = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(mod)
    except ImportError as exc:
        pytest.skip(f"open_clip's tokenizer needs {exc.name}")
    return mod.SimpleTokenizer()


def test_ids_match_real_clip():
    assert TOK("a red apple").input_ids == [49406, 320, 736, 3055, 49407]
    reference = open_clip_tokenizer()
    for prompt in ["a red apple", "A photograph of an astronaut riding a horse, trending on artstation!",
                   "a small yellow star left of a large green triangle on a purple background", "sd1.5's 4k HDR"]:
        ids = TOK(prompt).input_ids
        assert ids[1:-1] == reference.encode(prompt), prompt
        assert ids[0] == 49406 and ids[-1] == 49407


def test_words_map_to_their_subword_tokens():
    tm = build_token_map(TOK, "An astronaut, riding a horse; it's unbelievably sd15!")
    assert tm.words == ("An", "astronaut", "riding", "a", "horse", "it's", "unbelievably", "sd15")
    for word, positions in zip(tm.words, tm.word_tokens):
        assert "".join(tm.tokens[p] for p in positions).replace("</w>", "") == word.lower()
    assert 0 in tm.special and tm.tokens[0] == "<|startoftext|>"
    assert tm.index("HORSE") == 4 and tm.index("a") == 3
    with pytest.raises(WordNotFoundError, match="'astronaut', 'riding'"):
        tm.index("cat")


def test_word_map_is_mean_of_tokens():
    tm = build_token_map(TOK, "xylophonist red")
    maps = torch.rand(77, 4, 5)
    wm = tm.word_maps(maps)
    assert wm.shape == (2, 4, 5)
    assert torch.allclose(wm[0], maps[list(tm.word_tokens[0])].mean(0))
    assert len(tm.word_tokens[0]) > 1  # really sub-word


def test_long_prompt_reports_cut_words():
    prompt = " ".join(f"word{i}" for i in range(60))
    tm = build_token_map(TOK, prompt)
    assert tm.truncated_words and tm.truncated_words[-1] == "word59"
    assert all(p < 76 for span in tm.word_tokens for p in span)
    with pytest.raises(PromptTooLongError, match="word59"):
        build_token_map(TOK, prompt, strict=True)
    with pytest.raises(WordNotFoundError, match="cut"):
        tm.index("word59")


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("abcxyz019 ,.!'-éß")), min_size=0, max_size=40))
def test_alignment_covers_every_word_token(prompt):
    tm = build_token_map(TOK, prompt)
    used = sorted(p for span in tm.word_tokens for p in span)
    assert len(used) == len(set(used))  # no token belongs to two words
    ids = TOK(prompt, truncation=True, max_length=77).input_ids
    for p in used:
        assert 0 < p < len(ids) - 1


@pytest.mark.parametrize("prompt", ["a red circle, above a blue square.", "Photo: a cat's tree (in the city)!", "a  red\tcircle"])
def test_sentencepiece_tokenizer_maps_words_by_offsets(prompt):
    """T5 (FLUX's only word-bearing encoder): pieces tokenized one by one gain ``▁`` starts that the
    whole prompt lacks, so the chunk count cannot match; the offsets place every word exactly."""
    from bridge.capture.tokens import build_offset_token_map
    from bridge.models.tiny import t5_tokenizer

    tok = t5_tokenizer()
    tm = build_token_map(tok, prompt, 48)
    assert tm == build_offset_token_map(tok, prompt, 48)
    assert [w.lower() for w in tm.words] == [w.lower() for w in __import__("re").findall(r"\w+(?:'\w+)*", prompt)]
    ids = tok(prompt)["input_ids"]
    for w, span in zip(tm.words, tm.word_tokens):
        assert tok.decode([ids[p] for p in span]).replace(" ", "") in (w, w.lower()) or "<unk>" in tok.decode([ids[p] for p in span])


def test_maps_are_kept_per_tokenizer_and_rebuilt_when_tokens_are_added():
    """A repeated prompt is not tokenized again (its map, and the device matrices it holds, are
    reused run after run); a token added to the tokenizer since gives a new map."""
    tok = clip_tokenizer()
    first = build_token_map(tok, "a <cat-toy> on a table")
    assert build_token_map(tok, "a <cat-toy> on a table") is first
    assert build_token_map(tok, "a <cat-toy> on a table", 40) is not first  # another sequence length
    assert first.averaging_matrix() is first.averaging_matrix()
    tok.add_tokens(["<cat-toy>"])
    again = build_token_map(tok, "a <cat-toy> on a table")
    assert again is not first and again.tokens[2] == "<cat-toy>" != first.tokens[2]
    assert again.word_tokens[1] == again.word_tokens[2] == (2,)  # "cat" and "toy" share the added token


def test_word_maps_gather_the_mean_of_each_words_tokens():
    """Gathered by token rank (no matrix product): the averaging matrix's product to float
    rounding, one-token words bit for bit, a word without tokens zeros, the same bits every call,
    and written into ``out`` when given."""
    from bridge.capture.tokens import TokenMap

    tm = TokenMap(prompt="x", length=8, tokens=tuple("abcdefgh"), words=("one", "two", "three", "none"),
                  word_tokens=((1,), (2, 3), (4, 5, 6), ()), special=(0, 7))
    maps = torch.rand(8, 3, 5, generator=torch.Generator().manual_seed(0)) * 4 - 1
    got = tm.word_maps(maps)
    ref = (tm.averaging_matrix() @ maps.reshape(8, 15)).reshape(4, 3, 5)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
    assert torch.equal(got[0], maps[1]) and torch.equal(got[1], (maps[2] + maps[3]) / 2)
    assert torch.equal(got[2], (maps[4] + maps[5] + maps[6]) / 3) and not got[3].any()
    assert torch.equal(tm.word_maps(maps), got)
    out = torch.full((4 * 15,), float("nan"))
    assert tm.word_maps(maps, out=out).data_ptr() == out.data_ptr() and torch.equal(out.view(4, 3, 5), got)
    one = TokenMap(prompt="y", length=3, tokens=("s", "a", "e"), words=("a",), word_tokens=((1,),), special=(0, 2))
    assert torch.equal(one.word_maps(maps[:3]), maps[1:2])  # one launch: a gather, nothing divided
