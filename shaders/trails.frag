#version 330
// trails.frag -- the preview's trail passes (use with fullscreen.vert); maths in trails.glsl.
// Textures: unit 0 u_prev (trail image of the previous frame, premultiplied RGBA)
//           unit 1 u_cur  (this frame's particles, premultiplied RGBA)
//           unit 2 u_image (step image, v = 0 = top, for the background glow)
// Uniforms: int u_mode (0 accumulate: trail_mix(prev, cur, u_decay); 1 show: trail_show(prev, background))
//           float u_decay; vec3 u_background; float u_has_image; float u_image_glow
//           (background = u_background + step image * u_image_glow, as TouchDesigner's stepx_show.frag)

in vec2 v_uv;  // image UV (v = 0 top) for u_image; FBO texels are addressed by gl_FragCoord
out vec4 f_color;

uniform sampler2D u_prev;
uniform sampler2D u_cur;
uniform int   u_mode;
uniform float u_decay;
uniform vec3  u_background;
uniform sampler2D u_image;
uniform float u_has_image;
uniform float u_image_glow;

#include "trails.glsl"

void main() {
    ivec2 px = ivec2(gl_FragCoord.xy);
    vec4 prev = texelFetch(u_prev, px, 0);
    if (u_mode == 1) {
        vec3 img = u_has_image > 0.5 ? textureLod(u_image, v_uv, 0.0).rgb : vec3(0.0);
        f_color = vec4(trail_show(prev, u_background + img * u_image_glow), 1.0);
    } else {
        f_color = trail_mix(prev, texelFetch(u_cur, px, 0), u_decay);
    }
}
