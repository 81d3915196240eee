// stepx_render_mat.vert -- GLSL MAT vertex shader: one instance per particle (Geometry COMP
// instancing, count = Grid x Grid), each a small camera-facing quad (a 1 x 1 Rectangle SOP).
// Place, size and colour come from particles_look.glsl, the preview's own look (shared file).
//
// Samplers page: sStateA/B/C -> stepx_sim, stepx_sim_b, stepx_sim_c (state A, B, C of this frame;
//                filter Nearest: one texel = one particle)
// Vectors page (stepx_td/piece.py RENDER_UNIFORMS): u_phase, u_grid, u_depth_scale,
//                u_point_size, u_opacity, u_colormap
// TouchDesigner supplies P, uTDMats, TDInstanceID(), TDCameraIndex() ("Write a GLSL Material").

uniform sampler2D sStateA;
uniform sampler2D sStateB;
uniform sampler2D sStateC;
uniform vec3  u_phase;
uniform float u_grid;
uniform float u_depth_scale;
uniform float u_point_size;
uniform float u_opacity;
uniform float u_colormap;

out Vertex {
    vec4 color;
    vec2 corner;
} oVert;

#include "colormap.glsl"
#include "particles_look.glsl"

void main() {
    int id = TDInstanceID();
    int grid = max(int(u_grid + 0.5), 1);
    ivec2 texel = ivec2(id % grid, id / grid);
    vec4 a = texelFetch(sStateA, texel, 0);
    vec4 b = texelFetch(sStateB, texel, 0);
    vec4 c = texelFetch(sStateC, texel, 0);
    int cam = TDCameraIndex();
    // TouchDesigner's textures are bottom-up: state y = 0 is the image's bottom, so y_sign = +1.
    vec4 world = uTDMats[cam].world * vec4(particle_world(a, b, u_depth_scale, 1.0), 1.0);
    vec4 view = uTDMats[cam].cam * world;
    // u_point_size is in pixels at 512 px height. With the camera's field of view set to
    // 2 atan(1 / distance) (as the preview's), a quad 2 x size / 512 wide in view space covers
    // what the preview's gl_PointSize covers.
    view.xy += P.xy * (u_point_size * particle_size(b, u_phase) * (2.0 / 512.0));
    gl_Position = uTDMats[cam].proj * view;
    oVert.color = particle_color(a, b, c, u_phase, int(u_colormap + 0.5), u_opacity);
    oVert.corner = P.xy * 2.0;  // -1..1 across the sprite
}
