#version 330
// hud.frag -- composites the HUD texture (text rendered on the CPU) over the frame.
// Use with fullscreen.vert and a viewport set to the HUD rectangle.
// Textures: unit 2 u_hud RGBA8, v = 0 = top row, straight (non-premultiplied) alpha.
// Uniforms: none besides u_hud. Blend with (SRC_ALPHA, ONE_MINUS_SRC_ALPHA).

in vec2 v_uv;
out vec4 f_color;

uniform sampler2D u_hud;

void main() {
    f_color = texture(u_hud, v_uv);
}
