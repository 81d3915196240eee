"""The StepX piece in TouchDesigner, as data: custom parameters, shader uniforms and their bindings.

What: one table per shader of ``Uniform(name, glsl_type, expressions)``, where each expression
is a TouchDesigner Python expression evaluated on the operator that owns the uniform (a GLSL
TOP / MAT / POP directly inside the ``stepx`` COMP, so ``parent()`` is that COMP). The builder
turns each row into one block of the operator's Vectors sequence (``vec<i>name`` +
``vec<i>value{x,y,z,w}`` expressions); the tests compile each shader under a TouchDesigner-like
preamble and check that every uniform the shader uses is bound here and nothing is declared twice.

Why here: each fact once. The builder, the shader tests and the docs' parameter table read it.
Standard library only (this folder goes on TouchDesigner's ``sys.path``).
"""

from __future__ import annotations

from dataclasses import dataclass

#: Channels of the receiver's phase CHOP (``stepx_receiver/out_phase``) that the piece reads; the
#: receiver always supplies them (defaults before the first step), smoothed over ``Morph`` seconds.
PHASE_CHOP = "stepx_receiver/out_phase"


def chan(name: str) -> str:
    """Expression reading channel ``name`` of the receiver's phase CHOP."""
    return f"op('{PHASE_CHOP}')['{name}']"


@dataclass(frozen=True)
class Uniform:
    """One shader uniform: its GLSL type and one binding expression per component."""

    name: str
    glsl_type: str  # float, vec2, vec3
    exprs: tuple[str, ...]

    def __post_init__(self) -> None:
        n = {"float": 1, "vec2": 2, "vec3": 3, "vec4": 4}[self.glsl_type]
        if len(self.exprs) != n:
            raise ValueError(f"uniform {self.name}: {self.glsl_type} needs {n} expressions, got {len(self.exprs)}")


@dataclass(frozen=True)
class Sampler:
    """One sampler uniform bound to a TOP (path relative to the owning operator's parent)."""

    name: str
    top: str
    filter: str = "linear"  # GLSL TOP/MAT sampler filter menu: nearest, linear, mipmaplinear


@dataclass(frozen=True)
class Param:
    """A custom parameter of the ``stepx`` COMP: (append kind, Name, label, default, range, help)."""

    kind: str  # Float, Int, Toggle, Menu, Pulse
    name: str
    label: str
    default: object
    help: str
    menu: tuple[str, ...] = ()
    size: int = 1


P = "parent().par."
PHASE = (chan("w_noise"), chan("w_structure"), chan("w_detail"))
MASKS, IMAGE = "stepx_masks", "stepx_image"

#: Custom page "Piece" of the ``stepx`` COMP: everything an artist tunes live.
PIECE_PARAMS: tuple[Param, ...] = (
    Param("Int", "Grid", "Particle Grid (N x N)", 512, "particles = Grid x Grid (state textures are Grid x Grid); 512 = 262,144"),
    Param("Float", "Speed", "Speed", 1.0, "simulation time per frame x this (0 freezes the particles)"),
    Param("Float", "Wind", "Wind (chaos)", 0.9, "chaos force = Wind x stream wind x (1 - attention), UV/s^2"),
    Param("Float", "Windscale", "Wind Scale", 3.0, "curl-noise cells across the image"),
    Param("Float", "Winddirx", "Wind Drift X", 0.05, "constant drift added to the wind (UV/s^2)"),
    Param("Float", "Winddiry", "Wind Drift Y", 0.02, "constant drift, y up in TouchDesigner (UV/s^2)"),
    Param("Float", "Chaosfloor", "Chaos Floor", 0.2, "minimum chaos once structure forms (keeps attended particles alive)"),
    Param("Float", "Attraction", "Attraction (stability)", 1.6, "stability force = Attraction x stream attraction x attention gradient, UV/s^2"),
    Param("Float", "Damping", "Damping", 2.0, "velocity damping, 1/s"),
    Param("Float", "Grip", "Grip", 4.0, "extra damping where attention is high, 1/s"),
    Param("Float", "Depthrate", "Depth Rate", 3.0, "how fast generated depth follows its target, 1/s"),
    Param("Float", "Depthscale", "Depth Scale", 0.45, "world height of depth 1 (the image plane spans -1..1)"),
    Param("Float", "Pointsize", "Point Size", 2.4, "sprite size in pixels at 512 px height"),
    Param("Float", "Opacity", "Opacity", 0.8, "particle opacity"),
    Param("Menu", "Colormap", "Heat Colours", "inferno", "structure-phase colours", ("inferno", "turbo")),
    Param("Float", "Trails", "Trails", 0.86, "per-frame decay of the trails: 0 none, 0.95 long comet tails"),
    Param("Float", "Glow", "Image Glow", 0.1, "step image behind the particles in the detail phase"),
    Param("Float", "Backgroundr", "Background R", 0.02, "background colour"),
    Param("Float", "Backgroundg", "Background G", 0.02, "background colour"),
    Param("Float", "Backgroundb", "Background B", 0.035, "background colour"),
    Param("Float", "Camdistance", "Camera Distance", 3.0, "camera distance from the image plane"),
    Param("Float", "Camyaw", "Camera Yaw", -11.0, "degrees around the image's vertical axis"),
    Param("Float", "Campitch", "Camera Pitch", -20.0, "degrees around the image's horizontal axis"),
    Param("Int", "Seed", "Particle Seed", 1, "random layout of the particles at a reset"),
    Param("Pulse", "Reset", "Reset Particles", None, "re-seed the particles (pulses the Feedback TOPs' Reset)"),
)

#: Simulation (GLSL TOP ``stepx_sim`` / GLSL POP ``stepx_pop_sim``): particles_common.glsl.
SIM_UNIFORMS: tuple[Uniform, ...] = (
    Uniform("u_has_image", "float", (chan("has_image"),)),
    Uniform("u_phase", "vec3", PHASE),
    Uniform("u_time", "float", ("absTime.seconds",)),
    Uniform("u_dt", "float", (f"{P}Speed / me.time.rate",)),
    Uniform("u_wind", "float", (f"{P}Wind * {chan('wind')}",)),
    Uniform("u_wind_scale", "float", (f"{P}Windscale",)),
    Uniform("u_wind_dir", "vec2", (f"{P}Winddirx", f"{P}Winddiry")),
    Uniform("u_chaos_floor", "float", (f"{P}Chaosfloor",)),
    Uniform("u_attraction", "float", (f"{P}Attraction * {chan('attraction')}",)),
    Uniform("u_damping", "float", (f"{P}Damping",)),
    Uniform("u_grip", "float", (f"{P}Grip",)),
    Uniform("u_mask_size", "vec2", (f"op('{MASKS}').width", f"op('{MASKS}').height")),
    Uniform("u_mask_lod_max", "float", (f"max(0, int(math.log2(max(op('{MASKS}').width, op('{MASKS}').height))) - 1)",)),
    Uniform("u_depth_rate", "float", (f"{P}Depthrate",)),
)
SIM_SAMPLERS: tuple[Sampler, ...] = (Sampler("u_mask", MASKS, "mipmaplinear"), Sampler("u_image", IMAGE, "linear"))

#: Seeding (GLSL TOP ``stepx_seed``): stepx_seed.frag.
SEED_UNIFORMS: tuple[Uniform, ...] = (Uniform("u_seed", "float", (f"{P}Seed",)),)

#: Render (GLSL MAT ``stepx_mat``): stepx_render_mat.vert / .frag with particles_look.glsl.
RENDER_UNIFORMS: tuple[Uniform, ...] = (
    Uniform("u_phase", "vec3", PHASE),
    Uniform("u_grid", "float", (f"{P}Grid",)),
    Uniform("u_depth_scale", "float", (f"{P}Depthscale",)),
    Uniform("u_point_size", "float", (f"{P}Pointsize",)),
    Uniform("u_opacity", "float", (f"{P}Opacity",)),
    Uniform("u_colormap", "float", (f"{P}Colormap.menuIndex",)),
)
RENDER_SAMPLERS: tuple[Sampler, ...] = (
    Sampler("sStateA", "stepx_sim", "nearest"), Sampler("sStateB", "stepx_sim_b", "nearest"),
    Sampler("sStateC", "stepx_sim_c", "nearest"),
)

#: Trails (GLSL TOP ``stepx_trails``) and the shown frame (GLSL TOP ``stepx_show``): trails.glsl.
TRAIL_UNIFORMS: tuple[Uniform, ...] = (Uniform("u_decay", "float", (f"{P}Trails",)),)
SHOW_UNIFORMS: tuple[Uniform, ...] = (
    Uniform("u_background", "vec3", (f"{P}Backgroundr", f"{P}Backgroundg", f"{P}Backgroundb")),
    Uniform("u_image_glow", "float", (f"{P}Glow * {chan('w_detail')}",)),
    Uniform("u_has_image", "float", (chan("has_image"),)),
)

#: POP attributes the GLSL POP reads and writes (created on its Create Attributes page), and
#: the point attribute the Trail POP and the render read.
POP_ATTRIBUTES: tuple[tuple[str, str], ...] = (("stepxVel", "vec3"), ("stepxState", "vec4"), ("Color", "vec4"))
