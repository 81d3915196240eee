// stepx_render_mat.frag -- GLSL MAT pixel shader: soft round sprite, premultiplied alpha
// (the preview's particles_render.frag). Blend One / One Minus Source Alpha, no depth test.

in Vertex {
    vec4 color;
    vec2 corner;
} iVert;

layout(location = 0) out vec4 oFragColor[TD_NUM_COLOR_BUFFERS];

void main() {
    TDCheckDiscard();
    float r2 = dot(iVert.corner, iVert.corner);
    if (r2 > 1.0)
        discard;
    float a = iVert.color.a * (1.0 - smoothstep(0.25, 1.0, r2));
    oFragColor[0] = TDOutputSwizzle(vec4(iVert.color.rgb * a, a));
    for (int i = 1; i < TD_NUM_COLOR_BUFFERS; i++)
        oFragColor[i] = vec4(0.0);
}
