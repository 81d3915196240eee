// particles_common.glsl -- the particle force model shared by the compute shader
// (particles_update.comp) and the transform-feedback fallback (particles_update_tf.vert).
// Include file, no #version; spliced in by bridge/preview/shaders.py (`#include`).
//
// Coordinates: particle position p is in image UV, p = (x, y) in [0,1)^2 with y = 0 the TOP
// row of the image. Textures are uploaded from numpy rows unflipped, so texture v = 0 holds
// array row 0 = top: sampling at (p.x, p.y) reads mask[y*H, x*W] directly.
//
// Particle state (48 bytes, std430 / interleaved '4f 4f 4f'):
//   a = (x, y, vx, vy)        position (UV) and velocity (UV / s)
//   b = (depth, seed, S, age) smoothed generated depth in [0,1], per-particle random in [0,1),
//                             StabilityMask at the particle, seconds alive
//   c = (r, g, b, has_image)  step-image colour under the particle (so the render pass needs
//                             no texture fetches; llvmpipe's point pipeline is slow at them)
//
// Uniforms:
//   sampler2D u_mask        texture unit 0: StabilityMask = attention (R32F, mipmapped, clamp)
//   sampler2D u_image       texture unit 1: step image RGB8 (used for depth in the detail phase)
//   float u_has_image       1.0 when u_image holds a real step image, else 0.0
//   vec3  u_phase           phase weights (noise, structure, detail), sum 1, already smoothed
//   float u_time            seconds since start (animates the wind)
//   float u_dt              integration step in seconds
//   float u_wind            wind (chaos) acceleration, UV / s^2
//   float u_wind_scale      spatial frequency of the curl-noise wind (cells across the image)
//   vec2  u_wind_dir        constant drift added to the wind (UV / s^2, y down)
//   float u_chaos_floor     minimum ChaosMask once structure forms (keeps attended particles alive)
//   float u_attraction      attraction acceleration, UV / s^2
//   float u_damping         base velocity damping, 1 / s
//   float u_grip            extra damping where StabilityMask is high, 1 / s
//   vec2  u_mask_size       mask size in texels (W, H)
//   float u_mask_lod_max    coarsest mip level used for the attraction gradient
//   float u_depth_rate      depth smoothing rate, 1 / s
//
// Force model (see docs/PREVIEW.md):
//   S = StabilityMask(p) = attention, C = ChaosMask(p) = 1 - S
//   C' = w_n + (1 - w_n) * max(C, chaos_floor)
//   Chaos     = Wind(p, t) * C' * g_c,   Wind = curl of 2-octave gradient noise + drift
//   Stability = Attraction * grad_hat(S~)(p) * hunger * g_s
//               S~ = multi-scale (mip pyramid) StabilityMask; grad_hat = normalised ascent direction
//               hunger = clamp((theta_i - S) / 0.08, 0, 1), theta_i = 0.1 + 0.7 * seed_i
//   g_c = w . (1, 0.45, 0.15),  g_s = w . (0, 1, 0.5)
//   k   = damping * w . (1, 1, 2.5) + grip * S * (w_s + w_d)
//   v <- (v + dt (Chaos + Stability)) * exp(-k dt);  p <- fract(p + dt v)
//   depth <- depth + (mix(S, luminance(image(p)), w_d) - depth) * (1 - exp(-depth_rate dt))

// A host that declares the uniforms itself from its parameter pages (TouchDesigner's GLSL POP)
// defines STEPX_HOST_DECLARES_UNIFORMS before the include; everyone else gets them here.
#ifndef STEPX_HOST_DECLARES_UNIFORMS
uniform sampler2D u_mask;
uniform sampler2D u_image;
uniform float u_has_image;
uniform vec3  u_phase;
uniform float u_time;
uniform float u_dt;
uniform float u_wind;
uniform float u_wind_scale;
uniform vec2  u_wind_dir;
uniform float u_chaos_floor;
uniform float u_attraction;
uniform float u_damping;
uniform float u_grip;
uniform vec2  u_mask_size;
uniform float u_mask_lod_max;
uniform float u_depth_rate;
#endif

uint px_hash(uint x) {
    x ^= x >> 16; x *= 0x7feb352du;
    x ^= x >> 15; x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

vec2 px_grad(vec2 cell) {
    uvec2 c = uvec2(ivec2(cell) + ivec2(4096));
    uint h = px_hash(c.x * 1664525u ^ px_hash(c.y + 1013904223u));
    float a = float(h >> 8) * (6.28318530718 / 16777216.0);
    return vec2(cos(a), sin(a));
}

// 2D gradient noise with analytic derivatives: returns (value, d/dx, d/dy).
vec3 px_noised(vec2 p) {
    vec2 i = floor(p);
    vec2 f = p - i;
    vec2 u = f * f * f * (f * (f * 6.0 - 15.0) + 10.0);
    vec2 du = 30.0 * f * f * (f * (f - 2.0) + 1.0);
    vec2 ga = px_grad(i);
    vec2 gb = px_grad(i + vec2(1.0, 0.0));
    vec2 gc = px_grad(i + vec2(0.0, 1.0));
    vec2 gd = px_grad(i + vec2(1.0, 1.0));
    float va = dot(ga, f);
    float vb = dot(gb, f - vec2(1.0, 0.0));
    float vc = dot(gc, f - vec2(0.0, 1.0));
    float vd = dot(gd, f - vec2(1.0, 1.0));
    float k = va - vb - vc + vd;
    return vec3(va + u.x * (vb - va) + u.y * (vc - va) + u.x * u.y * k,
                ga + u.x * (gb - ga) + u.y * (gc - ga) + u.x * u.y * (ga - gb - gc + gd)
                   + du * (u.yx * k + vec2(vb, vc) - va));
}

// Divergence-free wind: curl of a 2-octave, time-travelling noise potential, plus drift.
vec2 px_wind(vec2 p, float t) {
    float f = u_wind_scale;
    vec3 n1 = px_noised(p * f + vec2(37.0 + 0.31 * t, 11.0 + 0.17 * t));
    vec3 n2 = px_noised(p * (2.03 * f) + vec2(5.0 - 0.23 * t, 71.0 + 0.29 * t));
    vec2 g = n1.yz + 1.015 * n2.yz;             // gradient of the potential / f
    return vec2(g.y, -g.x) * 0.7 + u_wind_dir;
}

float px_stability(vec2 uv) {
    return textureLod(u_mask, uv, 0.0).r;
}

// Normalised gradient-ascent direction on the mip pyramid of the StabilityMask: fine levels
// follow the shape, coarse levels reach particles far away from anything attended.
vec2 px_attraction_dir(vec2 uv) {
    vec2 g = vec2(0.0);
    for (int k = 0; k < 4; ++k) {
        float lod = u_mask_lod_max * float(k) / 3.0;
        vec2 h = exp2(lod) / u_mask_size;
        float dx = textureLod(u_mask, uv + vec2(h.x, 0.0), lod).r - textureLod(u_mask, uv - vec2(h.x, 0.0), lod).r;
        float dy = textureLod(u_mask, uv + vec2(0.0, h.y), lod).r - textureLod(u_mask, uv - vec2(0.0, h.y), lod).r;
        g += vec2(dx, dy);
    }
    return g / (length(g) + 1e-4);
}

void particle_step(inout vec4 a, inout vec4 b, inout vec4 c) {
    vec2 p = a.xy;
    vec2 v = a.zw;
    vec3 w = u_phase;
    float S = px_stability(p);
    float C = 1.0 - S;
    float chaos_mask = w.x + (1.0 - w.x) * max(C, u_chaos_floor);
    vec2 chaos = px_wind(p, u_time) * (u_wind * chaos_mask * dot(w, vec3(1.0, 0.45, 0.15)));
    // Each particle wants to stand where S >= its own threshold theta (from its seed): the
    // thresholds spread the particles over the mask's level sets instead of collapsing them
    // onto its maxima, so the cloud fills the attended shape with density rising with S.
    float theta = 0.1 + 0.7 * b.y;
    float hunger = clamp((theta - S) * 12.5, 0.0, 1.0);
    vec2 stability = px_attraction_dir(p) * (u_attraction * hunger * dot(w, vec3(0.0, 1.0, 0.5)));
    float k = u_damping * dot(w, vec3(1.0, 1.0, 2.5)) + u_grip * S * (w.y + w.z);
    v = (v + u_dt * (chaos + stability)) * exp(-k * u_dt);
    p = fract(p + u_dt * v);
    float S1 = px_stability(p);
    float lum = S1;
    c.a = 0.0;  // keeps the last colour, flagged stale
    if (u_has_image > 0.5) {
        c = vec4(textureLod(u_image, p, 0.0).rgb, 1.0);
        lum = dot(c.rgb, vec3(0.2126, 0.7152, 0.0722));
    }
    float target = mix(S1, lum, w.z);
    b.x += (target - b.x) * (1.0 - exp(-u_depth_rate * u_dt));
    b.z = S1;
    b.w += u_dt;
    a = vec4(p, v);
}
