#version 330
// overlay.frag -- heat-map overlay on the step image, the plain step image, or the particle
// view's background. Use with fullscreen.vert.
//
// Textures: unit 0 u_mask  StabilityMask (R32F), v = 0 = top
//           unit 1 u_image step image RGB8,     v = 0 = top
// Uniforms:
//   int   u_mode       0 overlay: mix(image, colormap(S), u_alpha)
//                      1 image:   the step image
//                      2 background: u_background + image * u_image_glow
//   float u_alpha      overlay alpha in [0,1]
//   int   u_colormap   0 inferno, 1 turbo
//   float u_has_image  1.0 when u_image is a real step image (else the image is black)
//   vec3  u_background background colour (mode 2)
//   float u_image_glow image weight behind particles (mode 2)

in vec2 v_uv;
out vec4 f_color;

uniform sampler2D u_mask;
uniform sampler2D u_image;
uniform int   u_mode;
uniform float u_alpha;
uniform int   u_colormap;
uniform float u_has_image;
uniform vec3  u_background;
uniform float u_image_glow;

#include "colormap.glsl"

void main() {
    vec3 img = u_has_image > 0.5 ? textureLod(u_image, v_uv, 0.0).rgb : vec3(0.0);
    vec3 c;
    if (u_mode == 1) {
        c = img;
    } else if (u_mode == 2) {
        c = u_background + img * u_image_glow;
    } else {
        float s = textureLod(u_mask, v_uv, 0.0).r;
        c = mix(img, colormap(s, u_colormap), u_alpha);
    }
    f_color = vec4(c, 1.0);
}
