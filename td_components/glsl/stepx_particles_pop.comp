// stepx_particles_pop.comp -- GLSL POP (TouchDesigner 2025 POPs) version of the StepX
// particle update, Attribute Class = Point. The force model is shaders/particles_common.glsl,
// included unchanged (build_network.py splices the #include).
//
// Point attributes (created on the GLSL POP's Create Attributes page and listed in its Output
// Attributes by build_network.py; the result is fed back through a Feedback POP). Age 0 means
// "not seeded yet": such a particle is placed at random over the image (first frame, Reset).
//   P          vec3  (x, y) = position in texture UV (y = 0 bottom in TD), z unused
//   stepxVel   vec3  (vx, vy) velocity in UV / s, z unused
//   stepxState vec4  (depth, seed, S, age), seed uniform in [0, 1)
//   Color      vec4  (r, g, b, has_image): step-image colour under the particle (render with it)
// Samplers page: u_mask -> stepx_masks (R = StabilityMask, 16-bit float, mipmapped),
//                u_image -> stepx_image. Vectors page: the uniforms of particles_common.glsl.
// TouchDesigner declares a GLSL POP's uniforms and samplers itself, from those pages ("Write
// GLSL POPs"), so this shader must not: STEPX_HOST_DECLARES_UNIFORMS drops the declarations
// from the shared force model (declaring them again is a redefinition and does not compile).

#define STEPX_HOST_DECLARES_UNIFORMS
#include "particles_common.glsl"

void main() {
    const uint id = TDIndex();
    if (id >= TDNumElements())
        return;
    vec3 p0 = TDIn_P();
    vec3 v0 = TDIn_stepxVel();
    vec4 a = vec4(p0.xy, v0.xy);
    vec4 b = TDIn_stepxState();
    vec4 c = TDIn_Color();
    if (b.w <= 0.0) {
        // First frame (created attributes start at 0, age included) or a Feedback POP reset:
        // spread the particles uniformly over the image, at rest, each with its own random.
        uint h = px_hash(id * 747796405u + 2891336453u);
        a = vec4(float(px_hash(h ^ 0x68bc21ebu) >> 8) / 16777216.0, float(px_hash(h ^ 0x02e5be93u) >> 8) / 16777216.0, 0.0, 0.0);
        b = vec4(0.0, float(px_hash(h ^ 0x967a889bu) >> 8) / 16777216.0, 0.0, 0.0);
        c = vec4(0.0);
    }
    particle_step(a, b, c);
    P[id] = vec3(a.xy, p0.z);
    stepxVel[id] = vec3(a.zw, 0.0);
    stepxState[id] = b;
    Color[id] = c;
}
