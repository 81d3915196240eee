"""Build the StepX TouchDesigner network (receiver + control components, particle shader).

Run from TouchDesigner's textport (a .tox cannot be authored outside TD)::

    STEPX_TD_DIR = r'C:/path/to/repo/td_components'
    exec(open(STEPX_TD_DIR + '/build_network.py').read())

It creates, under ``/project1`` (or ``STEPX_PARENT``): ``stepx_receiver`` (Base COMP with the
StepXReceiverExt extension, an Execute DAT calling it on frame start, Script TOPs/CHOPs and Out
TOP/CHOPs) and ``stepx_control`` (Base COMP with StepXControlExt, pulses Generate/Cancel/Status),
plus ``stepx_particles`` (GLSL TOP with the shared force model spliced in). Everything goes
through the TD API handed in as ``T`` (the textport's globals), so tests drive it with fakes.
Parameters a TD build does not know are reported, not fatal.
"""

from __future__ import annotations

import os
import sys
from typing import Any

RECEIVER_TOPS = ("word_tex", "masks_rgba", "step_image")
RECEIVER_CHOPS = ("phase", "words", "timeline")

EXECUTE_RECEIVER = '''# StepX: poll the stream once per frame (never blocks), see StepXReceiverExt.OnFrameStart
def onFrameStart(frame):
\tparent().OnFrameStart(frame)
\treturn
'''
EXECUTE_CONTROL = '''# StepX: collect control replies once per frame (never blocks)
def onFrameStart(frame):
\tparent().OnFrameStart(frame)
\treturn
'''
PULSES_CONTROL = '''# StepX: pulse parameters Generate / Cancel / Status call the promoted methods
def onPulse(par):
\tgetattr(parent(), par.name)()
\treturn
'''
SCRIPT_TOP_CB = '''# StepX: the receiver extension pushes arrays with copyNumpyArray (Modify Outside of Cook on)
def onCook(scriptOp):
\treturn
'''
SCRIPT_CHOP_CB = '''# StepX: channels come from the receiver extension
def onCook(scriptOp):
\tparent().CookChop(scriptOp, {which!r})
\treturn
'''


class Builder:
    """Creates operators through the TD API namespace ``T``; collects non-fatal warnings."""

    def __init__(self, T: dict[str, Any], lib_dir: str) -> None:
        self.T = T
        self.lib_dir = os.path.abspath(lib_dir).replace("\\", "/")
        self.warnings: list[str] = []

    def set(self, o: Any, **pars: Any) -> None:
        """Set parameters by name; a name this TD build lacks becomes a warning."""
        for name, value in pars.items():
            if getattr(o.par, name, None) is None:
                self.warnings.append(f"{o.path}: no parameter {name!r}")
                continue
            setattr(o.par, name, value)

    def create(self, parent: Any, type_name: str, name: str, **pars: Any) -> Any:
        """Create (or reuse) ``name`` of operator type ``T[type_name]`` under ``parent``."""
        o = parent.op(name)
        if o is None:
            o = parent.create(self.T[type_name], name)
        self.set(o, **pars)
        return o

    def text(self, parent: Any, name: str, text: str, file: str | None = None) -> Any:
        """A Text DAT holding ``text`` (synced to ``file`` when given, so edits on disk show up)."""
        dat = self.create(parent, "textDAT", name)
        dat.text = text
        if file:
            self.set(dat, file=file, syncfile=True)
        return dat

    def extension(self, comp: Any, cls: str) -> None:
        """Load ``<cls>.py`` into a Text DAT and attach it as promoted extension 1."""
        path = f"{self.lib_dir}/{cls}.py"
        with open(path, encoding="utf-8") as f:
            self.text(comp, cls, f.read(), file=path)
        self.set(comp, extension1=f"op('./{cls}').module.{cls}(me)", promoteextension1=True)

    def params(self, comp: Any, page_name: str, spec: list[tuple]) -> None:
        """Custom parameters: (kind, Name, label, default[, menu names])."""
        page = comp.appendCustomPage(page_name)
        for kind, name, label, default, *menu in spec:
            if getattr(comp.par, name, None) is not None:
                continue
            par = getattr(page, "append" + kind)(name, label=label)[0]
            if menu:
                par.menuNames = list(menu[0])
                par.menuLabels = list(menu[0])
            if default is not None:
                par.default = default
                par.val = default

    # -- components ------------------------------------------------------------------------
    def receiver(self, parent: Any) -> Any:
        comp = self.create(parent, "baseCOMP", "stepx_receiver")
        self.params(comp, "StepX", [
            ("Str", "Address", "Address", "127.0.0.1"), ("Int", "Port", "Port", 5560),
            ("Str", "Focusword", "Focus Word (word, index, or global)", "0"),
            ("Menu", "Encoding", "Texture Format", "auto", ("auto", "float32", "uint8")),
            ("Toggle", "Active", "Active", True), ("Folder", "Libpath", "Library Folder", self.lib_dir),
        ])
        self.extension(comp, "StepXReceiverExt")
        ex = self.create(comp, "executeDAT", "frame_exec")
        ex.text = EXECUTE_RECEIVER
        self.set(ex, active=True, framestart=True)
        cb = self.text(comp, "script_top_callbacks", SCRIPT_TOP_CB)
        for i, name in enumerate(RECEIVER_TOPS):
            top = self.create(comp, "scriptTOP", name, callbacks=cb.path, modoutsidecook=True)
            out = self.create(comp, "outTOP", "out_" + name)
            top.outputConnectors[0].connect(out)
            top.nodeX, top.nodeY, out.nodeX, out.nodeY = 0, -150 * i, 200, -150 * i
        for i, which in enumerate(RECEIVER_CHOPS):
            cb = self.text(comp, f"{which}_chop_callbacks", SCRIPT_CHOP_CB.format(which=which))
            chop = self.create(comp, "scriptCHOP", f"{which}_chop", callbacks=cb.path)
            out = self.create(comp, "outCHOP", f"out_{which}")
            chop.outputConnectors[0].connect(out)
            chop.nodeX, chop.nodeY, out.nodeX, out.nodeY = 400, -150 * i, 600, -150 * i
        return comp

    def control(self, parent: Any) -> Any:
        comp = self.create(parent, "baseCOMP", "stepx_control")
        self.params(comp, "StepX Control", [
            ("Str", "Address", "Address", "127.0.0.1"), ("Int", "Controlport", "ZeroMQ Control Port", 5561),
            ("Menu", "Transport", "Transport", "zmq", ("zmq", "osc")), ("Int", "Oscport", "OSC Control Port", 7001),
            ("Str", "Prompt", "Prompt", "a red fox in the snow"), ("Int", "Seed", "Seed (-1 random)", -1),
            ("Int", "Steps", "Steps (0 = daemon's)", 0), ("Float", "Guidance", "Guidance (-1 = daemon's)", -1.0),
            ("Int", "Width", "Width (0 = model's)", 0), ("Int", "Height", "Height (0 = model's)", 0),
            ("Str", "Focuswords", "Focus Words", ""), ("Str", "Token", "Token", ""),
            ("Pulse", "Generate", "Generate", None), ("Pulse", "Cancel", "Cancel", None),
            ("Pulse", "Status", "Status", None), ("Str", "Lastreply", "Last Reply", ""),
            ("Folder", "Libpath", "Library Folder", self.lib_dir),
        ])
        self.extension(comp, "StepXControlExt")
        ex = self.create(comp, "executeDAT", "frame_exec")
        ex.text = EXECUTE_CONTROL
        self.set(ex, active=True, framestart=True)
        pe = self.create(comp, "parameterexecuteDAT", "pulse_exec")
        pe.text = PULSES_CONTROL
        self.set(pe, op="..", pars="Generate Cancel Status", onpulse=True, valuechange=False)
        return comp

    def particles(self, parent: Any, receiver: Any) -> Any:
        """GLSL TOP particle update: 3 float RGBA color buffers (particle state a, b, c of
        particles_common.glsl), each fed back through a Feedback TOP; seeded by a Noise TOP."""
        sys.path.insert(0, self.lib_dir) if self.lib_dir not in sys.path else None
        from stepx_td.glsl import splice_includes  # noqa: PLC0415

        src = splice_includes(f"{self.lib_dir}/glsl/stepx_particles_top.frag")
        dat = self.text(parent, "stepx_particles_pixel", src)
        seed = self.create(parent, "noiseTOP", "stepx_particles_seed", resolutionw=512, resolutionh=512, format="rgba32float")
        glsl = self.create(parent, "glslTOP", "stepx_particles", pixeldat=dat.path, numcolorbufs=3,
                           format="rgba32float", resolutionw=512, resolutionh=512)
        for i, tag in enumerate("abc"):
            fb = self.create(parent, "feedbackTOP", f"stepx_state_{tag}")
            seed.outputConnectors[0].connect(fb)
            fb.outputConnectors[0].connect(glsl.inputConnectors[i])
            src_top = glsl if i == 0 else self.create(parent, "renderselectTOP", f"stepx_state_{tag}_out",
                                                     top=glsl.path, colorbufferindex=i)
            self.set(fb, top=src_top.path)
        self.set(glsl, sampler0name="u_mask", sampler0top=receiver.path + "/masks_rgba",
                 sampler1name="u_image", sampler1top=receiver.path + "/step_image")
        return glsl


def build(parent: Any, lib_dir: str, T: dict[str, Any]) -> dict[str, Any]:
    """Build all components under ``parent``; returns them plus the list of warnings."""
    b = Builder(T, lib_dir)
    receiver = b.receiver(parent)
    control = b.control(parent)
    particles = b.particles(parent, receiver)
    for w in b.warnings:
        print("StepX build warning:", w)
    return {"receiver": receiver, "control": control, "particles": particles, "warnings": b.warnings}


if "op" in globals() and "baseCOMP" in globals():  # run from TouchDesigner's textport
    _dir = globals().get("STEPX_TD_DIR") or os.path.dirname(os.path.abspath(globals().get("__file__", ".")))
    STEPX_BUILD = build(op(globals().get("STEPX_PARENT", "/project1")), _dir, globals())  # noqa: F821
