#version 330
// particles_render.vert -- the preview's particles as GL_POINTS with generated depth.
//
// Attributes: in_a = (x, y, vx, vy), in_b = (depth, seed, S, age), in_c = (image rgb, has_image)
//             (see particles_common.glsl; S and the image colour are sampled by the update pass)
// Textures:   none (deliberately: texture fetches in the point pipeline are slow on llvmpipe)
// Uniforms:
//   mat4  u_mvp          world -> clip (world: see particles_look.glsl, image top = +y)
//   float u_depth_scale  world-space height of depth 1.0
//   float u_point_size   point diameter in pixels at unit w
//   vec3  u_phase        phase weights (noise, structure, detail)
//   int   u_colormap     0 inferno, 1 turbo
//   float u_opacity      base particle opacity
// Place, size and colour come from particles_look.glsl, shared with TouchDesigner's GLSL MAT.

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
#include "particles_look.glsl"

void main() {
    vec4 clip = u_mvp * vec4(particle_world(in_a, in_b, u_depth_scale, -1.0), 1.0);
    gl_Position = clip;
    v_color = particle_color(in_a, in_b, in_c, u_phase, u_colormap, u_opacity);
    gl_PointSize = max(1.0, u_point_size * particle_size(in_b, u_phase) / clip.w);
}
