// particles_look.glsl -- how one particle looks: place, size and colour from its state.
// Include file, no #version. Shared by the preview (particles_render.vert) and TouchDesigner's
// GLSL MAT (td_components/glsl/stepx_render_mat.vert; a byte-identical copy lives there), so the
// picture checked here is the picture TouchDesigner draws. Needs colormap.glsl included first.
// Uniforms: none, textures: none (every value comes in as a function argument).
//
// State (see particles_common.glsl): a = (x, y, vx, vy), b = (depth, seed, S, age),
// c = (r, g, b, has_image). w = phase weights (noise, structure, detail), already smoothed.
//
//   vec3  particle_world(a, b, depth_scale, y_sign)  world position: x = 2u - 1,
//         y = y_sign * (2v - 1) (-1 where v = 0 is the image's top, +1 where it is the bottom),
//         z = depth * depth_scale: attended (and, in the detail phase, bright) regions rise.
//   float particle_size(b, w)                        size factor (~0.6..1.6) for the sprite
//   vec4  particle_color(a, b, c, w, cmap, opacity)  straight (not premultiplied) rgb + alpha
//
// Look: noise = cool blue sparks, brighter when fast; structure = heat colour of the attention
// under the particle (chaos fades them, stability makes them glow); detail = the step image's
// colour under the particle. Every blend follows the weights, so the phases morph, never cut.

vec3 particle_world(vec4 a, vec4 b, float depth_scale, float y_sign) {
    return vec3(2.0 * a.x - 1.0, y_sign * (2.0 * a.y - 1.0), b.x * depth_scale);
}

float particle_size(vec4 b, vec3 w) {
    float S = b.z;
    return (0.75 + 0.5 * b.x) * mix(1.0, 0.7 + 0.9 * S, clamp(w.y + w.z, 0.0, 1.0));
}

vec4 particle_color(vec4 a, vec4 b, vec4 c, vec3 w, int cmap, float opacity) {
    float S = b.z;
    float speed = length(a.zw);
    vec3 cool = mix(vec3(0.16, 0.28, 0.72), vec3(0.72, 0.92, 1.00), clamp(speed * 2.5 + 0.3 * b.y, 0.0, 1.0));
    vec3 heat = colormap(0.15 + 0.85 * S, cmap);
    vec3 structure = mix(cool * 0.6, heat, smoothstep(0.02, 0.35, S));  // chaos stays as faint smoke
    vec3 col = mix(cool, structure, clamp(w.y + w.z, 0.0, 1.0));
    col = mix(col, c.rgb * (0.85 + 0.3 * S), clamp(w.z * c.a, 0.0, 1.0));
    float alpha = opacity * mix(0.6, 1.0, clamp(w.y + w.z, 0.0, 1.0))
                * mix(1.0, 0.5 + 0.5 * S, clamp(w.y, 0.0, 1.0)) * mix(1.0, 0.6 + 0.4 * S, clamp(w.z, 0.0, 1.0));
    return vec4(col, alpha);
}
