// colormap.glsl -- heat-map colour maps as polynomial LUTs (include file, no #version).
//
// Spliced into other shaders by bridge/preview/shaders.py via an include line naming colormap.glsl.
// No uniforms, no textures.
//
//   vec3 inferno(float t)            t in [0,1]  (polynomial fit of matplotlib 'inferno', CC0, M. Zucker)
//   vec3 turbo(float t)              t in [0,1]  (polynomial fit of Google 'turbo', Apache-2.0, A. Mikhailov / R. Du)
//   vec3 colormap(float t, int map)  map 0 = inferno, 1 = turbo
//
// The same polynomials are mirrored in numpy by bridge.preview.colormap for tests and CPU use.

vec3 inferno(float t) {
    t = clamp(t, 0.0, 1.0);
    const vec3 c0 = vec3(0.0002189403691192265, 0.001651004631001012, -0.01948089843709184);
    const vec3 c1 = vec3(0.1065134194856116, 0.5639564367884091, 3.932712388889277);
    const vec3 c2 = vec3(11.60249308247187, -3.972853965665698, -15.9423941062914);
    const vec3 c3 = vec3(-41.70399613139459, 17.43639888205313, 44.35414519872813);
    const vec3 c4 = vec3(77.162935699427, -33.40235894210092, -81.80730925738993);
    const vec3 c5 = vec3(-71.31942824499214, 32.62606426397723, 73.20951985803202);
    const vec3 c6 = vec3(25.13112622477341, -12.24266895238567, -23.07032500287172);
    return clamp(c0 + t * (c1 + t * (c2 + t * (c3 + t * (c4 + t * (c5 + t * c6))))), 0.0, 1.0);
}

vec3 turbo(float t) {
    t = clamp(t, 0.0, 1.0);
    const vec4 kr4 = vec4(0.13572138, 4.61539260, -42.66032258, 132.13108234);
    const vec4 kg4 = vec4(0.09140261, 2.19418839, 4.84296658, -14.18503333);
    const vec4 kb4 = vec4(0.10667330, 12.64194608, -60.58204836, 110.36276771);
    const vec2 kr2 = vec2(-152.94239396, 59.28637943);
    const vec2 kg2 = vec2(4.27729857, 2.82956604);
    const vec2 kb2 = vec2(-89.90310912, 27.34824973);
    vec4 v4 = vec4(1.0, t, t * t, t * t * t);
    vec2 v2 = v4.zw * v4.z;
    return clamp(vec3(dot(v4, kr4) + dot(v2, kr2),
                      dot(v4, kg4) + dot(v2, kg2),
                      dot(v4, kb4) + dot(v2, kb2)), 0.0, 1.0);
}

vec3 colormap(float t, int map) {
    return map == 1 ? turbo(t) : inferno(t);
}
