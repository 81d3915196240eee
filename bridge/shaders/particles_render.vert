#version 330
// particles_render.vert -- draws particles as GL_POINTS with generated depth.
//
// Attributes: in_a = (x, y, vx, vy), in_b = (depth, seed, S, age), in_c = (image rgb, has_image)
//             (see particles_common.glsl; S and the image colour are sampled by the update pass)
// Textures:   none (deliberately: texture fetches in the point pipeline are slow on llvmpipe)
// Uniforms:
//   mat4  u_mvp          world -> clip. World: x = 2u - 1, y = 1 - 2v (image top = +y), z = depth * u_depth_scale
//   float u_depth_scale  world-space height of depth 1.0
//   float u_point_size   point diameter in pixels at unit w
//   vec3  u_phase        phase weights (noise, structure, detail)
//   int   u_colormap     0 inferno, 1 turbo
//   float u_opacity      base particle opacity
// Colour: noise = cool speed-coloured sparks; structure = heat colour of the StabilityMask;
// detail = colour of the step image under the particle. Blends follow the weights (no cuts).

in vec4 in_a;
in vec4 in_b;
in vec4 in_c;

uniform mat4  u_mvp;
uniform float u_depth_scale;
uniform float u_point_size;
uniform vec3  u_phase;
uniform int   u_colormap;
uniform float u_opacity;

out vec4 v_color;

#include "colormap.glsl"

void main() {
    vec2 p = in_a.xy;
    float depth = in_b.x;
    vec4 clip = u_mvp * vec4(2.0 * p.x - 1.0, 1.0 - 2.0 * p.y, depth * u_depth_scale, 1.0);
    gl_Position = clip;

    float S = in_b.z;
    float speed = length(in_a.zw);
    vec3 w = u_phase;
    vec3 cool = mix(vec3(0.20, 0.32, 0.70), vec3(0.70, 0.90, 1.00), clamp(speed * 2.5 + 0.3 * in_b.y, 0.0, 1.0));
    vec3 heat = colormap(0.18 + 0.82 * S, u_colormap);
    vec3 img = in_c.rgb;
    vec3 c = mix(cool, heat, clamp(w.y + w.z, 0.0, 1.0));
    c = mix(c, img, clamp(w.z * in_c.a, 0.0, 1.0));

    float a = u_opacity * mix(1.0, 0.45 + 0.55 * S, clamp(w.y, 0.0, 1.0));
    v_color = vec4(c, a);
    gl_PointSize = max(1.0, u_point_size * (0.75 + 0.5 * depth) / clip.w);
}
