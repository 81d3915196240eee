#version 330
// particles_update_tf.vert -- particle update, transform-feedback fallback (GL 3.3 / macOS 4.1).
//
// Attributes: in_a, in_b, in_c (interleaved '4f 4f 4f', the particle state, see particles_common.glsl).
// Captured varyings (interleaved, same layout): out_a, out_b, out_c. Rasteriser discard; ping-pong
// between two buffers.
// Textures:  unit 0 u_mask (StabilityMask), unit 1 u_image (step image).
// Uniforms:  everything documented in particles_common.glsl.

in vec4 in_a;
in vec4 in_b;
in vec4 in_c;
out vec4 out_a;
out vec4 out_b;
out vec4 out_c;

#include "particles_common.glsl"

void main() {
    vec4 a = in_a;
    vec4 b = in_b;
    vec4 c = in_c;
    particle_step(a, b, c);
    out_a = a;
    out_b = b;
    out_c = c;
}
