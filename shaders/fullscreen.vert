#version 330
// fullscreen.vert -- one triangle covering the viewport, no attributes (draw 3 vertices).
// Output v_uv: image UV with v = 0 at the TOP of the viewport (matches textures uploaded from
// numpy rows unflipped, row 0 = top). No uniforms, no textures.

out vec2 v_uv;

void main() {
    vec2 ndc = vec2(gl_VertexID == 1 ? 3.0 : -1.0, gl_VertexID == 2 ? 3.0 : -1.0);
    v_uv = vec2(0.5 * (ndc.x + 1.0), 0.5 * (1.0 - ndc.y));
    gl_Position = vec4(ndc, 0.0, 1.0);
}
