// stepx_show.frag -- GLSL TOP: the shown frame, trails over the background (trails.glsl).
//   input 0: the trail image (stepx_trails)
//   input 1: the step image (stepx_image), glowing behind the particles in the detail phase
// Uniforms: vec3 u_background, float u_image_glow (Glow x detail weight), float u_has_image.

uniform vec3  u_background;
uniform float u_image_glow;
uniform float u_has_image;

out vec4 fragColor;

#include "trails.glsl"

void main() {
    vec4 trail = texture(sTD2DInputs[0], vUV.st);
    vec3 img = u_has_image > 0.5 ? texture(sTD2DInputs[1], vUV.st).rgb : vec3(0.0);
    fragColor = TDOutputSwizzle(vec4(trail_show(trail, u_background + img * u_image_glow), 1.0));
}
