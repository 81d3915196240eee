// stepx_trails.frag -- GLSL TOP: the trail image (premultiplied RGBA, 16-bit float).
//   input 0: this frame's particles (stepx_render, transparent background)
//   input 1: the previous trail image (Feedback TOP stepx_trails_fb, top = this TOP)
// Uniform: float u_decay (the piece's Trails parameter). Maths: trails.glsl, shared with the preview.

uniform float u_decay;

out vec4 fragColor;

#include "trails.glsl"

void main() {
    vec4 cur = texture(sTD2DInputs[0], vUV.st);
    vec4 prev = texture(sTD2DInputs[1], vUV.st);
    fragColor = TDOutputSwizzle(trail_mix(prev, cur, u_decay));
}
