"""Compile TouchDesigner shaders with glslang under a preamble that mirrors what TouchDesigner injects.

Why: TouchDesigner compiles a GLSL TOP / MAT / POP shader only after putting its own
declarations in front of it. A shader that redeclares one of them, or uses one that is not
there, compiles in a plain GLSL checker and fails inside TouchDesigner. These preambles state
what Derivative documents as provided, so ``glslangValidator`` (Debian's glslang-tools) fails
the same way TouchDesigner would:

* GLSL TOP (pixel shader) -- "Write a GLSL TOP", https://derivative.ca/UserGuide/Write_a_GLSL_TOP :
  ``sTD2DInputs[]`` (+ 3D / 2D-array / cube inputs), ``uTD2DInfos[]`` / ``uTDOutputInfo``
  (``TDTexInfo``: res, depth), ``uTDPass``, ``uTDCurrentDepth``, ``vUV``, ``TDOutputSwizzle()``,
  ``TDDither()``, ``TDPerlinNoise()`` / ``TDSimplexNoise()``, ``TDHSVToRGB()`` / ``TDRGBToHSV()``.
  The shader declares its own ``uniform``s; the Vectors / Samplers pages only set them.
* GLSL MAT -- "Write a GLSL Material", https://derivative.ca/UserGuide/Write_a_GLSL_Material :
  vertex attributes ``P``, ``N``, ``Cd``, ``uv[]``; ``uTDMats[]`` (``TDMatrix``), ``TDInstanceID()``,
  ``TDCameraIndex()``, ``TDDeform()``, ``TDWorldToProj()``; pixel side ``TD_NUM_COLOR_BUFFERS``,
  ``TDCheckDiscard()``, ``TDOutputSwizzle()``, ``TDDither()``.
* GLSL POP (compute) -- "Write GLSL POPs", https://derivative.ca/UserGuide/Write_GLSL_POPs :
  each attribute is an SSBO; output attributes are written as ``Name[id]``, inputs read with
  ``TDIn_Name()``; ``TDIndex()``, ``TDNumElements()``; and the uniforms and samplers of the
  POP's Vectors / Samplers pages are DECLARED BY TOUCHDESIGNER (so the shader must not).

Standard library only: runs in the TD-like test environment too.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable

GLSLANG = "glslangValidator"

_TOP_COMMON = """\
#version 460
// ---- TouchDesigner-injected (GLSL TOP), see "Write a GLSL TOP" ----
#define TD_NUM_2D_INPUTS {n_inputs}
uniform sampler2D sTD2DInputs[TD_NUM_2D_INPUTS];
uniform sampler3D sTD3DInputs[1];
uniform sampler2DArray sTD2DArrayInputs[1];
uniform samplerCube sTDCubeInputs[1];
struct TDTexInfo {{ vec4 res; vec4 depth; }};
uniform TDTexInfo uTD2DInfos[TD_NUM_2D_INPUTS];
uniform TDTexInfo uTDOutputInfo;
uniform int uTDPass;
uniform float uTDCurrentDepth;
in vec3 vUV;
vec4 TDOutputSwizzle(vec4 c) {{ return c; }}
uvec4 TDOutputSwizzle(uvec4 c) {{ return c; }}
vec4 TDDither(vec4 c) {{ return c; }}
float TDPerlinNoise(vec2 v) {{ return 0.0; }}
float TDPerlinNoise(vec3 v) {{ return 0.0; }}
float TDSimplexNoise(vec2 v) {{ return 0.0; }}
float TDSimplexNoise(vec3 v) {{ return 0.0; }}
vec3 TDHSVToRGB(vec3 c) {{ return c; }}
vec3 TDRGBToHSV(vec3 c) {{ return c; }}
// ---- end of TouchDesigner's part ----
#line 1
"""

_MAT_VERTEX = """\
#version 460
// ---- TouchDesigner-injected (GLSL MAT vertex), see "Write a GLSL Material" ----
in vec3 P;
in vec3 N;
in vec4 Cd;
in vec3 uv[8];
struct TDMatrix {
    mat4 world; mat4 worldInverse; mat4 worldCam; mat4 worldCamInverse;
    mat4 cam; mat4 camInverse; mat4 camProj; mat4 camProjInverse;
    mat4 proj; mat4 projInverse; mat4 worldCamProj; mat4 worldCamProjInverse;
    mat4 quadReproject; mat3 worldForNormals; mat3 camForNormals; mat3 worldCamForNormals;
};
uniform TDMatrix uTDMats[1];
int TDInstanceID() { return gl_InstanceID; }
int TDCameraIndex() { return 0; }
vec4 TDDeform(vec4 p) { return uTDMats[0].world * p; }
vec4 TDWorldToProj(vec4 p) { return uTDMats[0].camProj * p; }
// ---- end of TouchDesigner's part ----
#line 1
"""

_MAT_PIXEL = """\
#version 460
// ---- TouchDesigner-injected (GLSL MAT pixel), see "Write a GLSL Material" ----
#define TD_NUM_COLOR_BUFFERS 1
void TDCheckDiscard() {}
vec4 TDOutputSwizzle(vec4 c) { return c; }
vec4 TDDither(vec4 c) { return c; }
// ---- end of TouchDesigner's part ----
#line 1
"""

_POP_HEAD = """\
#version 460
// ---- TouchDesigner-injected (GLSL POP compute), see "Write GLSL POPs" ----
layout(local_size_x = 128) in;
uniform uint uTDNumElements;
uint TDIndex() { return gl_GlobalInvocationID.x; }
uint TDNumElements() { return uTDNumElements; }
"""


def top_preamble(n_inputs: int = 1) -> str:
    """What TouchDesigner puts before a GLSL TOP pixel shader with ``n_inputs`` inputs."""
    return _TOP_COMMON.format(n_inputs=max(1, n_inputs))


def mat_preamble(stage: str) -> str:
    """What TouchDesigner puts before a GLSL MAT ``vert`` or ``frag`` shader."""
    return {"vert": _MAT_VERTEX, "frag": _MAT_PIXEL}[stage]


def pop_preamble(attributes: Iterable[tuple[str, str]], uniforms: Iterable[tuple[str, str]],
                 samplers: Iterable[str]) -> str:
    """What TouchDesigner puts before a GLSL POP compute shader.

    ``attributes``: (name, glsl type) of the attributes read (``TDIn_name()``) and written
    (``name[id]``) -- P plus the created/output ones. ``uniforms``: (name, glsl type) of the
    POP's Vectors page; ``samplers``: names on its Samplers page. All three are declared here,
    by "TouchDesigner", as Derivative documents for GLSL POPs.
    """
    out = [_POP_HEAD]
    for i, (name, typ) in enumerate(attributes):
        out.append(f"layout(std430, binding = {2 * i}) readonly buffer TDIn_{name}_buf {{ {typ} TDIn_{name}_data[]; }};")
        out.append(f"{typ} TDIn_{name}() {{ return TDIn_{name}_data[TDIndex()]; }}")
        out.append(f"layout(std430, binding = {2 * i + 1}) buffer TDOut_{name}_buf {{ {typ} {name}[]; }};")
    for name, typ in uniforms:
        out.append(f"uniform {typ} {name};")
    for name in samplers:
        out.append(f"uniform sampler2D {name};")
    out.append("// ---- end of TouchDesigner's part ----\n#line 1\n")
    return "\n".join(out)


def have_glslang() -> bool:
    return shutil.which(GLSLANG) is not None


def compile_glsl(source: str, stage: str) -> tuple[bool, str]:
    """Compile ``source`` (``stage``: vert, frag, comp) with glslang; (ok, log)."""
    if not have_glslang():
        raise FileNotFoundError(f"{GLSLANG} not found: install Debian's glslang-tools (scripts/system-deps.sh does)")
    proc = subprocess.run([GLSLANG, "--stdin", "-S", stage], input=source, capture_output=True, text=True,
                          timeout=60, check=False)
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip()


_DECL = re.compile(r"^\s*uniform\s+(\w+)\s+(\w+)\s*(\[[^\]]*\])?\s*;", re.MULTILINE)


def declared_uniforms(source: str) -> dict[str, str]:
    """``{name: glsl type}`` of the top-level ``uniform`` declarations in ``source``, in order,
    honouring ``#ifndef STEPX_HOST_DECLARES_UNIFORMS`` blocks when that macro is defined first."""
    if "#define STEPX_HOST_DECLARES_UNIFORMS" in source:
        source = re.sub(r"#ifndef STEPX_HOST_DECLARES_UNIFORMS.*?#endif", "", source, flags=re.DOTALL)
    return {m.group(2): m.group(1) for m in _DECL.finditer(source)}
