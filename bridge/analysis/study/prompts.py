"""Study prompt templates: a prompt per line, each word optionally tagged with its role.

``a red/attribute circle/object above/preposition a blue/attribute square/object on a
yellow/attribute background/background`` — untagged words are ``other``. Blank lines and
lines starting with ``#`` are skipped. The roles answer the slides' question (background vs
objects vs details; attributes vs nouns); the tags are the user's, not guessed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROLES = ("background", "object", "detail", "attribute", "preposition", "other")
NOUN_ROLES = ("background", "object", "detail")


@dataclass(frozen=True)
class StudyPrompt:
    """One template: the plain prompt text and each of its words' role (prompt order)."""

    text: str
    words: tuple[str, ...]
    roles: tuple[str, ...]


def parse_line(line: str, where: str = "prompt") -> StudyPrompt:
    """``word/role`` tokens -> StudyPrompt; an unknown role is a one-line error naming it."""
    words, roles = [], []
    for token in line.split():
        word, sep, role = token.rpartition("/")
        if not sep:
            word, role = token, "other"
        role = role.casefold()
        if role not in ROLES:
            raise ValueError(f"{where}: unknown role {role!r} in {token!r}; roles are {', '.join(ROLES)}")
        if not word:
            raise ValueError(f"{where}: {token!r} has a role but no word")
        words.append(word)
        roles.append(role)
    if not words:
        raise ValueError(f"{where}: empty prompt")
    return StudyPrompt(" ".join(words), tuple(words), tuple(roles))


def read_prompts(path: str | Path) -> list[StudyPrompt]:
    """Every template of a PROMPTS file (errors name the file and line)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ValueError(f"cannot read prompts file {path}: {exc.strerror or exc}") from exc
    out = [parse_line(line, f"{path}:{i}") for i, line in enumerate(lines, 1) if line.strip() and not line.lstrip().startswith("#")]
    if not out:
        raise ValueError(f"{path}: no prompts (one per line, words tagged word/role)")
    return out


def align_roles(prompt: StudyPrompt, run_words: list[str]) -> list[str]:
    """Roles for the capture's words (the tokenizer's word split): matched in order, case-
    insensitively; a capture word with no tagged counterpart (punctuation) is ``other``."""
    roles, j = [], 0
    tagged = [w.casefold().strip(".,;:!?") for w in prompt.words]
    for w in run_words:
        key = w.casefold().strip(".,;:!?")
        k = next((i for i in range(j, len(tagged)) if tagged[i] == key), None)
        if k is None:
            roles.append("other")
        else:
            roles.append(prompt.roles[k])
            j = k + 1
    return roles
