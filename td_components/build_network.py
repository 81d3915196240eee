"""Build the StepX piece in TouchDesigner: receiver, control, particles, render, trails (+ POPs).

Run from TouchDesigner's textport (the td names are builtins there; this file reaches them only
through ``stepx_td.tdseam``)::

    STEPX_TD_DIR = r'C:/path/to/repo/td_components'
    exec(open(STEPX_TD_DIR + '/build_network.py').read())
    # optional, before the exec: STEPX_PARENT = '/project1', STEPX_SAVE_TOX = r'C:/.../stepx.tox'

It creates ``stepx`` (a Base COMP, saved as a .tox when ``STEPX_SAVE_TOX`` is set) under
``/project1`` holding:

* ``stepx_receiver`` -- the stream receiver (StepXReceiverExt, Script TOPs/CHOPs, Out TOP/CHOPs);
* ``stepx_control`` -- Generate / Cancel / Status pulses (StepXControlExt);
* the simulation: ``stepx_seed`` (GLSL TOP, 3 buffers) -> ``stepx_state_a/b/c`` (Feedback TOPs)
  -> ``stepx_sim`` (GLSL TOP, 3 buffers: particles_common.glsl) + ``stepx_sim_b/c`` (Render
  Selects), every uniform bound from the stream and the piece's parameters (stepx_td/piece.py);
* the render stage: ``stepx_geo`` (Geometry COMP, one instance per particle) with ``stepx_mat``
  (GLSL MAT: particles_look.glsl), ``stepx_camera``, ``stepx_render`` (Render TOP);
* trails: ``stepx_trails`` (GLSL TOP) fed back through ``stepx_trails_fb``, shown over the
  background by ``stepx_show`` -> ``out_piece`` (the COMP's output);
* on TouchDesigner 2025 builds (POPs): ``stepx_pop_*`` -- Grid POP -> Feedback POP -> GLSL POP
  (the same force model) -> Trail POP.

Every parameter is set through :meth:`Builder.par`, which fails loudly (:class:`BuildError`) on
a name this TouchDesigner does not have (``op.par['name']`` is None then, per
https://derivative.ca/UserGuide/ParCollection_Class): a half-built network that silently does
nothing is worse than a clear error. Sequence parameters (``vec1name``, ``sampler1top``, ``ext0object``)
exist only once ``op.seq.<name>.numBlocks`` is large enough, so the builder grows them first.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

RECEIVER_TOPS = {"word": "word_tex", "masks": "masks_rgba", "image": "step_image"}
RECEIVER_CHOPS = ("phase", "words", "timeline")
PIECE = "stepx"

EXECUTE_FRAME = '''# StepX: poll once per frame (never blocks), see the COMP's extension OnFrameStart
def onFrameStart(frame):
\tparent().OnFrameStart(frame)
\treturn
'''
PULSES_CONTROL = '''# StepX: pulse parameters Generate / Cancel / Status call the promoted methods
def onPulse(par):
\tgetattr(parent(), par.name)()
\treturn
'''
PULSES_PIECE = '''# StepX: Reset re-seeds the particles and clears the trails (pulses the Feedback OPs' Reset)
def onPulse(par):
\tif par.name == 'Reset':
\t\tfor name in ('stepx_state_a', 'stepx_state_b', 'stepx_state_c', 'stepx_trails_fb', 'stepx_pop_fb'):
\t\t\tfb = op(name)
\t\t\tif fb is not None:
\t\t\t\tfb.par.resetpulse.pulse()
\treturn
'''
SCRIPT_TOP_CB = '''# StepX: the receiver extension keeps the newest array; this TOP copies it when it cooks
def onCook(scriptOp):
\tparent().CookTop(scriptOp, {which!r})
\treturn
'''
SCRIPT_CHOP_CB = '''# StepX: channels come from the receiver extension
def onCook(scriptOp):
\tparent().CookChop(scriptOp, {which!r})
\treturn
'''


class BuildError(RuntimeError):
    """The network cannot be built as asked on this TouchDesigner (the message names the operator)."""


def _lib(lib_dir: str) -> None:
    if lib_dir not in sys.path:
        sys.path.insert(0, lib_dir)


class Builder:
    """Creates operators through the ``td`` module and checks every parameter it sets."""

    def __init__(self, td: Any, lib_dir: str) -> None:
        self.td = td
        self.lib_dir = os.path.abspath(lib_dir).replace("\\", "/")
        _lib(self.lib_dir)
        from stepx_td import piece
        from stepx_td.glsl import splice_includes

        self.piece, self.splice = piece, splice_includes

    # -- parameters --------------------------------------------------------------------------
    def par(self, o: Any, name: str) -> Any:
        """Parameter ``name`` of ``o``; :class:`BuildError` if this TouchDesigner lacks it."""
        p = o.par[name]
        if p is None:
            raise BuildError(f"{o.path} ({type(o).__name__}): TouchDesigner has no parameter {name!r}; "
                             "this build of TouchDesigner differs from the one StepX targets (see docs/TOUCHDESIGNER.md)")
        return p

    def set(self, o: Any, **values: Any) -> None:
        """Set constant values (an operator value is stored as that operator's reference)."""
        for name, value in values.items():
            p = self.par(o, name)
            p.val = value
            p.mode = self.td.ParMode.CONSTANT

    def expr(self, o: Any, **exprs: str) -> None:
        """Bind parameters to TouchDesigner Python expressions."""
        for name, text in exprs.items():
            p = self.par(o, name)
            p.expr = text
            p.mode = self.td.ParMode.EXPRESSION

    def create(self, parent: Any, type_name: str, name: str, **pars: Any) -> Any:
        """Create (or reuse) ``name`` of operator type ``td.<type_name>`` under ``parent``."""
        o = parent.op(name)
        if o is None:
            optype = getattr(self.td, type_name, None)
            if optype is None:
                raise BuildError(f"this TouchDesigner has no operator type {type_name}")
            o = parent.create(optype, name)
        self.set(o, **pars)
        return o

    def text(self, parent: Any, name: str, text: str, file: str | None = None) -> Any:
        """A Text DAT holding ``text`` (synced to ``file`` when given, so edits on disk show up)."""
        dat = self.create(parent, "textDAT", name)
        dat.text = text
        if file:
            self.set(dat, file=file, syncfile=True)
        return dat

    def shader(self, parent: Any, name: str, filename: str, prelude: str = "") -> Any:
        """A Text DAT with ``glsl/<filename>``, its includes spliced (TouchDesigner has no #include)."""
        return self.text(parent, name, prelude + self.splice(f"{self.lib_dir}/glsl/{filename}"))

    def extension(self, comp: Any, cls: str) -> None:
        """Load ``<cls>.py`` into a Text DAT and attach it as the COMP's first, promoted extension."""
        path = f"{self.lib_dir}/{cls}.py"
        with open(path, encoding="utf-8") as f:
            self.text(comp, cls, f.read(), file=path)
        comp.seq.ext.numBlocks = max(comp.seq.ext.numBlocks, 1)
        self.set(comp, ext0object=f"op('./{cls}').module.{cls}(me)", ext0promote=True)

    def params(self, comp: Any, page_name: str, spec: Iterable[tuple]) -> None:
        """Custom parameters: (kind, Name, label, default[, menu names]); existing ones are kept."""
        page = None
        for kind, name, label, default, *menu in spec:
            if comp.par[name] is not None:
                continue
            page = page or comp.appendCustomPage(page_name)
            par = getattr(page, "append" + kind)(name, label=label)[0]
            if menu and menu[0]:
                par.menuNames = list(menu[0])
                par.menuLabels = list(menu[0])
            if default is not None:
                par.default = default
                par.val = default

    def uniforms(self, o: Any, uniforms: Iterable[Any], samplers: Iterable[Any] = ()) -> None:
        """One Vectors block per uniform (name + one expression per component), one Samplers
        block per sampler (name, TOP, filter): the sequences grow first, so ``vec1name`` exists."""
        uniforms, samplers = list(uniforms), list(samplers)
        o.seq.vec.numBlocks = max(len(uniforms), 1)
        for i, u in enumerate(uniforms):
            self.set(o, **{f"vec{i}name": u.name})
            self.expr(o, **{f"vec{i}value{c}": e for c, e in zip("xyzw", u.exprs)})
        if samplers:
            o.seq.sampler.numBlocks = len(samplers)
        for i, s in enumerate(samplers):
            top = o.parent().op(s.top)
            if top is None:
                raise BuildError(f"{o.path}: sampler {s.name} reads {s.top}, which was not built")
            self.set(o, **{f"sampler{i}name": s.name, f"sampler{i}top": top, f"sampler{i}filter": s.filter})

    # -- components ------------------------------------------------------------------------
    def receiver(self, parent: Any) -> Any:
        comp = self.create(parent, "baseCOMP", "stepx_receiver")
        self.params(comp, "StepX", [
            ("Str", "Address", "Address", "127.0.0.1"), ("Int", "Port", "Port", 5560),
            ("Str", "Focusword", "Focus Word (word, index, or global)", "0"),
            ("Menu", "Encoding", "Texture Format", "auto", ("auto", "float32", "uint8")),
            ("Float", "Morph", "Phase Morph (s)", 0.6),
            ("Toggle", "Active", "Active", True), ("Folder", "Libpath", "Library Folder", self.lib_dir),
        ])
        # written by StepXReceiverExt from the daemon's status (docs/PROTOCOL.md "Recording health")
        self.params(comp, "Recording", [
            ("Str", "Recording", "Recorder", "no report yet"), ("Str", "Recstate", "State", ""),
            ("Int", "Recfiles", "Files", 0), ("Int", "Recruns", "Runs in File", 0), ("Str", "Recsize", "File Size", ""),
            ("Str", "Recpath", "File", ""), ("Str", "Recerror", "Error", ""),
        ])
        self.extension(comp, "StepXReceiverExt")
        ex = self.create(comp, "executeDAT", "frame_exec")
        ex.text = EXECUTE_FRAME
        self.set(ex, active=True, framestart=True)
        for i, (which, name) in enumerate(RECEIVER_TOPS.items()):
            cb = self.text(comp, f"{name}_callbacks", SCRIPT_TOP_CB.format(which=which))
            top = self.create(comp, "scriptTOP", name, callbacks=cb)
            out = self.create(comp, "outTOP", "out_" + name)
            if not out.inputs:
                top.outputConnectors[0].connect(out)
            top.nodeX, top.nodeY, out.nodeX, out.nodeY = 0, -150 * i, 200, -150 * i
        for i, which in enumerate(RECEIVER_CHOPS):
            cb = self.text(comp, f"{which}_chop_callbacks", SCRIPT_CHOP_CB.format(which=which))
            chop = self.create(comp, "scriptCHOP", f"{which}_chop", callbacks=cb)
            out = self.create(comp, "outCHOP", f"out_{which}")
            if not out.inputs:
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
        ex.text = EXECUTE_FRAME
        self.set(ex, active=True, framestart=True)
        pe = self.create(comp, "parameterexecuteDAT", "pulse_exec")
        pe.text = PULSES_CONTROL
        self.set(pe, op=comp, pars="Generate Cancel Status", custom=True, builtin=False, onpulse=True,
                 valuechange=False, active=True)
        return comp

    def simulation(self, comp: Any) -> Any:
        """Seed -> Feedback A/B/C -> GLSL TOP (3 buffers) + Render Selects B, C."""
        pc = self.piece
        grid = {"resolutionw": f"{pc.P}Grid", "resolutionh": f"{pc.P}Grid"}
        rx = "stepx_receiver"
        self.create(comp, "selectTOP", pc.MASKS, top=comp.op(f"{rx}/out_{RECEIVER_TOPS['masks']}"),
                    format="rgba16float")  # 16-bit float: TouchDesigner can filter and mip-map it
        self.create(comp, "selectTOP", pc.IMAGE, top=comp.op(f"{rx}/out_{RECEIVER_TOPS['image']}"),
                    format="rgba8fixed")
        seed = self.create(comp, "glslTOP", "stepx_seed", pixeldat=self.shader(comp, "stepx_seed_pixel", "stepx_seed.frag"),
                           numcolorbufs=3, format="rgba32float", outputresolution="custom")
        self.expr(seed, **grid)
        self.uniforms(seed, pc.SEED_UNIFORMS)
        seeds = [seed] + [self.create(comp, "renderselectTOP", f"stepx_seed_{t}", top=seed, colorbufindex=i)
                          for i, t in ((1, "b"), (2, "c"))]
        sim = self.create(comp, "glslTOP", "stepx_sim", pixeldat=self.shader(comp, "stepx_sim_pixel", "stepx_particles_top.frag"),
                          numcolorbufs=3, format="rgba32float", outputresolution="custom")
        self.expr(sim, **grid)
        self.uniforms(sim, pc.SIM_UNIFORMS, pc.SIM_SAMPLERS)
        outs = [sim] + [self.create(comp, "renderselectTOP", f"stepx_sim_{t}", top=sim, colorbufindex=i)
                        for i, t in ((1, "b"), (2, "c"))]
        for i, tag in enumerate("abc"):
            fb = self.create(comp, "feedbackTOP", f"stepx_state_{tag}", top=outs[i])
            if not fb.inputs:
                seeds[i].outputConnectors[0].connect(fb)
            if len(sim.inputs) <= i:
                fb.outputConnectors[0].connect(sim.inputConnectors[i])
        return sim

    def render(self, comp: Any) -> Any:
        """Instanced sprites (GLSL MAT reads state A/B/C by instance id), camera, Render TOP."""
        pc = self.piece
        mat = self.create(comp, "glslMAT", "stepx_mat",
                          vdat=self.shader(comp, "stepx_mat_vertex", "stepx_render_mat.vert"),
                          pdat=self.shader(comp, "stepx_mat_pixel", "stepx_render_mat.frag"),
                          blending=True, srcblend="one", destblend="omsa", depthtest=False, depthwriting=False)  # premultiplied
        self.uniforms(mat, pc.RENDER_UNIFORMS, pc.RENDER_SAMPLERS)
        geo = self.create(comp, "geometryCOMP", "stepx_geo", material=mat, instancing=True, instancecountmode="manual")
        self.expr(geo, numinstances=f"{pc.P}Grid * {pc.P}Grid", rx=f"{pc.P}Campitch", ry=f"{pc.P}Camyaw")
        for child in list(geo.children):
            if child.name != "sprite":
                child.destroy()  # TouchDesigner puts a torus in a new Geometry COMP
        sprite = self.create(geo, "rectangleSOP", "sprite", sizex=1.0, sizey=1.0)
        sprite.render = sprite.display = True
        cam = self.create(comp, "cameraCOMP", "stepx_camera")
        self.expr(cam, tz=f"{pc.P}Camdistance", fov=f"math.degrees(2 * math.atan(1 / max({pc.P}Camdistance, 0.05)))")
        rend = self.create(comp, "renderTOP", "stepx_render", camera=cam, geometry=geo, format="rgba16float",
                           bgcolora=0.0, outputresolution="custom", resolutionw=1024, resolutionh=1024)
        return rend

    def trails(self, comp: Any, rend: Any) -> Any:
        """Trail image fed back through a Feedback TOP; shown over the background -> out_piece."""
        pc = self.piece
        trails = self.create(comp, "glslTOP", "stepx_trails", pixeldat=self.shader(comp, "stepx_trails_pixel", "stepx_trails.frag"),
                             format="rgba16float")
        self.uniforms(trails, pc.TRAIL_UNIFORMS)
        fb = self.create(comp, "feedbackTOP", "stepx_trails_fb", top=trails)
        if not trails.inputs:
            rend.outputConnectors[0].connect(trails.inputConnectors[0])
            rend.outputConnectors[0].connect(fb)
            fb.outputConnectors[0].connect(trails.inputConnectors[1])
        show = self.create(comp, "glslTOP", "stepx_show", pixeldat=self.shader(comp, "stepx_show_pixel", "stepx_show.frag"),
                           format="rgba8fixed")
        self.uniforms(show, pc.SHOW_UNIFORMS)
        out = self.create(comp, "outTOP", "out_piece")
        if not show.inputs:
            trails.outputConnectors[0].connect(show.inputConnectors[0])
            comp.op(pc.IMAGE).outputConnectors[0].connect(show.inputConnectors[1])
            show.outputConnectors[0].connect(out)
        return out

    def pops(self, comp: Any) -> Any:
        """TouchDesigner 2025 POPs: Grid POP -> Feedback POP -> GLSL POP (same force model) -> Trail POP."""
        pc = self.piece
        grid = self.create(comp, "gridPOP", "stepx_pop_grid")
        self.expr(grid, rows=f"{pc.P}Grid", cols=f"{pc.P}Grid")
        fb = self.create(comp, "feedbackPOP", "stepx_pop_fb")
        sim = self.create(comp, "glslPOP", "stepx_pop_sim",
                          computedat=self.shader(comp, "stepx_pop_compute", "stepx_particles_pop.comp"),
                          attrclass="point", outputattrs=" ".join(["P"] + [a for a, _ in pc.POP_ATTRIBUTES]))
        sim.seq.attr.numBlocks = len(pc.POP_ATTRIBUTES)
        for i, (name, typ) in enumerate(pc.POP_ATTRIBUTES):
            self.set(sim, **{f"attr{i}name": name, f"attr{i}numcomps": int(typ[-1])})
        self.uniforms(sim, pc.SIM_UNIFORMS, pc.SIM_SAMPLERS)
        self.set(fb, pop=sim)
        trail = self.create(comp, "trailPOP", "stepx_pop_trail")
        self.expr(trail, length=f"max(1, int(round(1 / max(1 - {pc.P}Trails, 0.02))))")
        out = self.create(comp, "nullPOP", "stepx_pop_out")
        if not fb.inputs:
            grid.outputConnectors[0].connect(fb)
            fb.outputConnectors[0].connect(sim)
            sim.outputConnectors[0].connect(trail)
            trail.outputConnectors[0].connect(out)
        return out

    def piece_comp(self, parent: Any, pops: bool | None = None) -> dict[str, Any]:
        comp = self.create(parent, "baseCOMP", PIECE)
        self.params(comp, "Piece", [(p.kind, p.name, p.label, p.default, p.menu) for p in self.piece.PIECE_PARAMS])
        receiver = self.receiver(comp)
        control = self.control(comp)
        sim = self.simulation(comp)
        out = self.trails(comp, self.render(comp))
        pe = self.create(comp, "parameterexecuteDAT", "piece_pulses")
        pe.text = PULSES_PIECE
        self.set(pe, op=comp, pars="Reset", custom=True, builtin=False, onpulse=True, valuechange=False, active=True)
        if pops is None:
            pops = getattr(self.td, "glslPOP", None) is not None
        pop = self.pops(comp) if pops else None
        return {"piece": comp, "receiver": receiver, "control": control, "particles": sim, "out": out, "pops": pop}


def build(parent: Any, lib_dir: str, td: Any, *, pops: bool | None = None, save_to: str | None = None) -> dict[str, Any]:
    """Build the piece under ``parent`` (``pops``: None = when this TouchDesigner has POPs);
    ``save_to``: also save it as a .tox (``COMP.save``). Returns the operators made."""
    b = Builder(td, lib_dir)
    made = b.piece_comp(parent, pops)
    if save_to:
        made["tox"] = made["piece"].save(save_to)
    return made


def _textport_main(g: dict[str, Any]) -> dict[str, Any]:
    lib_dir = g.get("STEPX_TD_DIR") or os.path.dirname(os.path.abspath(g.get("__file__", ".")))
    _lib(lib_dir)
    from stepx_td.tdseam import get_td

    td = get_td()
    if td is None:
        raise BuildError("run this from TouchDesigner's textport: the td module is not available here")
    parent = td.op(g.get("STEPX_PARENT", "/project1"))
    if parent is None:
        raise BuildError(f"no operator {g.get('STEPX_PARENT', '/project1')!r} to build under (set STEPX_PARENT)")
    made = build(parent, lib_dir, td, save_to=g.get("STEPX_SAVE_TOX"))
    print(f"StepX: built {made['piece'].path}" + (f", saved {made['tox']}" if made.get("tox") else ""))
    return made


if "STEPX_TD_DIR" in globals():  # the textport recipe above sets it; importing this file builds nothing
    STEPX_BUILD = _textport_main(globals())
