"""The shapes world's vocabulary: every word a caption can contain, in one place.

Captions follow one grammar (see docs/SHAPES.md)::

    caption  := object (relation object){0,2} [ "on a" BGCOLOUR "background" ]
    object   := "a" [SIZE] COLOUR SHAPE
    relation := "above" | "below" | "left of" | "right of"

A relation links the object before it to the object after it: in
"a red circle left of a blue square above a green star" the circle is left of the square
and the square is above the star.
"""

from __future__ import annotations

#: object colours, RGB in [0, 1]; pure, well separated, so colour segmentation is exact
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 0.75, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "purple": (0.6, 0.0, 0.8),
    "orange": (1.0, 0.55, 0.0),
    "white": (1.0, 1.0, 1.0),
    "black": (0.0, 0.0, 0.0),
}
#: background colours: every object colour plus gray, the default when a caption names none
BACKGROUNDS: dict[str, tuple[float, float, float]] = {**COLOURS, "gray": (0.5, 0.5, 0.5)}
DEFAULT_BACKGROUND = "gray"
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart", "cross")
SIZES: tuple[str, ...] = ("small", "large")
#: relation name -> the words that say it
RELATIONS: dict[str, tuple[str, ...]] = {
    "above": ("above",),
    "below": ("below",),
    "left of": ("left", "of"),
    "right of": ("right", "of"),
}
FUNCTION_WORDS: tuple[str, ...] = ("a", "on", "background")

#: every word of the world, in a fixed order
WORDS: tuple[str, ...] = tuple(
    dict.fromkeys(
        ["a", *SIZES, *BACKGROUNDS, *SHAPES, "above", "below", "left", "right", "of", "on", "background"]
    )
)

#: colour-shape pairs never shown together in training; evaluation prompts use them
HELD_OUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("red", "star"),
    ("blue", "triangle"),
    ("green", "circle"),
    ("yellow", "square"),
    ("purple", "heart"),
    ("orange", "cross"),
    ("white", "triangle"),
    ("black", "star"),
)

#: token sequence length of the tokenizer and text encoder (the longest caption is 21 tokens)
MAX_LENGTH = 32
