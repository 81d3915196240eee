"""Prompt handler: the objects a prompt names (noun phrases with their attributes), offline.

Why lemminflect: it ships its lexicon inside the wheel (the NIH SPECIALIST Lexicon's words with
their parts of speech and lemmas), so it answers "can this word be a noun? an adjective? what is
its singular?" with no model download and no network, deterministically. Closed-class words
(articles, numerals, prepositions, conjunctions, pronouns) are listed here: they are a fixed set
of English. A word that neither knows is *reported* in ``Parsed.unknown``, never guessed.

Chunking rule (a noun phrase = optional count, attributes, a head noun):
  - a run of content words that can be adjectives or nouns, not broken by a closed-class word,
    is one phrase; its head is its last word that can be a noun, the words before are attributes;
  - after a noun, a word that can also be a verb is read as one (and ends the phrase) when it is a
    participle ("a cat *sitting*"), a third-person verb before a preposition or article ("a man
    *walks* down"), or any verb form before an article ("buildings *line* the street");
  - punctuation ends a phrase ("a dog and a cat, oil painting");
  - "two red apples" gives count 2; a plural head with no numeral gives count ``None`` (several);
    "a"/"an"/"one" or a singular head gives count 1;
  - scene words (background, photo, ...) and words that can only be verbs or adverbs are not objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bridge.capture.tokens import WORD_PATTERN
import re

_TOKEN = re.compile(rf"({WORD_PATTERN.pattern})|[,;:.!?()]")

ARTICLES = frozenset({"a", "an", "the", "this", "that", "these", "those", "some", "many", "several", "few",
                      "every", "each", "its", "their", "his", "her", "our", "my", "your", "no", "any", "all"})
NUMERALS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
            "ten": 10, "eleven": 11, "twelve": 12, "pair": 2, "couple": 2}
FUNCTION_WORDS = frozenset({
    # prepositions
    "on", "in", "at", "of", "by", "with", "without", "beside", "besides", "between", "among", "near", "under",
    "over", "above", "below", "behind", "beneath", "underneath", "inside", "outside", "into", "onto", "across",
    "along", "around", "against", "through", "toward", "towards", "from", "to", "for", "upon", "within", "atop",
    "next", "before", "after", "during", "beyond", "past", "off", "up", "down", "like", "as", "than",
    "left", "right", "top", "front", "back", "middle", "center", "centre", "side",
    # conjunctions, pronouns, copulas
    "and", "or", "but", "nor", "while", "where", "which", "who", "whose", "it", "they", "them", "he", "she",
    "is", "are", "was", "were", "be", "been", "being", "has", "have", "had", "there", "here", "very", "so",
})
#: relation phrases (several words) read as one function word, longest first
RELATIONS = (("in", "front", "of"), ("on", "top", "of"), ("left", "of"), ("right", "of"), ("next", "to"),
             ("to", "the", "left", "of"), ("to", "the", "right", "of"))
#: nouns that name the picture or its setting, not an object in it
SCENE_WORDS = frozenset({"background", "foreground", "scene", "image", "picture", "photo", "photograph",
                         "painting", "drawing", "illustration", "render", "style", "view", "shot"})



@dataclass(frozen=True)
class PromptObject:
    """One object named by the prompt: ``"red circle"`` = attributes ``("red",)`` + noun ``"circle"``.

    word_indices: positions (in :func:`words` of the prompt) of the noun then the attributes —
    the maps that describe it. count: how many the prompt asks for (None = several, unknown).
    """

    name: str
    noun: str
    lemma: str
    attributes: tuple[str, ...]
    word_indices: tuple[int, ...]
    count: int | None = 1

    @property
    def category(self) -> str:
        """The dataset category: attributes + singular noun ("red apples" -> "red apple")."""
        return " ".join((*self.attributes, self.lemma))


@dataclass
class Parsed:
    """What the handler made of a prompt."""

    prompt: str
    words: list[str]
    cleaned: str
    objects: list[PromptObject] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    scene: list[str] = field(default_factory=list)


def words(prompt: str) -> list[str]:
    """The prompt's words, lower-cased (punctuation dropped)."""
    return [w.lower() for w in WORD_PATTERN.findall(prompt)]


def _lemmas(word: str) -> dict[str, tuple[str, ...]]:
    from lemminflect import getAllLemmas  # noqa: PLC0415 (the ``objects`` extra)

    return dict(getAllLemmas(word))


def _breaks(prompt: str) -> set[int]:
    """Indices of words directly followed by punctuation (``,;:.!?()``): "a dog and a cat, oil painting"."""
    out, n = set(), -1
    for m in _TOKEN.finditer(prompt):
        if m.group(1):
            n += 1
        elif n >= 0:
            out.add(n)
    return out


def _verb_after_noun(ws: list[str], i: int, pos: dict[str, tuple[str, ...]], kinds: list[str],
                     lex: list[dict[str, tuple[str, ...]]], breaks: set[int]) -> bool:
    """Whether a word that can be a noun reads as a verb here, right after a noun: a participle
    ("a cat *sitting*"), a third-person verb after a singular noun ("a man *walks*"), or a base
    verb after a plural noun before an article ("buildings *line* the street")."""
    if "VERB" not in pos or not kinds or kinds[-1] not in ("noun", "nounadj") or i - 1 in breaks:
        return False
    w, prev = ws[i], ws[i - 1]
    verb_lemma = pos["VERB"][0]
    if verb_lemma != w and (w.endswith("ing") or w.endswith("ed")):
        return True
    nxt = ws[i + 1] if i + 1 < len(ws) else ""
    prev_singular = lex[i - 1].get("NOUN", (prev,))[0] == prev
    if verb_lemma != w and w.endswith("s") and prev_singular and (nxt in ARTICLES or nxt in FUNCTION_WORDS):
        return True
    return nxt in ARTICLES


def parse_prompt(prompt: str) -> Parsed:
    """Objects of ``prompt`` with attributes and counts; unclassifiable words in ``unknown``."""
    ws = words(prompt)
    breaks = _breaks(prompt)  # word positions a punctuation mark follows: phrases end there
    out = Parsed(prompt=prompt, words=ws, cleaned=" ".join(ws))
    kinds: list[str] = []  # per word: func | num | adj | noun | nounadj | verb | other | unknown | scene
    lex: list[dict[str, tuple[str, ...]]] = []
    i = 0
    while i < len(ws):
        rel = next((r for r in RELATIONS if tuple(ws[i:i + len(r)]) == r), None)
        if rel:
            kinds += ["func"] * len(rel)
            lex += [{}] * len(rel)
            i += len(rel)
            continue
        w = ws[i]
        pos = {} if (w in ARTICLES or w in FUNCTION_WORDS or w in NUMERALS or w.isdigit()) else _lemmas(w)
        lex.append(pos)
        if w in NUMERALS or w.isdigit():
            kinds.append("num")
        elif w in ARTICLES or w in FUNCTION_WORDS:
            kinds.append("func")
        elif not pos:
            kinds.append("unknown")
            out.unknown.append(w)
        elif w in SCENE_WORDS:
            kinds.append("scene")
        elif "NOUN" in pos:
            kinds.append("verb" if _verb_after_noun(ws, i, pos, kinds, lex, breaks) else ("nounadj" if "ADJ" in pos else "noun"))
        elif "ADJ" in pos:
            kinds.append("adj")
        elif "VERB" in pos:  # participles used as attributes ("lit", "painted") stay verbs: not objects
            kinds.append("verb")
        else:
            kinds.append("other")
        i += 1

    i, count = 0, None
    while i < len(ws):
        k = kinds[i]
        if k == "num":
            count = NUMERALS.get(ws[i], int(ws[i]) if ws[i].isdigit() else None)
            i += 1
            continue
        if k in ("adj", "noun", "nounadj", "scene"):
            j = i + 1
            while j < len(ws) and kinds[j] in ("adj", "noun", "nounadj", "scene") and j - 1 not in breaks:
                j += 1
            nouns = [t for t in range(i, j) if kinds[t] in ("noun", "nounadj", "scene")]
            if nouns and kinds[nouns[-1]] == "scene":  # "a yellow background": the setting, not an object
                out.scene.append(" ".join(ws[i:nouns[-1] + 1]))
            elif nouns:
                head = nouns[-1]
                noun = ws[head]
                lemma = lex[head].get("NOUN", (noun,))[0]
                plural = lemma != noun
                article = i > 0 and ws[i - 1] in ("a", "an", "one")
                n = count if count is not None else (None if plural and not article else 1)
                attrs = tuple(ws[t] for t in range(i, head))
                out.objects.append(PromptObject(" ".join(ws[i:head + 1]), noun, lemma, attrs,
                                                (head, *range(i, head)), n))
            i, count = j, None
            continue
        if k != "func":
            count = None
        i += 1
    return out
