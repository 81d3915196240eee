"""What to generate, and the request schema: every field a request may carry, its type and range,
stated once.

Every door derives from ``GENERATE_FIELDS``: the JSON validator (``bridge.transport.control``),
the OSC staging addresses (``osc_parameters``), the CLI options (``bridge.commands.common``) and
TouchDesigner's request builder (``stepx_td.control``); the runner takes the ``GenerateParams``
they produce. Its own module so the runner does not import the control parser. Standard library
only: ``td_components/stepx_td/request.py`` is a byte-identical copy (TD's Python has numpy and
pyzmq, nothing else), checked by tests/td/test_td_sources.py.

Validation never trusts a type: booleans are not numbers, integers of any size are compared
exactly (no float conversion that could overflow), floats must be finite, and every string and
list has a length limit, so no value a client can send raises anything but ``SchemaError``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields as dc_fields, replace
from typing import Any, Dict, List, Optional, Tuple, Union

#: the largest request accepted, in bytes (ZeroMQ message or OSC ``/stepx/control`` string).
MAX_REQUEST_BYTES = 256 * 1024
MAX_ID_CHARS = 100
MAX_PLAYLIST = 1000
MAX_TOKEN_BYTES = 1024
#: defaults for a request that leaves a field out (``stepx serve`` replaces them with its own flags).
DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 7.5


class SchemaError(ValueError):
    """A request field is malformed or out of range; the message names the field and the rule."""


@dataclass(frozen=True)
class Field:
    """One request field. ``kind``: ``text``, ``int``, ``float``, ``words`` (list of strings),
    ``pair`` (two floats), ``floats`` (list of floats). ``lo``/``hi`` bound numbers (and list
    items for ``floats``), ``max_len`` bounds string length (``text``, each word) or list length."""

    name: str
    kind: str
    help: str
    lo: Optional[float] = None
    hi: Optional[float] = None
    max_len: Optional[int] = None
    max_items: Optional[int] = None
    multiple_of: Optional[int] = None
    required: bool = False

    @property
    def osc_tags(self) -> str:
        """The OSC type tags this field is staged with (``…`` = one or more of the tag)."""
        return {"text": "s", "int": "i", "float": "f", "words": "s…", "pair": "ff", "floats": "f…"}[self.kind]

    def rule(self) -> str:
        """The range in words, for errors and docs."""
        if self.kind in ("int", "float"):
            extra = f", a multiple of {self.multiple_of}" if self.multiple_of else ""
            return f"{'an integer' if self.kind == 'int' else 'a number'} in [{_n(self.lo)}, {_n(self.hi)}]{extra}"
        if self.kind == "text":
            return f"{'a non-empty' if self.required else 'a'} string of at most {self.max_len} characters"
        if self.kind == "words":
            return f"a list of at most {self.max_items} words (non-empty strings of <= {self.max_len} characters)"
        if self.kind == "pair":
            return "[a, b] with 0 < a < b < 1"
        return f"a list of 1..{self.max_items} finite numbers >= {_n(self.lo)}"

    def check(self, value: Any) -> Any:
        """The validated, normalised value, or SchemaError naming the field and its rule."""
        try:
            return _CHECKS[self.kind](self, value)
        except SchemaError:
            raise
        except (TypeError, ValueError, OverflowError, RecursionError):  # a checker gap must still be a clear error
            raise SchemaError(f"'{self.name}' must be {self.rule()}") from None


def _n(x: Optional[float]) -> str:
    return "" if x is None else (str(int(x)) if float(x).is_integer() else str(x))


def _type(v: Any) -> str:
    return "boolean" if isinstance(v, bool) else "null" if v is None else type(v).__name__


def _check_text(f: Field, v: Any) -> str:
    if not isinstance(v, str):
        raise SchemaError(f"'{f.name}' must be a string, got {_type(v)}")
    if f.required and not v.strip():
        raise SchemaError(f"'{f.name}' must not be empty")
    if f.max_len is not None and len(v) > f.max_len:
        raise SchemaError(f"'{f.name}' is {len(v)} characters; at most {f.max_len}")
    _check_encodable(f.name, v)
    return v


def _check_encodable(name: str, v: str) -> None:
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise SchemaError(f"'{name}' is not valid Unicode (it holds a lone surrogate)") from None


def _check_number(f: Field, v: Any) -> Union[int, float]:
    integer = f.kind == "int"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise SchemaError(f"'{f.name}' must be {f.rule()}, got {_type(v)}")
    if isinstance(v, float):
        if not math.isfinite(v):
            raise SchemaError(f"'{f.name}' must be {f.rule()}, got {v!r}")
        if integer:
            if not v.is_integer():
                raise SchemaError(f"'{f.name}' must be {f.rule()}, got {v!r}")
    # ints compare exactly against the bounds, whatever their size (no float(), no OverflowError)
    if (f.lo is not None and v < f.lo) or (f.hi is not None and v > f.hi):
        shown = repr(v) if not isinstance(v, int) or abs(v) < 10**30 else f"a {len(str(abs(v)))}-digit number" if abs(v) < 10**4000 else "a huge number"
        raise SchemaError(f"'{f.name}' = {shown} is out of range; expected {f.rule()}")
    out = int(v) if integer else float(v)
    if f.multiple_of and out % f.multiple_of:
        raise SchemaError(f"'{f.name}' = {out} must be a multiple of {f.multiple_of}")
    return out


def _check_words(f: Field, v: Any) -> List[str]:
    if isinstance(v, str):
        v = [v]
    if (not isinstance(v, list) or (f.max_items is not None and len(v) > f.max_items)
            or not all(isinstance(w, str) and w.strip() and len(w) <= (f.max_len or 100) for w in v)):
        raise SchemaError(f"'{f.name}' must be {f.rule()}")
    for w in v:
        _check_encodable(f.name, w)
    return [w.strip() for w in v]


def _finite(x: Any) -> bool:
    return not isinstance(x, bool) and isinstance(x, (int, float)) and (isinstance(x, int) or math.isfinite(x))


def _check_pair(f: Field, v: Any) -> Tuple[float, float]:
    if (not isinstance(v, (list, tuple)) or len(v) != 2 or not all(_finite(x) for x in v)
            or not 0 < v[0] < v[1] < 1):
        raise SchemaError(f"'{f.name}' must be {f.rule()}, got {_short(v)}")
    return (float(v[0]), float(v[1]))


def _check_floats(f: Field, v: Any) -> List[float]:
    if (not isinstance(v, (list, tuple)) or not 0 < len(v) <= (f.max_items or 0)
            or not all(_finite(x) and x >= (f.lo or 0) and abs(x) < 1e300 for x in v)):
        raise SchemaError(f"'{f.name}' must be {f.rule()}")
    return [float(x) for x in v]


def _short(v: Any) -> str:
    s = repr(v) if not isinstance(v, (list, tuple)) or len(v) < 8 else f"a list of {len(v)} items"
    return s if len(s) <= 80 else s[:77] + "..."


_CHECKS = {"text": _check_text, "int": _check_number, "float": _check_number, "words": _check_words,
           "pair": _check_pair, "floats": _check_floats}

#: every field of a generation, in order; the one statement of names, types and ranges.
GENERATE_FIELDS: Tuple[Field, ...] = (
    Field("prompt", "text", "the text prompt", max_len=2000, required=True),
    Field("negative_prompt", "text", "negative prompt", max_len=2000),
    Field("seed", "int", "random seed (absent = random)", lo=0, hi=2**32 - 1),
    Field("steps", "int", "denoising steps", lo=1, hi=500),
    Field("guidance", "float", "classifier-free guidance scale; 1 = off", lo=0.0, hi=50.0),
    Field("focus", "words", "focus words (words of the prompt; 'a#2' = the second 'a')", max_len=100, max_items=77),
    Field("phase_boundaries", "pair", "phase boundaries as fractions of the run"),
    Field("head_weights", "floats", "one weight per captured cross-attention head, in layer order (not with concept)",
          lo=0.0, max_items=4096),
    Field("concept", "text", "a concept name loaded with serve --concepts (not with head_weights)", max_len=100),
    Field("width", "int", "image width in pixels", lo=64, hi=4096, multiple_of=8),
    Field("height", "int", "image height in pixels", lo=64, hi=4096, multiple_of=8),
)
FIELDS: Dict[str, Field] = {f.name: f for f in GENERATE_FIELDS}
FIELD_NAMES: Tuple[str, ...] = tuple(FIELDS)


@dataclass
class GenerateParams:
    """One validated generation (``parse_generate``); ranges are in ``GENERATE_FIELDS``."""

    prompt: str
    negative_prompt: str = ""
    seed: Optional[int] = None
    steps: int = DEFAULT_STEPS
    guidance: float = DEFAULT_GUIDANCE
    focus: List[str] = field(default_factory=list)
    phase_boundaries: Optional[Tuple[float, float]] = None
    head_weights: Union[List[float], Dict[str, List[float]], None] = None  # flat over (layer, head), or per layer
    concept: Optional[str] = None
    width: Optional[int] = None
    height: Optional[int] = None


assert tuple(f.name for f in dc_fields(GenerateParams)) == FIELD_NAMES  # one list of fields, two views


def pipeline_kwargs(prompt: str, steps: int, guidance: float, width: Optional[int] = None,
                    height: Optional[int] = None, negative_prompt: str = "") -> Dict[str, Any]:
    """The diffusers pipeline call for one generation (the generator and output type are the
    caller's): only what the request sets, so the pipeline's own defaults stay its own."""
    kw: Dict[str, Any] = dict(prompt=prompt, num_inference_steps=steps, guidance_scale=guidance)
    if width:
        kw["width"] = width
    if height:
        kw["height"] = height
    if negative_prompt:
        kw["negative_prompt"] = negative_prompt
    return kw

def check_fields(d: Any, allowed_extra: Tuple[str, ...] = ()) -> Dict[str, Any]:
    """Validate the generation fields present in ``d`` (a dict); return them normalised.

    Unknown keys (other than ``allowed_extra``) are an error; ``None`` means "not given"."""
    if not isinstance(d, dict):
        raise SchemaError(f"generation parameters must be a JSON object, got {_type(d)}")
    unknown = [k for k in d if k not in FIELDS and k not in allowed_extra]
    if unknown:
        shown = sorted(_short(k) for k in unknown)[:5]
        raise SchemaError(f"unknown field(s) {shown}; allowed: {', '.join(FIELD_NAMES)}")
    out = {k: FIELDS[k].check(v) for k, v in d.items() if k in FIELDS and v is not None}
    if out.get("head_weights") is not None and out.get("concept") is not None:
        raise SchemaError("give either 'head_weights' or 'concept', not both")
    return out


def parse_generate(d: Any, base: Optional[GenerateParams] = None, allowed_extra: Tuple[str, ...] = ()) -> GenerateParams:
    """A GenerateParams from the fields in ``d``; fields left out come from ``base`` (the server's
    defaults, e.g. ``stepx serve --steps``). A request naming ``concept`` or ``head_weights``
    replaces both of the base's."""
    if isinstance(d, dict) and d.get("prompt") is None:  # the one required field is named first
        raise SchemaError("'prompt' is required (a non-empty string)")
    given = check_fields(d, allowed_extra)
    base = base or GenerateParams(prompt="")
    if "concept" in given or "head_weights" in given:
        given = {"concept": None, "head_weights": None, **given}
    return replace(base, **given)


def check_token(got: Any, token: Optional[str]) -> None:
    """SchemaError unless ``got`` is the shared ``token`` (when one is set): compared in constant
    time on bytes, and any string (a lone surrogate included) or non-string is a clean refusal."""
    import hmac

    if token is None:
        return
    if isinstance(got, str):
        got_b = got.encode("utf-8", "surrogatepass")
    elif isinstance(got, bytes):
        got_b = got
    else:
        got_b = b""
    if not hmac.compare_digest(got_b[:MAX_TOKEN_BYTES], token.encode("utf-8", "surrogatepass")) or not got_b:
        raise SchemaError("missing or wrong 'token'")


def generate_request(prompt: str, token: Optional[str] = None, **params: Any) -> Dict[str, Any]:
    """A validated ``generate`` request dict (for clients): only the fields that are given
    (``None`` = leave it to the server), checked by the same rules the server applies."""
    fields_ = check_fields({"prompt": prompt, **params})
    if "prompt" not in fields_:
        raise SchemaError("'prompt' is required (a non-empty string)")
    req: Dict[str, Any] = {"cmd": "generate"}
    for k, v in fields_.items():
        req[k] = list(v) if isinstance(v, tuple) else v
    if token:
        req["token"] = token
    return req


def osc_parameters() -> Dict[str, str]:
    """OSC staging address (``/stepx/<name>``) → type tags, one per generation field."""
    return {f"/stepx/{f.name}": f.osc_tags for f in GENERATE_FIELDS}

