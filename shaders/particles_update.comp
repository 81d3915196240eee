#version 430
// particles_update.comp -- particle update, compute-shader path (GL 4.3+).
//
// Buffers:   SSBO binding 0: Particle { vec4 a; vec4 b; vec4 c; } P[u_count]  (std430, 48 bytes each),
//            updated in place.
// Textures:  unit 0 u_mask (StabilityMask), unit 1 u_image (step image).
// Uniforms:  uint u_count (number of particles) + everything documented in particles_common.glsl.
// Dispatch:  ceil(u_count / 256) x 1 x 1 work groups.
// The maths lives in particles_common.glsl so the transform-feedback path is identical.

layout(local_size_x = 256) in;

struct Particle { vec4 a; vec4 b; vec4 c; };
layout(std430, binding = 0) buffer Particles { Particle P[]; };

uniform uint u_count;

#include "particles_common.glsl"

void main() {
    uint i = gl_GlobalInvocationID.x;
    if (i >= u_count) return;
    vec4 a = P[i].a;
    vec4 b = P[i].b;
    vec4 c = P[i].c;
    particle_step(a, b, c);
    P[i].a = a;
    P[i].b = b;
    P[i].c = c;
}
