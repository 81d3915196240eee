// trails.glsl -- particle trails by feedback (include file, no #version). Shared by the
// preview (trails.frag) and TouchDesigner (td_components/glsl/stepx_trails.frag and
// stepx_show.frag; a byte-identical copy lives there).
// Uniforms: none, textures: none (every value comes in as a function argument).
//
// Colours are premultiplied (rgb * alpha). Each frame the previous trail image fades by
// `decay` (0 = no trails, 0.9 = long comet tails) and this frame's particles go over it;
// the shown frame puts the trail image over the background.
//
//   vec4 trail_mix(vec4 prev, vec4 cur, float decay)   next trail image
//   vec3 trail_show(vec4 trail, vec3 background)       final colour

vec4 trail_mix(vec4 prev, vec4 cur, float decay) {
    vec4 faded = prev * clamp(decay, 0.0, 0.995);
    faded = max(faded - vec4(1.0 / 512.0), vec4(0.0));  // no ghost that never quite leaves
    return cur + faded * (1.0 - cur.a);
}

vec3 trail_show(vec4 trail, vec3 background) {
    vec3 c = trail.rgb + background * (1.0 - clamp(trail.a, 0.0, 1.0));
    return c / (1.0 + 0.15 * max(c - 1.0, vec3(0.0)));  // soft shoulder where many overlap
}
