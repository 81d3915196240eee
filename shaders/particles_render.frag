#version 330
// particles_render.frag -- soft round point sprite, premultiplied alpha output.
// Inputs: v_color (rgb, alpha) from particles_render.vert. No uniforms, no textures.
// Blend with (ONE, ONE_MINUS_SRC_ALPHA).

in vec4 v_color;
out vec4 f_color;

void main() {
    vec2 d = gl_PointCoord * 2.0 - 1.0;
    float r2 = dot(d, d);
    if (r2 > 1.0) discard;
    float a = v_color.a * (1.0 - smoothstep(0.25, 1.0, r2));
    f_color = vec4(v_color.rgb * a, a);
}
