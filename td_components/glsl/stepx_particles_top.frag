// stepx_particles_top.frag -- GLSL TOP (pixel shader) version of the StepX particle update.
// One texel = one particle. The force model is shaders/particles_common.glsl, included
// unchanged (td_components/glsl/particles_common.glsl is a byte-identical copy, checked by
// tests/td/test_td_glsl.py); build_network.py splices the #include before loading the DAT.
//
// GLSL TOP setup (build_network.py does this): # of Color Buffers = 3, Pixel Format 32-bit
// float RGBA, resolution = particle grid (e.g. 512 x 512 = 262,144 particles).
//   input 0: state A (x, y, vx, vy)   from a Feedback TOP (first frame: stepx_seed.frag)
//   input 1: state B (depth, seed, S, age)
//   input 2: state C (r, g, b, has_image): step-image colour under the particle
//   Samplers page: u_mask  -> stepx_masks (R = StabilityMask; 16-bit float so it can be
//                             mip-mapped and filtered; filter Mipmap Linear)
//                  u_image -> stepx_image (the step image, 8-bit)
//   Vectors page: every uniform of particles_common.glsl, bound as listed in stepx_td/piece.py
//   (GLSL TOP shaders declare their own uniforms, as below; TouchDesigner only sets them).
// Coordinates: TD textures are bottom-up and the receiver flips rows, so here p.y = 0 is the
// BOTTOM of the image; the maths is the preview's, only u_wind_dir's y points up.

#include "particles_common.glsl"

layout(location = 0) out vec4 oStateA;
layout(location = 1) out vec4 oStateB;
layout(location = 2) out vec4 oStateC;

void main() {
    ivec2 texel = ivec2(gl_FragCoord.xy);
    vec4 a = texelFetch(sTD2DInputs[0], texel, 0);
    vec4 b = texelFetch(sTD2DInputs[1], texel, 0);
    vec4 c = texelFetch(sTD2DInputs[2], texel, 0);
    particle_step(a, b, c);
    oStateA = TDOutputSwizzle(a);
    oStateB = TDOutputSwizzle(b);
    oStateC = TDOutputSwizzle(c);
}
