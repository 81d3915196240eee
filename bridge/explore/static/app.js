// StepX Explorer page: plain JavaScript and canvas, no build step, nothing from a CDN.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
const state = { info: null, generated: null, colormap: null };

async function api(path, options = {}) {
  const res = await fetch(path, options);
  if (!res.ok) {
    let message = res.status + " " + res.statusText;
    try { message = (await res.json()).error || message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return res;
}
const postJSON = (path, body) => api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) }).then(r => r.json());

function figure(src, caption) {  // text goes in as text, never as markup
  const fig = document.createElement("figure"), img = document.createElement("img"), cap = document.createElement("figcaption");
  img.src = src; img.alt = caption; cap.textContent = caption;
  fig.append(img, cap);
  return fig;
}

function say(el, text, kind = "") { el.textContent = text; el.className = "status " + kind; }

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => fetch(url).then(r => r.json()).then(j => reject(new Error(j.error || "image failed")), () => reject(new Error("image failed: " + url)));
    img.src = url;
  });
}

// inferno as the exports draw it: a 256-entry table from the server (bridge.export.heat_rgb, sampled)
function colour(t) {
  const lut = state.colormap;
  return lut[Math.round(255 * Math.min(1, Math.max(0, t || 0)))];
}

// ---------------------------------------------------------------- tabs
function showTab(name) {
  $$("#tabs button").forEach(b => b.classList.toggle("active", b.dataset.tab === name));
  $$(".tab").forEach(s => s.classList.toggle("active", s.id === "tab-" + name));
  document.body.dataset.tab = name;
  if (name === "regions") Regions.show();
  if (name === "heads") Heads.show();
  if (name === "detect" || name === "titan") Objects.show(name);
}

// ---------------------------------------------------------------- inspector (Generate & Inspect, Traces)
class Inspector {
  constructor(host) {
    host.appendChild($("#inspector-template").content.cloneNode(true));
    this.root = $(".inspector", host);
    this.run = null;
    this.images = new Map();
    this.ticket = 0;
    const r = this.root;
    $(".word", r).addEventListener("change", () => this.draw());
    $(".step", r).addEventListener("input", () => this.draw());
    $(".alpha", r).addEventListener("input", () => this.draw());
    $(".gif", r).addEventListener("click", () => this.gif());
    $(".export", r).addEventListener("click", () => this.exportAll());
  }
  get word() { return $(".word", this.root).value; }
  get step() { return this.run.steps[+$(".step", this.root).value]; }
  get alpha() { return +$(".alpha", this.root).value; }
  url(what, extra = "") { return `/api/runs/${this.run.id}/${what}?step=${this.step}&word=${encodeURIComponent(this.word)}${extra}`; }

  load(run) {
    this.run = run;
    this.images.clear();
    const r = this.root;
    $(".empty", r).hidden = true;
    $(".body", r).hidden = false;
    $(".prompt", r).textContent = `“${run.prompt}” — ${run.model || "trace"}, seed ${run.seed ?? "?"}, ${run.steps.length} steps${run.complete ? "" : " (incomplete run)"}`;
    $(".image-note", r).textContent = run.images;
    const sel = $(".word", r);
    sel.innerHTML = "";
    for (const w of run.words) sel.add(new Option(w === "Global" ? "Global (sum over words)" : w, w));
    const step = $(".step", r);
    step.max = run.steps.length - 1;
    step.value = run.steps.length - 1;
    for (const c of $$("canvas", r)) { c.width = run.width; c.height = run.height; }
    $(".gif-link", r).hidden = $(".export-link", r).hidden = $(".gif-view", r).hidden = true;
    say($(".status", r), "");
    this.draw();
  }

  image(url) {
    if (!this.images.has(url)) this.images.set(url, loadImage(url));
    return this.images.get(url);
  }

  async draw() {
    if (!this.run) return;
    const r = this.root, ticket = ++this.ticket;
    r.dataset.state = "loading";
    $(".step-out", r).textContent = `${this.step} / ${this.run.steps[this.run.steps.length - 1]}`;
    $(".alpha-out", r).textContent = this.alpha.toFixed(2);
    try {
      const [img, heat] = await Promise.all([
        this.image(`/api/runs/${this.run.id}/image.png?step=${this.step}`), this.image(this.url("heat.png"))]);
      if (ticket !== this.ticket) return;  // a newer draw started meanwhile
      const ov = $(".overlay", r).getContext("2d"), hc = $(".heat", r).getContext("2d");
      const { width: w, height: h } = $(".overlay", r);
      ov.globalAlpha = 1; ov.drawImage(img, 0, 0, w, h);
      ov.globalAlpha = this.alpha; ov.drawImage(heat, 0, 0, w, h);  // mix(image, colormap(map), alpha), as exports blend
      ov.globalAlpha = 1;
      hc.drawImage(heat, 0, 0, w, h);
      Object.assign(r.dataset, { state: "ready", step: this.step, word: this.word, alpha: this.alpha });
    } catch (e) {
      if (ticket !== this.ticket) return;
      r.dataset.state = "error";
      say($(".status", r), e.message, "error");
    }
  }

  async download(path, link, label, busy) {
    const r = this.root;
    say($(".status", r), busy);
    r.dataset.download = "busy";
    try {
      const res = await api(path);
      const blob = await res.blob();
      const name = (res.headers.get("Content-Disposition") || "").match(/filename="([^"]+)"/);
      link.href = URL.createObjectURL(blob);
      link.download = name ? name[1] : label;
      link.textContent = `download ${link.download} (${(blob.size / 1024).toFixed(0)} kB)`;
      link.hidden = false;
      say($(".status", r), "");
      r.dataset.download = "ready";
      return link;
    } catch (e) {
      r.dataset.download = "error";
      say($(".status", r), e.message, "error");
      return null;
    }
  }

  async gif() {
    const link = await this.download(`/api/runs/${this.run.id}/word.gif?word=${encodeURIComponent(this.word)}&alpha=${this.alpha}`,
      $(".gif-link", this.root), "word.gif", `making the GIF of “${this.word}” over ${this.run.steps.length} steps…`);
    if (link) { const v = $(".gif-view", this.root); v.src = link.href; v.hidden = false; }
  }

  async exportAll() {
    const link = await this.download(`/api/runs/${this.run.id}/export.zip?alpha=${this.alpha}`, $(".export-link", this.root),
      "export.zip", "exporting every word and step: overlays, CSVs, per-word GIFs, plots, COCO…");
    if (link) link.click();
  }
}

// ---------------------------------------------------------------- Generate & Inspect
const inspector = new Inspector($("#inspect-view"));

$("#gen-form").addEventListener("submit", async ev => {
  ev.preventDefault();
  const status = $("#gen-status"), go = $("#gen-go");
  go.disabled = true;
  say(status, "generating (the model loads on first use)…");
  document.body.dataset.generating = "1";
  try {
    const run = await postJSON("/api/generate", {
      prompt: $("#gen-prompt").value, model: $("#gen-model").value, seed: +$("#gen-seed").value,
      steps: +$("#gen-steps").value, guidance: $("#gen-guidance").value === "" ? null : +$("#gen-guidance").value });
    state.generated = run;
    say(status, `done: ${run.steps.length} steps, ${run.width}×${run.height}, ${run.model}`, "ok");
    inspector.load(run);
  } catch (e) {
    say(status, e.message, "error");
  } finally {
    go.disabled = false;
    delete document.body.dataset.generating;
  }
});

// ---------------------------------------------------------------- Region-to-region
const Regions = {
  poly: [], drag: null, image: null,
  canvas: $("#rg-canvas"),
  mode() { return $("input[name=rg-mode]:checked").value; },
  async show() {
    const run = state.generated;
    if (!run) { say($("#rg-status"), "Generate an image in Generate & Inspect first.", "error"); return; }
    if (this.runId === run.id) return;
    this.runId = run.id; this.poly = []; this.box = null; this.point = null;
    $("#rg-results").innerHTML = "";
    const [h, w] = run.grid;
    $("#rg-grid").textContent = `Image ${run.width}×${run.height} px; attention grid ${w}×${h} = ${w * h} cells (indices 0-${w * h - 1}, row by row from the top left).`;
    this.canvas.width = run.width; this.canvas.height = run.height;
    this.image = await loadImage(`/api/runs/${run.id}/image.png?step=${run.steps[run.steps.length - 1]}`);
    say($("#rg-status"), "");
    this.paint();
  },
  at(ev) {  // canvas event -> image pixel
    const b = this.canvas.getBoundingClientRect();
    return [Math.round((ev.clientX - b.left) * this.canvas.width / b.width), Math.round((ev.clientY - b.top) * this.canvas.height / b.height)];
  },
  paint() {
    const g = this.canvas.getContext("2d");
    if (this.image) g.drawImage(this.image, 0, 0, this.canvas.width, this.canvas.height);
    g.lineWidth = 2; g.strokeStyle = "#35e0ff"; g.fillStyle = "#35e0ff";
    const box = this.drag || this.box;
    if (box) g.strokeRect(box[0], box[1], box[2] - box[0], box[3] - box[1]);
    if (this.poly.length) {
      g.beginPath(); this.poly.forEach(([x, y], i) => i ? g.lineTo(x, y) : g.moveTo(x, y));
      if (this.poly.length > 2) g.closePath();
      g.stroke(); this.poly.forEach(([x, y]) => g.fillRect(x - 2, y - 2, 4, 4));
    }
    if (this.point) { g.beginPath(); g.arc(this.point[0], this.point[1], 4, 0, 7); g.fill(); }
  },
  async outline(fig, body) {  // the queried region drawn over an answer, in the image's own pixels
    const img = $("img", fig), run = state.generated;
    await img.decode();
    const c = document.createElement("canvas");
    c.width = run.width; c.height = run.height; c.className = "answer";
    const g = c.getContext("2d");
    g.drawImage(img, 0, 0, c.width, c.height);
    g.lineWidth = Math.max(2, run.width / 128); g.strokeStyle = "#35e0ff"; g.fillStyle = "#35e0ff";
    if (body.kind === "box") g.strokeRect(body.x0, body.y0, body.x1 - body.x0, body.y1 - body.y0);
    if (body.kind === "pixel" || body.kind === "diffused") { g.beginPath(); g.arc(body.x, body.y, 2 * g.lineWidth, 0, 7); g.fill(); }
    if (body.kind === "polygon") {
      const pts = body.spec.trim().split(/[\s,;]+/).map(Number);
      g.beginPath();
      for (let i = 0; i + 1 < pts.length; i += 2) i ? g.lineTo(pts[i], pts[i + 1]) : g.moveTo(pts[i], pts[i + 1]);
      g.closePath(); g.stroke();
    }
    img.replaceWith(c);
  },
  async ask(body) {
    const run = state.generated;
    const status = $("#rg-status"), out = $("#rg-results");
    if (!run) { say(status, "Generate an image in Generate & Inspect first.", "error"); return; }
    say(status, "computing self-attention for the region (re-running the same seed)…");
    out.dataset.state = "loading";
    try {
      const ans = await postJSON(`/api/runs/${run.id}/region`, body);
      out.innerHTML = "";
      for (const [name, s] of Object.entries(ans.stages)) {
        const fig = figure(s.overlay, `${name} (step ${s.step})`);
        out.appendChild(fig);
        this.outline(fig, body);
      }
      say(status, `${ans.query} query over ${ans.cells} of ${ans.grid[0] * ans.grid[1]} grid cells: early, mid and late steps side by side.`, "ok");
      out.dataset.state = "ready";
    } catch (e) {
      say(status, e.message, "error");
      out.dataset.state = "error";
    }
  },
};
Regions.canvas.addEventListener("mousedown", ev => {
  const [x, y] = Regions.at(ev), mode = Regions.mode();
  if (mode === "box") { Regions.drag = [x, y, x, y]; }
  else if (mode === "polygon") { Regions.poly.push([x, y]); $("#rg-poly").value = Regions.poly.map(p => p.join(",")).join(" "); }
  else {
    Regions.point = [x, y];
    if (mode === "pixel") Regions.ask({ kind: "pixel", x, y });
    else $("#rg-diff").value = `${x},${y}`;
  }
  Regions.paint();
});
Regions.canvas.addEventListener("mousemove", ev => {
  if (!Regions.drag) return;
  const [x, y] = Regions.at(ev);
  Regions.drag[2] = x; Regions.drag[3] = y; Regions.paint();
});
window.addEventListener("mouseup", () => {
  if (!Regions.drag) return;
  const [x0, y0, x1, y1] = Regions.drag;
  Regions.box = [Math.min(x0, x1), Math.min(y0, y1), Math.max(x0, x1), Math.max(y0, y1)];
  Regions.drag = null;
  $("#rg-box").value = `${Regions.box[0]},${Regions.box[1]} ${Regions.box[2]},${Regions.box[3]}`;
  Regions.paint();
});
$("#rg-pixels-go").onclick = () => Regions.ask({ kind: "pixels", spec: $("#rg-pixels").value });
$("#rg-box-go").onclick = () => {
  if (!Regions.box) { say($("#rg-status"), "Drag a rectangle on the image first (choose Bounding box).", "error"); return; }
  const [x0, y0, x1, y1] = Regions.box;
  Regions.ask({ kind: "box", x0, y0, x1, y1 });
};
$("#rg-poly-go").onclick = () => Regions.ask({ kind: "polygon", spec: $("#rg-poly").value });
$("#rg-poly-clear").onclick = () => { Regions.poly = []; $("#rg-poly").value = ""; Regions.paint(); };
$("#rg-diff-go").onclick = () => {
  if (!Regions.point) { say($("#rg-status"), "Click a pixel on the image first (choose Diffused).", "error"); return; }
  Regions.ask({ kind: "diffused", x: Regions.point[0], y: Regions.point[1], iterations: +$("#rg-iter").value });
};

// ---------------------------------------------------------------- detection, TITAN, head relevance (bridge.explore.analysis)
function unavailable(tab) {
  const a = state.info && state.info.analysis[tab];
  return a && !a.available ? a.reason : null;
}

const Objects = {
  show(tab) {
    const why = unavailable(tab);
    const note = $(`#${tab}-unavailable`);
    note.hidden = !why; note.textContent = why ? "Not available: " + why : "";
    $(`#${tab}-body`).hidden = !!why;
    if (tab === "detect" && state.generated) {
      const box = $("#detect-words");
      box.innerHTML = "";
      for (const w of state.generated.words.slice(1)) {
        const l = document.createElement("label"), cb = document.createElement("input");
        cb.type = "checkbox"; cb.value = w.split("#")[0];
        cb.addEventListener("change", () => { $("#detect-text").value = $$("#detect-words input:checked").map(i => i.value).join(" "); });
        l.append(cb, " " + w);
        box.appendChild(l);
      }
    }
  },
  render(out, ans) {
    out.innerHTML = "";
    for (const im of ans.images || []) {
      out.appendChild(figure(im.src, im.label));
    }
    if (ans.instances) {
      const list = document.createElement("ol");
      list.className = "instances";
      for (const i of ans.instances) {
        const li = document.createElement("li");
        li.textContent = `${i.category} — score ${i.score.toFixed(2)}, box [${i.bbox.join(", ")}], ${i.area} px, ${i.method}`;
        list.appendChild(li);
      }
      out.appendChild(list);
    }
    if (ans.coco) {
      const a = document.createElement("a");
      a.href = URL.createObjectURL(new Blob([JSON.stringify(ans.coco, null, 1)], { type: "application/json" }));
      a.download = "annotations.coco.json"; a.textContent = "download the COCO annotations";
      out.appendChild(a);
    }
  },
  async go(tab, path, body) {
    const status = $(`#${tab}-status`);
    if (!state.generated) { say(status, "Generate an image in Generate & Inspect first.", "error"); return; }
    say(status, "working…");
    try { this.render($(`#${tab}-out`), await postJSON(`/api/runs/${state.generated.id}/${path}`, body)); say(status, "done", "ok"); }
    catch (e) { say(status, e.message, "error"); }
  },
};
$("#detect-go").onclick = () => Objects.go("detect", "detect", { text: $("#detect-text").value });
$("#titan-go").onclick = () => Objects.go("titan", "titan", {});

const Heads = {
  show() {
    const concepts = (state.info && state.info.concepts) || [];
    const note = $("#heads-unavailable");
    note.hidden = concepts.length > 0;
    note.textContent = concepts.length ? "" : "No head-relevance concepts loaded: start the explorer with --concepts DIR " +
      "(one head-weights JSON file per concept, as stepx relevance -o DIR writes them) to compare heads.";
    const sel = $("#heads-concept");
    sel.innerHTML = ""; concepts.forEach(c => sel.add(new Option(c, c)));
    const ws = $("#heads-word");
    ws.innerHTML = ""; ((state.generated && state.generated.words) || []).forEach(w => ws.add(new Option(w, w)));
  },
  async go() {
    const status = $("#heads-status"), out = $("#heads-out");
    if (!state.generated) { say(status, "Generate an image in Generate & Inspect first.", "error"); return; }
    say(status, "aggregating over all, the most and the least relevant heads…");
    try {
      const ans = await postJSON(`/api/runs/${state.generated.id}/heads`, { concept: $("#heads-concept").value, word: $("#heads-word").value, k: +$("#heads-k").value });
      out.innerHTML = "";
      const labels = { all: "all heads", top: `${ans.k} most relevant heads`, bottom: `${ans.k} least relevant heads` };
      for (const [k, src] of Object.entries(ans.maps)) {
        out.appendChild(figure(src, `${labels[k]} (“${ans.word}”)`));
      }
      say(status, `${ans.heads} heads in the concept's weights`, "ok");
    } catch (e) { say(status, e.message, "error"); }
  },
};
$("#heads-go").onclick = () => Heads.go();

// ---------------------------------------------------------------- Live
const Live = {
  run: null, step: null, image: null, socket: null, retry: 500, count: 0, seen: new Set(),
  connect() {
    const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws/live`);
    ws.binaryType = "arraybuffer";
    this.socket = ws;
    ws.onopen = () => {
      this.retry = 500;
      document.body.dataset.live = "open";
      const source = state.info && state.info.live;
      say($("#live-conn"), source ? `connected to ${source}; waiting for packets`
        : "connected, but this explorer follows no stream: run `stepx serve --explore`, or `stepx explore --live` beside a running `stepx serve`", source ? "ok" : "");
    };
    ws.onclose = () => {
      document.body.dataset.live = "closed";
      say($("#live-conn"), "disconnected; reconnecting…", "error");
      setTimeout(() => this.connect(), this.retry); this.retry = Math.min(this.retry * 2, 8000);
    };
    ws.onmessage = ev => {
      try { this.handle(decodeWire(ev.data)); }
      catch (e) { say($("#live-conn"), "a packet could not be decoded: " + e.message, "error"); }
    };
  },
  log(text) {
    const li = document.createElement("li"); li.textContent = text;
    const log = $("#live-log"); log.prepend(li);
    while (log.children.length > 12) log.lastChild.remove();
  },
  handle(p) {
    this.count++;
    say($("#live-conn"), `connected${state.info && state.info.live ? " to " + state.info.live : ""} · ${this.count} packets`, "ok");
    const h = p.header;
    if (p.kind === "run") {
      this.run = h; this.step = null; this.image = null; this.seen = new Set();
      $("#live-prompt").textContent = `“${h.prompt}” — ${h.model || ""}, seed ${h.seed}, ${h.total_steps} steps`;
      const sel = $("#live-word"), keep = sel.value;
      sel.innerHTML = ""; sel.add(new Option("Global (sum over words)", "Global"));
      (h.words || []).forEach((w, i) => sel.add(new Option(w, String(i))));
      if ([...sel.options].some(o => o.value === keep)) sel.value = keep;
      this.log(`run ${h.run_id}: ${h.prompt}`);
    } else if (p.kind === "step" && p.arrays.textures) {
      if (this.run && h.run_id !== this.run.run_id) return;
      this.step = p;
      const phase = (state.info && state.info.phases[h.phase]) || "phase " + h.phase;
      $("#live-step").textContent = `step ${h.step} / ${h.total_steps - 1} · ${phase} phase`;
      this.seen.add(h.step);
      document.body.dataset.liveStep = String(h.step);
      document.body.dataset.liveSeen = String(this.seen.size);
      document.body.dataset.liveRun = h.run_id;
    } else if (p.kind === "image" && p.arrays.image) {
      if (this.run && h.run_id !== this.run.run_id) return;
      this.image = p;
      if (h.final) this.log(`final image (${h.preview || "vae"})`);
    } else if (p.kind === "end") {
      this.log(`end: ${h.status}${h.error ? " — " + h.error : ""}`);
      document.body.dataset.liveEnd = h.run_id;
    }
    this.draw();
  },
  heatField() {  // [H*W] in [0, 1] of the chosen word (or the sum over words), scaled to its maximum
    const t = this.step.arrays.textures, [n, H, W] = t.shape, words = (this.run && this.run.words || []).length || n - 1;
    const sel = $("#live-word").value, out = new Float32Array(H * W);
    const pick = sel === "Global" ? [...Array(words).keys()] : [+sel];
    for (const k of pick) for (let i = 0; i < H * W; i++) out[i] += t.data[k * H * W + i];
    let top = 0; for (const v of out) top = Math.max(top, v);
    if (top > 0) for (let i = 0; i < out.length; i++) out[i] /= top;
    return { field: out, H, W };
  },
  draw() {
    const cv = $("#live-overlay"), g = cv.getContext("2d"), alpha = +$("#live-alpha").value;
    if (this.image) {
      const [h, w] = this.image.arrays.image.shape, c = this.image.arrays.image.shape[2], src = this.image.arrays.image.data;
      const id = new ImageData(w, h);
      for (let i = 0; i < w * h; i++) { id.data[4 * i] = src[c * i]; id.data[4 * i + 1] = src[c * i + 1]; id.data[4 * i + 2] = src[c * i + 2]; id.data[4 * i + 3] = 255; }
      const tmp = document.createElement("canvas"); tmp.width = w; tmp.height = h; tmp.getContext("2d").putImageData(id, 0, 0);
      g.globalAlpha = 1; g.imageSmoothingEnabled = true; g.drawImage(tmp, 0, 0, cv.width, cv.height);
    } else { g.fillStyle = "#808080"; g.fillRect(0, 0, cv.width, cv.height); }
    if (!this.step || !state.colormap) return;
    const { field, H, W } = this.heatField();
    const id = new ImageData(W, H);
    for (let i = 0; i < H * W; i++) { const [r, gg, b] = colour(field[i]); id.data.set([r, gg, b, 255], 4 * i); }
    const tmp = document.createElement("canvas"); tmp.width = W; tmp.height = H; tmp.getContext("2d").putImageData(id, 0, 0);
    g.globalAlpha = alpha; g.drawImage(tmp, 0, 0, cv.width, cv.height); g.globalAlpha = 1;
    const hc = $("#live-heat"), hg = hc.getContext("2d");
    hg.drawImage(tmp, 0, 0, hc.width, hc.height);
    document.body.dataset.liveDrawn = String(this.step.header.step);
  },
};
$("#live-word").addEventListener("change", () => Live.draw());
$("#live-alpha").addEventListener("input", () => Live.draw());

// ---------------------------------------------------------------- Traces
const traceInspector = new Inspector($("#trace-view"));
const Traces = { runs: [] };
$("#trace-file").addEventListener("change", async ev => {
  const file = ev.target.files[0], status = $("#trace-status");
  if (!file) return;
  say(status, `opening ${file.name}…`);
  try {
    const ans = await api(`/api/traces?name=${encodeURIComponent(file.name)}`, { method: "POST", body: file }).then(r => r.json());
    Traces.runs = ans.runs;
    const sel = $("#trace-run"); sel.innerHTML = "";
    ans.runs.forEach((r, i) => sel.add(new Option(`run ${i + 1}: ${r.prompt}`, String(i))));
    if (ans.damaged) say(status, `${ans.name} is damaged: ${ans.damaged}. Showing its ${ans.runs.length} intact run(s).`, "error");
    else say(status, `${ans.name}: ${ans.runs.length} run(s)`, "ok");
    traceInspector.load(ans.runs[0]);
  } catch (e) { say(status, e.message, "error"); }
});
$("#trace-run").addEventListener("change", ev => traceInspector.load(Traces.runs[+ev.target.value]));

// ---------------------------------------------------------------- start
$$("#tabs button").forEach(b => b.addEventListener("click", () => showTab(b.dataset.tab)));
(async () => {
  try {
    state.info = await api("/api/info").then(r => r.json());
    state.colormap = state.info.colormap;
    const models = $("#models");
    models.innerHTML = "";
    state.info.models.forEach(m => models.appendChild(new Option(m, m)));
    if (!state.info.any_model) $("#gen-model").title = "this explorer loads only: " + state.info.models.join(", ");
    const opened = state.info.runs.filter(r => r.source === "trace");
    if (opened.length) {
      Traces.runs = opened;
      const sel = $("#trace-run"); opened.forEach((r, i) => sel.add(new Option(`run ${i + 1}: ${r.prompt}`, String(i))));
      traceInspector.load(opened[0]);
    }
  } catch (e) { say($("#gen-status"), "the server did not answer: " + e.message, "error"); }
  Live.connect();
  document.body.dataset.ready = "1";
  showTab(location.hash.replace("#", "") || "inspect");
})();
