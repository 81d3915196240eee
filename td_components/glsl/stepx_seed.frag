// stepx_seed.frag -- GLSL TOP (3 colour buffers, 32-bit float RGBA) that seeds the particle
// state: one texel = one particle, uniformly spread over the image, at rest, depth 0, with an
// independent random per particle (state B.y). Three independent hashes per texel: particles
// do not start on a diagonal (the pre-fix network seeded every buffer from one monochrome noise).
// Feeds the Feedback TOPs' inputs (used on the first frame and on Reset).
// Uniform: float u_seed (the piece's Seed parameter).

uniform float u_seed;

layout(location = 0) out vec4 oStateA;
layout(location = 1) out vec4 oStateB;
layout(location = 2) out vec4 oStateC;

uint seed_hash(uint x) {
    x ^= x >> 16; x *= 0x7feb352du;
    x ^= x >> 15; x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

float seed_unit(uint x) {
    return float(seed_hash(x) >> 8) * (1.0 / 16777216.0);  // [0, 1)
}

void main() {
    uvec2 t = uvec2(gl_FragCoord.xy);
    uint base = seed_hash(t.x * 1973u + t.y * 9277u * 4099u + uint(u_seed) * 26699u);
    oStateA = TDOutputSwizzle(vec4(seed_unit(base ^ 0x68bc21ebu), seed_unit(base ^ 0x02e5be93u), 0.0, 0.0));
    oStateB = TDOutputSwizzle(vec4(0.0, seed_unit(base ^ 0x967a889bu), 0.0, 0.0));
    oStateC = TDOutputSwizzle(vec4(0.0));
}
