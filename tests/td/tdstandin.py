"""A strict stand-in for TouchDesigner's ``td`` module, for the builder and extension tests.

What it knows, per operator type the StepX builder creates: ONLY the parameter names and
sequence blocks that Derivative's current documentation lists, each table cited to its page
(``PARS`` below). What it does like TouchDesigner:

* ``op.par.<name>`` of an unknown name raises :class:`tdAttributeError` (an ``AttributeError``),
  reading and writing alike; ``op.par['name']`` returns None (the ParCollection rule).
* Sequence parameters (``vec0name``...) exist only for blocks below ``op.seq.<seq>.numBlocks``;
  a new sequence has one block (``vec1name`` does not exist until ``numBlocks >= 2``).
* Custom parameter names must be a capital letter then lower-case letters / digits.
* ``install()`` puts the td names (``op``, ``ops``, ``parent``, ``me``, ``mod``, ``absTime``,
  ``project``, ``tdu``, the OP type classes, ``ParMode``...) into ``builtins``, the way the
  textport sees them (they are NOT module globals), and into ``stepx_td.tdseam``.

Beyond names, :func:`check_network` cooks nothing but checks what a network needs to run,
the way a TouchDesigner user would find it broken: every uniform a GLSL operator's shader
declares is bound on its Vectors / Samplers page with a value; a Render Select TOP's colour
buffer exists; a mip-mapped sampler does not read a 32-bit float TOP (TouchDesigner cannot
filter those); Parameter Execute DATs that watch custom parameters have ``custom`` on; feedback
loops are pulled by something downstream of the piece's output; state buffers are not seeded
from one monochrome noise. Each problem is a one-line string naming the operator.

It also runs a built network the way TouchDesigner's frame loop would drive the Python side:
:func:`frame_start` calls the Execute DATs, a COMP exposes its promoted extension's members,
Script TOP / CHOP ``cook()`` runs the callbacks DAT's ``onCook`` (``copyNumpyArray`` checks
dtype and shape), and ``Par.eval()`` evaluates an expression in its operator's context.

Mock only what cannot run here (TouchDesigner itself): nothing here renders or cooks images.
"""

from __future__ import annotations

import builtins
import re
import types
from collections.abc import Iterable
from typing import Any

DOC = "https://derivative.ca/UserGuide/"

# ---------------------------------------------------------------------------------------------
# Parameter names, per operator type, from Derivative's documentation (page cited per table).
# ---------------------------------------------------------------------------------------------
#: TOP Common page (e.g. Render Select TOP, "Parameters - Common Page").
TOP_COMMON = ("outputresolution", "resolutionw", "resolutionh", "resmult", "outputaspect", "aspect1", "aspect2",
              "armenu", "inputfiltertype", "fillmode", "filtertype", "npasses", "chanmask", "format")
#: COMP Extensions page, https://derivative.ca/UserGuide/COMP_Extensions_Page (ext sequence).
COMP_EXT = ("reinitextensions", "initextonstart")
COMP_EXT_SEQ = {"ext": ("object", "name", "promote")}
#: COMP Common page (parent/op shortcuts), e.g. https://derivative.ca/UserGuide/Base_COMP
COMP_COMMON = ("parentshortcut", "opshortcut", "iopshortcut", "relpath", "externaltox", "reloadtox",
               "reloadcustom", "reloadbuiltin", "savebackup", "subcompname", "enablecloning", "clone")
#: CHOP Common page, e.g. https://derivative.ca/UserGuide/Script_CHOP
CHOP_COMMON = ("timeslice", "scope", "srselect", "exportmethod", "autoexportroot", "exporttable")
#: DAT File page / Common, e.g. https://derivative.ca/UserGuide/Text_DAT
DAT_FILE = ("file", "syncfile", "loadonstart", "loadonstartpulse", "write", "writepulse", "language",
            "extension", "customext", "wordwrap")
#: Vectors + Samplers pages of GLSL TOP / GLSL MAT / GLSL POP (https://derivative.ca/UserGuide/GLSL_TOP)
GLSL_SEQ = {"vec": ("name", "valuex", "valuey", "valuez", "valuew"),
            "sampler": ("name", "top", "extendu", "extendv", "extendw", "filter", "anisotropy")}

#: MAT Common page (blending, depth), https://derivative.ca/UserGuide/MAT_Generator_Common_Page
MAT_COMMON = ("blending", "blendop", "srcblend", "destblend", "separatealphafunc", "blendopa", "srcblenda",
              "destblenda", "depthtest", "depthfunc", "depthwriting", "alphatest", "wireframe", "cullface",
              "polygonoffset")
_BLEND = ("zero", "dcol", "omdcol", "sa", "omsa", "da", "omda", "sas", "one", "scol", "omscol",
          "constantcol", "omconstantcol", "constanta", "omconstanta")

#: Menu values, where a page lists them: setting any other value raises tdError.
MENUS: dict[tuple[str, str], tuple[str, ...]] = {
    ("glslMAT", "srcblend"): _BLEND,  # MAT_Generator_Common_Page
    ("glslMAT", "destblend"): _BLEND,
    ("geometryCOMP", "instancecountmode"): ("manual", "oplength"),  # COMP_Instance_Page
    ("glslPOP", "attrclass"): ("point", "vertex", "primitive"),  # GLSL_POP
    ("glslTOP", "mode"): ("vertexpixel", "compute"),  # GLSL_TOP
    ("renderselectTOP", "colorbufindex"): (),  # (an integer: checked against numcolorbufs by check_network)
}

PARS: dict[str, dict[str, Any]] = {
    "baseCOMP": {"doc": DOC + "Base_COMP", "pars": COMP_EXT + COMP_COMMON, "seq": COMP_EXT_SEQ},
    "containerCOMP": {"doc": DOC + "Container_COMP", "pars": COMP_EXT + COMP_COMMON + ("w", "h"), "seq": COMP_EXT_SEQ},
    "textDAT": {"doc": DOC + "Text_DAT", "pars": DAT_FILE + ("edit",), "seq": {}},
    "executeDAT": {"doc": DOC + "Execute_DAT",
                   "pars": ("active", "executeloc", "fromop", "start", "create", "exit", "framestart", "frameend",
                            "playstatechange", "devicechange", "projectpresave", "projectpostsave", "edit") + DAT_FILE,
                   "seq": {}},
    "parameterexecuteDAT": {"doc": DOC + "Parameter_Execute_DAT",
                            "pars": ("active", "executeloc", "fromop", "op", "pars", "valuechange", "valueschanged",
                                     "onpulse", "expressionchange", "exportchange", "enablechange", "modechange",
                                     "custom", "builtin", "edit") + DAT_FILE,
                            "seq": {}},
    "scriptTOP": {"doc": DOC + "Script_TOP", "pars": ("callbacks", "setuppars") + TOP_COMMON, "seq": {}},
    "scriptCHOP": {"doc": DOC + "Script_CHOP", "pars": ("callbacks", "setuppars") + CHOP_COMMON, "seq": {}},
    "outTOP": {"doc": DOC + "Out_TOP", "pars": ("label", "connectorder") + TOP_COMMON, "seq": {}},
    "outCHOP": {"doc": DOC + "Out_CHOP", "pars": ("label", "connectorder") + CHOP_COMMON, "seq": {}},
    "selectTOP": {"doc": DOC + "Select_TOP", "pars": ("top",) + TOP_COMMON, "seq": {}},
    "nullTOP": {"doc": DOC + "Null_TOP", "pars": ("cooktype", "checkforvalidrange") + TOP_COMMON, "seq": {}},
    "noiseTOP": {"doc": DOC + "Noise_TOP",
                 "pars": ("type", "seed", "period", "harmon", "spread", "gain", "rough", "exp", "amp", "offset",
                          "mono", "aspectcorrect", "tx", "ty", "tz", "rx", "ry", "rz", "sx", "sy", "sz") + TOP_COMMON,
                 "seq": {}, "defaults": {"mono": True}},
    "feedbackTOP": {"doc": DOC + "Feedback_TOP", "pars": ("top", "reset", "resetpulse") + TOP_COMMON, "seq": {}},
    "renderselectTOP": {"doc": DOC + "Render_Select_TOP",
                        "pars": ("top", "colorbufindex", "cameraindex", "peellayerindex", "imageoutput") + TOP_COMMON,
                        "seq": {}},
    "glslTOP": {"doc": DOC + "GLSL_TOP",
                "pars": ("glslversion", "mode", "predat", "vertexdat", "pixeldat", "computedat", "loaduniformnames",
                         "outputaccess", "numcolorbufs", "clearoutputs", "dispatchsizex", "dispatchsizey",
                         "dispatchsizez") + TOP_COMMON,
                "seq": GLSL_SEQ},
    "renderTOP": {"doc": DOC + "Render_TOP",
                  "pars": ("camera", "geometry", "lights", "multicamerahint", "cullface", "overdraw", "transparency",
                           "drawdepthonly", "antialias", "rendermode", "bgcolorr", "bgcolorg", "bgcolorb", "bgcolora",
                           "numcolorbufs", "depthpeel") + TOP_COMMON,
                  "seq": {}},
    "cameraCOMP": {"doc": DOC + "Camera_COMP",
                   "pars": ("tx", "ty", "tz", "rx", "ry", "rz", "xord", "rord", "projection", "fov",
                            "viewanglemethod", "near", "far", "lookat") + COMP_EXT + COMP_COMMON,
                   "seq": COMP_EXT_SEQ},
    # Instance page: https://derivative.ca/UserGuide/COMP_Instance_Page
    "geometryCOMP": {"doc": DOC + "Geometry_COMP",
                     "pars": ("tx", "ty", "tz", "rx", "ry", "rz", "material", "render", "drawpriority", "instancing",
                              "instancecountmode", "numinstances", "instanceop", "instancetx", "instancety",
                              "instancetz") + COMP_EXT + COMP_COMMON,
                     "seq": COMP_EXT_SEQ},
    "rectangleSOP": {"doc": DOC + "Rectangle_SOP", "pars": ("orient", "sizex", "sizey", "tx", "ty", "tz", "texture"),
                     "seq": {}},
    "glslMAT": {"doc": DOC + "GLSL_MAT",
                "pars": ("glslversion", "predat", "vdat", "pdat", "gdat", "loaduniformnames") + MAT_COMMON,
                "seq": GLSL_SEQ},
    # POPs, TouchDesigner 2025 builds: https://derivative.ca/UserGuide/GLSL_POP (GLSL page),
    # its Vectors / Samplers pages as the GLSL TOP's, Create Attributes page (attr sequence).
    "glslPOP": {"doc": DOC + "GLSL_POP",
                "pars": ("computedat", "attrclass", "numthreadsmode", "threadsinput", "numelems", "outputattrs",
                         "initoutputattrs", "outputaccess"),
                "seq": {**GLSL_SEQ, "attr": ("name", "type", "numcomps")}},
    "gridPOP": {"doc": DOC + "Grid_POP", "pars": ("rows", "cols", "sizex", "sizey", "orient", "surftype"), "seq": {}},
    "feedbackPOP": {"doc": DOC + "Feedback_POP", "pars": ("pop", "reset", "resetpulse"), "seq": {}},
    "trailPOP": {"doc": DOC + "Trail_POP", "pars": ("trailattrs", "length", "connect"), "seq": {}},
    "nullPOP": {"doc": DOC + "Null_POP", "pars": ("cooktype",), "seq": {}},
}


class tdAttributeError(AttributeError):
    """What TouchDesigner raises for an unknown parameter (``td.tdAttributeError``)."""


class tdError(Exception):
    """TouchDesigner's generic error (``td.tdError``)."""


class ParMode:
    CONSTANT, EXPRESSION, EXPORT, BIND = "CONSTANT", "EXPRESSION", "EXPORT", "BIND"


_CUSTOM = re.compile(r"^[A-Z][a-z0-9]*$")


class Par:
    """One parameter: ``val`` (constant), ``expr`` (expression), ``mode``; menus for custom ones."""

    def __init__(self, owner: OP, name: str, default: Any = None, custom: bool = False) -> None:
        self.owner, self.name, self.isCustom = owner, name, custom
        self._val = default
        self.default, self.mode, self._expr = default, ParMode.CONSTANT, ""
        self.menuNames: list[str] = []
        self.menuLabels: list[str] = []
        self.label, self.page, self.style = name, None, ""
        self.pulsed = 0

    @property
    def val(self) -> Any:
        return self._val

    @val.setter
    def val(self, value: Any) -> None:
        allowed = MENUS.get((self.owner.OPType, self.name))
        if allowed and value is not None and value not in allowed:
            raise tdError(f"{self.owner.path}: {value!r} is not a menu item of {self.name} ({', '.join(allowed)})")
        self._val = value

    @property
    def expr(self) -> str:
        return self._expr

    @expr.setter
    def expr(self, text: str) -> None:
        if not isinstance(text, str):
            raise tdError(f"{self.owner.path}: expression of {self.name} must be a string")
        compile(text, f"{self.owner.path}:{self.name}", "eval")  # a syntax error fails here, as in TD
        self._expr, self.mode = text, ParMode.EXPRESSION

    def eval(self) -> Any:
        """The value; an expression is evaluated in the owner's context (``me``, ``op``, ``parent``)."""
        if self.mode != ParMode.EXPRESSION:
            return self.val
        import math

        owner = self.owner
        ns = {"me": owner, "op": owner.parent().op, "parent": owner.parent, "math": math,
              "absTime": _Time(), "tdu": None}
        return eval(self._expr, ns)

    # TouchDesigner's Par takes part in arithmetic with its evaluated value
    def __float__(self) -> float:
        return float(self.eval())

    def __int__(self) -> int:
        return int(self.eval())

    def _num(self, other: Any) -> float:
        return float(other)

    def __mul__(self, o: Any) -> float:
        return float(self) * self._num(o)

    __rmul__ = __mul__

    def __add__(self, o: Any) -> float:
        return float(self) + self._num(o)

    __radd__ = __add__

    def __sub__(self, o: Any) -> float:
        return float(self) - self._num(o)

    def __rsub__(self, o: Any) -> float:
        return self._num(o) - float(self)

    def __truediv__(self, o: Any) -> float:
        return float(self) / self._num(o)

    def __rtruediv__(self, o: Any) -> float:
        return self._num(o) / float(self)

    def __lt__(self, o: Any) -> bool:
        return float(self) < self._num(o)

    def __gt__(self, o: Any) -> bool:
        return float(self) > self._num(o)

    @property
    def menuIndex(self) -> int:
        return self.menuNames.index(self.val) if self.val in self.menuNames else 0

    def pulse(self) -> None:
        self.pulsed += 1

    def isSet(self) -> bool:
        return self.mode == ParMode.EXPRESSION or self.val not in (None, "")


class ParCollection:
    """``op.par``: only documented names (and live sequence blocks, and appended custom ones)."""

    def __init__(self, owner: OP) -> None:
        object.__setattr__(self, "_owner", owner)
        object.__setattr__(self, "_pars", {})

    def _known(self, name: str) -> Par | None:
        pars = object.__getattribute__(self, "_pars")
        if name in pars:
            return pars[name]
        owner = object.__getattribute__(self, "_owner")
        if owner._knows(name):
            pars[name] = Par(owner, name, owner._default(name))
            return pars[name]
        return None

    def __getattr__(self, name: str) -> Par:
        p = self._known(name)
        if p is None:
            owner = object.__getattribute__(self, "_owner")
            raise tdAttributeError(f"'td.ParCollection' object has no attribute '{name}' ({owner.OPType} {owner.path})")
        return p

    def __setattr__(self, name: str, value: Any) -> None:
        p = self.__getattr__(name)
        if isinstance(value, Par):
            value = value.val
        p.val, p.mode = value, ParMode.CONSTANT

    def __getitem__(self, name: str) -> Par | None:
        return self._known(name)

    def _all(self) -> dict[str, Par]:
        return dict(object.__getattribute__(self, "_pars"))


class Sequence:
    """``op.seq.<name>``: ``numBlocks`` decides which ``<name><i><field>`` parameters exist."""

    def __init__(self, owner: OP, name: str, fields: tuple[str, ...]) -> None:
        self.owner, self.name, self.fields, self._n = owner, name, fields, 1

    @property
    def numBlocks(self) -> int:
        return self._n

    @numBlocks.setter
    def numBlocks(self, n: int) -> None:
        if int(n) < 0:
            raise tdError(f"numBlocks must be >= 0, got {n}")
        self._n = int(n)


class SeqCollection:
    def __init__(self, owner: OP) -> None:
        self._owner = owner
        self._seqs = {k: Sequence(owner, k, v) for k, v in PARS[owner.OPType]["seq"].items()}

    def __getattr__(self, name: str) -> Sequence:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._seqs[name]
        except KeyError:
            raise tdAttributeError(f"{self._owner.path}: no sequence {name!r}") from None


class Page:
    """A custom parameter page; ``appendFloat`` etc. return the new parameters as a list."""

    def __init__(self, owner: OP, name: str) -> None:
        self.owner, self.name, self.pars = owner, name, []

    def _append(self, style: str, name: str, label: str | None = None, size: int = 1) -> list[Par]:
        if not _CUSTOM.match(name):
            raise tdError(f"invalid custom parameter name {name!r}: a capital letter, then lower-case letters/digits")
        if name in self.owner.customPars_by_name:
            raise tdError(f"{self.owner.path}: custom parameter {name!r} already exists")
        par = Par(self.owner, name, custom=True)
        par.label, par.page, par.style = label or name, self, style
        self.owner.customPars_by_name[name] = par
        object.__getattribute__(self.owner.par, "_pars")[name] = par
        self.pars.append(par)
        return [par]

    def __getattr__(self, attr: str) -> Any:
        kinds = ("Float", "Int", "Str", "Toggle", "Menu", "StrMenu", "Pulse", "Folder", "File", "TOP", "CHOP",
                 "COMP", "OP", "RGB", "XY")
        if attr.startswith("append") and attr[6:] in kinds:
            return lambda name, label=None, size=1: self._append(attr[6:], name, label, size)
        raise AttributeError(attr)


class Connector:
    def __init__(self, owner: OP, index: int, is_input: bool) -> None:
        self.owner, self.index, self.isInput = owner, index, is_input
        self.connections: list[Connector] = []

    def connect(self, target: OP | Connector) -> None:
        if self.isInput:
            raise tdError("connect() from an output connector to an input")
        dst = target if isinstance(target, Connector) else target._free_input()
        if dst.owner.family != self.owner.family:
            raise tdError(f"cannot wire {self.owner.family} {self.owner.path} into {dst.owner.family} {dst.owner.path}")
        dst.connections = [self]
        self.connections.append(dst)


_FAMILY = {"TOP": "TOP", "CHOP": "CHOP", "SOP": "SOP", "DAT": "DAT", "MAT": "MAT", "POP": "POP", "COMP": "COMP"}


class OP:
    """An operator of one documented type, with parameters, children, wires and (DAT) text."""

    OPType = "containerCOMP"

    def __init__(self, name: str, parent: OP | None) -> None:
        self.name, self._parent = name, parent
        self.path = (parent.path.rstrip("/") if parent else "") + "/" + name
        self.family = next(f for s, f in _FAMILY.items() if self.OPType.endswith(s))
        self.par = ParCollection(self)
        self.seq = SeqCollection(self)
        self.customPars_by_name: dict[str, Par] = {}
        self._kids: dict[str, OP] = {}
        self.text = ""
        self.nodeX = self.nodeY = 0
        self.render = self.display = False
        n_in = 4 if self.family != "COMP" else 0
        self.inputConnectors = [Connector(self, i, True) for i in range(n_in)]
        self.outputConnectors = [Connector(self, 0, False)]
        self.cooks = 0
        self.time = _Time()  # me.time: the component time (rate, frame, seconds)
        self.saved: list[str] = []
        self.pages: list[Page] = []

    # parameters ---------------------------------------------------------------------------
    def _knows(self, name: str) -> bool:
        spec = PARS[self.OPType]
        if name in spec["pars"]:
            return True
        for seq_name, fields in spec["seq"].items():
            m = re.fullmatch(rf"{seq_name}(\d+)({'|'.join(fields)})", name)
            if m and int(m.group(1)) < self.seq._seqs[seq_name].numBlocks:
                return True
        return False

    def _default(self, name: str) -> Any:
        return PARS[self.OPType].get("defaults", {}).get(name)

    def pars(self, pattern: str = "*") -> list[Par]:
        return list(self.par._all().values())

    @property
    def customPars(self) -> list[Par]:
        return list(self.customPars_by_name.values())

    def appendCustomPage(self, name: str) -> Page:
        page = Page(self, name)
        self.pages.append(page)
        return page

    # network ------------------------------------------------------------------------------
    def parent(self, n: int = 1) -> OP:
        o = self
        for _ in range(n):
            o = o._parent
        return o

    def create(self, optype: type, name: str | None = None) -> OP:
        if not (isinstance(optype, type) and issubclass(optype, OP)):
            raise tdError(f"create() needs an operator type class, got {optype!r}")
        if self.family != "COMP":
            raise tdError(f"{self.path} is not a COMP: cannot create operators in it")
        name = name or optype.OPType.replace("COMP", "").replace("TOP", "") + "1"
        if name in self._kids:
            raise tdError(f"{self.path}/{name} already exists")
        child = optype(name, self)
        self._kids[name] = child
        return child

    @property
    def children(self) -> list[OP]:
        return list(self._kids.values())

    def op(self, path: str) -> OP | None:
        node: OP | None = self
        if path.startswith("/"):
            while node._parent is not None:
                node = node._parent
            path = path.lstrip("/")
            parts = path.split("/")
            if parts and parts[0] == node.name:
                parts = parts[1:]
        else:
            parts = path.split("/")
        for part in parts:
            if node is None:
                return None
            if part in ("", "."):
                continue
            node = node._parent if part == ".." else node._kids.get(part)
        return node

    def ops(self, *patterns: str) -> list[OP]:
        return [c for c in self._kids.values() if any(re.fullmatch(p.replace("*", ".*"), c.name) for p in patterns)]

    def _free_input(self) -> Connector:
        for c in self.inputConnectors:
            if not c.connections:
                return c
        raise tdError(f"{self.path}: no free input")

    @property
    def inputs(self) -> list[OP]:
        return [c.connections[0].owner for c in self.inputConnectors if c.connections]

    @property
    def outputs(self) -> list[OP]:
        return [d.owner for d in self.outputConnectors[0].connections]

    def cook(self, force: bool = False) -> None:
        self.cooks += 1

    def save(self, path: str) -> str:
        if self.family != "COMP":
            raise tdError(f"{self.path}: only COMPs save .tox files")
        if not path.endswith(".tox"):
            raise tdError(f"save() needs a .tox path, got {path!r}")
        self.saved.append(path)
        return path

    def destroy(self) -> None:
        if self._parent is not None:
            self._parent._kids.pop(self.name, None)

    @property
    def module(self) -> types.ModuleType:
        """A DAT's text as a module (what ``op('x').module`` gives in TouchDesigner)."""
        if self.family != "DAT":
            raise tdAttributeError(f"{self.path} has no module")
        mod = types.ModuleType(self.name)
        exec(compile(self.text, self.path, "exec"), mod.__dict__)  # noqa: S102 - op(dat).module, as in TD
        return mod

    def __repr__(self) -> str:
        return f"{self.OPType}:{self.path}"

    # extensions and callbacks (what makes a built network run here) ---------------------------
    def __getattr__(self, name: str) -> Any:
        """A COMP's promoted extension members, as TouchDesigner exposes them on the COMP."""
        if name.startswith("_") or self.__dict__.get("family") != "COMP":
            raise AttributeError(name)
        for ext in self.extensions:
            if hasattr(ext, name):
                return getattr(ext, name)
        raise AttributeError(f"'{self.OPType}' {self.path} has no attribute or promoted extension member {name!r}")

    @property
    def extensions(self) -> list[Any]:
        """Instances of the ``ext`` sequence's promoted objects (created once, like TD does)."""
        cache = self.__dict__.setdefault("_ext_cache", {})
        out = []
        for i in range(self.seq._seqs["ext"].numBlocks if "ext" in self.seq._seqs else 0):
            obj, promote = self.par[f"ext{i}object"], self.par[f"ext{i}promote"]
            if obj is None or not obj.val or not (promote and promote.val):
                continue
            if i not in cache:
                cache[i] = eval(str(obj.val), {"op": self.op, "me": self, "parent": self.parent})
            out.append(cache[i])
        return out

    def run_callback(self, fn: str, *args: Any) -> Any:
        """Run ``fn`` of this DAT's text with ``me`` = the DAT and ``parent()`` = its COMP."""
        if self.family != "DAT":
            raise tdError(f"{self.path} is not a DAT")
        g: dict[str, Any] = {"__name__": self.name, "me": self, "parent": self.parent, "op": self.parent().op}
        exec(compile(self.text, self.path, "exec"), g)  # noqa: S102 - a DAT runs its text, as in TD
        return g[fn](*args) if fn in g else None


class _ScriptOP(OP):
    """Script TOP / CHOP: ``cook()`` runs the callbacks DAT's ``onCook(scriptOp)``."""

    def cook(self, force: bool = False) -> None:
        super().cook(force)
        dat = _ref(self, self.par["callbacks"])
        if dat is None:
            raise tdError(f"{self.path}: no callbacks DAT")
        dat.run_callback("onCook", self)


class _ScriptTOP(_ScriptOP):
    array: Any = None

    def copyNumpyArray(self, arr: Any) -> None:
        """https://derivative.ca/UserGuide/ScriptTOP_Class: uint8 / uint16 / float32, [H, W, 1-4]."""
        import numpy as np

        if not isinstance(arr, np.ndarray) or arr.dtype not in (np.uint8, np.uint16, np.float32) \
                or arr.ndim != 3 or not 1 <= arr.shape[2] <= 4:
            raise tdError(f"{self.path}: copyNumpyArray needs uint8/uint16/float32 [H, W, 1-4], got "
                          f"{getattr(arr, 'dtype', type(arr))} {getattr(arr, 'shape', '')}")
        self.array = arr.copy()


class Channel:
    """A CHOP channel; in an expression it is its first sample (TouchDesigner's Channel)."""

    def __init__(self, name: str) -> None:
        self.name, self.vals = name, []

    def __float__(self) -> float:
        return float(self.vals[0])

    def __mul__(self, o: Any) -> float:
        return float(self) * float(o)

    __rmul__ = __mul__


class _ScriptCHOP(_ScriptOP):
    numSamples = 1

    def clear(self) -> None:
        self.__dict__["chans"] = {}

    def appendChan(self, name: str) -> Channel:
        chans = self.__dict__.setdefault("chans", {})
        chans[name] = Channel(name)
        return chans[name]

    def __getitem__(self, name: str) -> Channel | None:
        return self.__dict__.get("chans", {}).get(name)


class _OutCHOP(OP):
    def __getitem__(self, name: str) -> Channel | None:
        return self.inputs[0][name] if self.inputs else None


class _TOP(OP):
    """A TOP's resolution: its own array, else its source's (input or ``top`` parameter)."""

    @property
    def width(self) -> int:
        return self._res()[1]

    @property
    def height(self) -> int:
        return self._res()[0]

    def _res(self) -> tuple[int, int]:
        arr = self.__dict__.get("array")
        if arr is not None:
            return arr.shape[0], arr.shape[1]
        src = self.inputs[0] if self.inputs else _ref(self, self.par["top"]) if self.par["top"] is not None else None
        return src._res() if isinstance(src, _TOP) else (256, 256)


class _ScriptTOPRes(_ScriptTOP, _TOP):
    pass


_BEHAVIOUR = {"scriptTOP": _ScriptTOPRes, "scriptCHOP": _ScriptCHOP, "outCHOP": _OutCHOP}


def _optype(type_name: str) -> type:
    base = _BEHAVIOUR.get(type_name) or (_TOP if type_name.endswith("TOP") else OP)
    return type(type_name, (base,), {"OPType": type_name})


OP_TYPES: dict[str, type] = {name: _optype(name) for name in PARS}


def frame_start(root: OP, frame: int) -> None:
    """Start a frame: every active Execute DAT with Frame Start on runs ``onFrameStart(frame)``."""
    for node in list(walk(root)):
        if node.OPType == "executeDAT" and node.par.active.val and node.par.framestart.val:
            node.run_callback("onFrameStart", frame)


class _Time:
    seconds = 0.0
    frame = 1
    rate = 60.0


class _Dependency:
    def __init__(self, val: Any = None) -> None:
        self.val = val


def make_td(root: OP | None = None) -> types.ModuleType:
    """A ``td`` module around a fresh ``/project1`` (or ``root``)."""
    td = types.ModuleType("td")
    top = OP_TYPES["containerCOMP"]("", None)
    top.path = "/"
    root = root or OP_TYPES["containerCOMP"]("project1", top)
    root.path = "/" + root.name
    top._kids[root.name] = root
    td.root, td.project1 = top, root
    current = {"me": root}

    def op(path: str) -> OP | None:
        return (top if path.startswith("/") else current["me"]).op(path)

    td.op = op
    td.ops = lambda *patterns: current["me"].ops(*patterns)
    td.parent = lambda n=1: current["me"].parent(n)
    td.me = root
    td.mod = types.SimpleNamespace()
    td.absTime = _Time()
    td.project = types.SimpleNamespace(name="stepx_test", folder="/tmp", cookRate=60.0)
    td.tdu = types.SimpleNamespace(Dependency=_Dependency)
    td.ParMode = ParMode
    td.tdAttributeError, td.tdError = tdAttributeError, tdError
    td.OP = OP
    for name, cls in OP_TYPES.items():
        setattr(td, name, cls)
    return td


_BUILTIN_NAMES: list[str] = []


def install(td: types.ModuleType) -> None:
    """Expose ``td``'s names as builtins (as the textport does) and through stepx_td.tdseam."""
    from stepx_td import tdseam

    for name in [n for n in vars(td) if not n.startswith("_")]:
        if not hasattr(builtins, name):
            setattr(builtins, name, getattr(td, name))
            _BUILTIN_NAMES.append(name)
    tdseam.install(td)


def uninstall() -> None:
    from stepx_td import tdseam

    while _BUILTIN_NAMES:
        delattr(builtins, _BUILTIN_NAMES.pop())
    tdseam.install(None)


def textport_exec(path: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run a script the way ``exec(open(path).read())`` in the textport does: td names are
    builtins, the script's globals hold only what the user typed (``extra``)."""
    g: dict[str, Any] = {"__name__": "__main__", **(extra or {})}
    with open(path, encoding="utf-8") as f:
        exec(compile(f.read(), path, "exec"), g)  # noqa: S102 - what the textport does
    return g


# ---------------------------------------------------------------------------------------------
# Network checks (what would be visibly broken in TouchDesigner)
# ---------------------------------------------------------------------------------------------
_UNIFORM = re.compile(r"^\s*uniform\s+(\w+)\s+(\w+)\s*;", re.MULTILINE)


def walk(node: OP) -> Iterable[OP]:
    for c in node._kids.values():
        yield c
        yield from walk(c)


def _ref(node: OP, par: Par | None) -> OP | None:
    if par is None or par.val is None or par.val == "":
        return None
    if isinstance(par.val, OP):
        return par.val
    return node.parent().op(str(par.val)) if not str(par.val).startswith("/") else node.op(str(par.val))


def _glsl_source(node: OP) -> str:
    names = {"glslTOP": ("pixeldat",), "glslMAT": ("vdat", "pdat"), "glslPOP": ("computedat",)}[node.OPType]
    texts = []
    for n in names:
        dat = _ref(node, node.par[n])
        if dat is not None:
            texts.append(dat.text)
    return "\n".join(texts)


def _bound(node: OP, seq: str, field: str) -> dict[str, list[Par]]:
    out: dict[str, list[Par]] = {}
    for i in range(node.seq._seqs[seq].numBlocks):
        name = node.par[f"{seq}{i}name"]
        if name is not None and name.val:
            out[str(name.val)] = [node.par[f"{seq}{i}{f}"] for f in field]
    return out


_COMPONENTS = {"float": 1, "int": 1, "vec2": 2, "vec3": 3, "vec4": 4}


def check_network(root: OP, output: OP | None = None) -> list[str]:
    """Problems that would keep the network from running in TouchDesigner (one line each)."""
    problems: list[str] = []
    nodes = list(walk(root))
    for node in nodes:
        t = node.OPType
        if t in ("glslTOP", "glslMAT") or (t == "glslPOP"):
            src = _glsl_source(node)
            if not src:
                problems.append(f"{node.path}: no shader DAT")
                continue
            if t == "glslPOP":
                declared = {}  # TouchDesigner declares a GLSL POP's uniforms from its pages
                used = set(re.findall(r"\b(u_\w+)\b", src))
            else:
                declared = {m.group(2): m.group(1) for m in _UNIFORM.finditer(src)}
                used = set(declared)
            vecs = _bound(node, "vec", ("valuex", "valuey", "valuez", "valuew"))
            samplers = _bound(node, "sampler", ("top", "filter"))
            for name in sorted(used):
                typ = declared.get(name)
                if typ == "sampler2D" or name in samplers:
                    if name not in samplers:
                        problems.append(f"{node.path}: sampler {name} is not on the Samplers page")
                        continue
                    top_par, filt = samplers[name]
                    top = _ref(node, top_par)
                    if name in mip_sampled(src) and (filt is None or filt.val != "mipmaplinear"):
                        problems.append(f"{node.path}: sampler {name} is read at coarser mip levels but its filter "
                                        "is not Mipmap Linear (no mipmaps: the multi-scale gradient collapses)")
                    if top is None:
                        problems.append(f"{node.path}: sampler {name} reads a TOP that does not exist ({top_par and top_par.val!r})")
                    elif (filt is None or filt.val != "nearest") and _format(top) == "rgba32float":
                        # https://derivative.ca/UserGuide/Pixel_Formats: "32-bit floating point format does
                        # not support any type of filtering. It will be forced to be nearest filtering"
                        problems.append(f"{node.path}: sampler {name} filters {top.path}, which is 32-bit float "
                                        "(TouchDesigner forces nearest filtering: no mipmaps, no smoothing)")
                    continue
                if name not in vecs:
                    problems.append(f"{node.path}: uniform {name} is not bound on the Vectors page (it stays 0)")
                    continue
                n = _COMPONENTS.get(typ, 4) if typ else 1  # a POP's types live on its pages: x at least
                for comp in vecs[name][:n]:
                    if comp is None or not comp.isSet():
                        problems.append(f"{node.path}: uniform {name} has an unset component")
                        break
        if t == "renderselectTOP":
            src = _ref(node, node.par.top)
            idx = int(node.par.colorbufindex.val or 0)
            if src is None:
                problems.append(f"{node.path}: selects from a TOP that does not exist")
            elif idx >= int(src.par.numcolorbufs.val or 1):
                problems.append(f"{node.path}: colour buffer {idx} but {src.path} has {src.par.numcolorbufs.val or 1}")
        if t == "parameterexecuteDAT":
            watched = str(node.par.pars.val or "").split()
            if any(w[:1].isupper() for w in watched) and not node.par.custom.val:
                problems.append(f"{node.path}: watches custom parameters but 'custom' is off (the callbacks never fire)")
        if t == "feedbackTOP":
            inp = node.inputs[0] if node.inputs else None
            if inp is not None and inp.OPType == "noiseTOP" and inp.par.mono.val:
                problems.append(f"{node.path}: seeded from monochrome noise {inp.path} (x = y = z for every particle)")
    seeds = [n.inputs[0].path for n in nodes if n.OPType == "feedbackTOP" and n.inputs]
    for s in set(seeds):
        if seeds.count(s) > 1 and root.op(s) is not None and root.op(s).OPType == "noiseTOP":
            problems.append(f"{s}: one noise seeds {seeds.count(s)} state buffers (they start identical)")
    if output is not None:
        pulled = pulled_by(output)
        for node in nodes:
            if node.OPType in ("renderselectTOP", "feedbackTOP", "glslTOP") and node not in pulled:
                problems.append(f"{node.path}: nothing downstream of {output.path} pulls it, so it never cooks")
    return problems


def _args(src: str, start: int) -> list[str]:
    """Top-level comma-separated arguments of the call whose '(' is at ``start``."""
    depth, cur, out = 0, [], []
    for ch in src[start:]:
        if ch == "(":
            depth += 1
            if depth == 1:
                continue
        elif ch == ")":
            depth -= 1
            if depth == 0:
                out.append("".join(cur).strip())
                return out
        elif ch == "," and depth == 1:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    return out


def mip_sampled(src: str) -> set[str]:
    """Samplers the shader reads at a level of detail other than a literal 0 (needs mipmaps)."""
    out = set()
    for m in re.finditer(r"\btextureLod\s*\(", src):
        args = _args(src, m.end() - 1)
        if len(args) == 3 and args[2] not in ("0", "0.0"):
            out.add(args[0])
    return out


def _format(top: OP) -> str | None:
    fmt = top.par.format.val if top.par["format"] is not None else None
    if fmt in (None, "", "useinput"):
        if top.OPType == "scriptTOP":
            return "rgba32float"  # copyNumpyArray of float32 data
        ins = top.inputs or ([_ref(top, top.par.top)] if top.par["top"] is not None else [])
        return _format(ins[0]) if ins and ins[0] is not None else None
    return str(fmt)


def pulled_by(output: OP) -> set[OP]:
    """Everything ``output`` cooks: inputs, and operators its parameters reference (TOP/DAT/MAT...)."""
    seen: set[OP] = set()
    stack = [output]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        stack.extend(node.inputs)
        for p in node.par._all().values():
            if node.OPType in ("feedbackTOP", "feedbackPOP") and p.name in ("top", "pop"):
                continue  # a Feedback OP reads its target's previous frame: it does not pull it
            if (isinstance(p.val, OP) or (isinstance(p.val, str) and p.val)) and not p.isCustom \
                    and p.mode == ParMode.CONSTANT:
                ref = _ref(node, p)
                if ref is not None and ref is not node:
                    stack.append(ref)
        if node.OPType == "geometryCOMP":
            stack.extend(node._kids.values())
    return seen
