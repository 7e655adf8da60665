// clozelm attention-head viewer: head view (lines between tokens) and model view (every head as a small map).
// Everything it needs is in the page's #heads-data JSON; it fetches nothing. Maps are decoded on first use
// and kept as quantised bytes (a quarter of the floats' memory), so a 512-token, 144-head page stays light.
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("heads-data").textContent);
  const app = document.getElementById("app");
  const ROW = 18;                 // px per token row in the head view (matches --row in the CSS)
  const LINE_MIN = 0.01;          // thinner lines are invisible anyway; skipping them keeps redraws fast
  const ALPHA_STEPS = 12;         // lines are batched into this many opacity levels, one stroke each
  const DERIVED_CACHE = 48;       // derived float matrices kept (1 MB each at 512 tokens)

  // ------------------------------------------------------------------ small helpers
  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "class") node.className = value;
      else if (key === "style") node.style.cssText = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value);
    }
    for (const child of children) if (child != null) node.append(child);
    return node;
  }
  const headColor = (head, heads) => `hsl(${Math.round((head * 360) / Math.max(heads, 1))}, 72%, 42%)`;
  // Visible stand-ins for whitespace so a space or newline token is still something to point at.
  const showToken = (text) => text.replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5").replace(/\r/g, "\u240d") || "\u2205";

  // White -> blue ramp (same anchors as clozelm.heads.render).
  const RAMP = [[255, 255, 255], [198, 219, 239], [107, 174, 214], [33, 113, 181], [8, 48, 107]];
  const LUT = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i++) {
    const x = (i / 255) * (RAMP.length - 1), k = Math.min(Math.floor(x), RAMP.length - 2), f = x - k;
    for (let c = 0; c < 3; c++) LUT[i * 3 + c] = Math.round(RAMP[k][c] * (1 - f) + RAMP[k + 1][c] * f);
  }
  const shade = (value, boost) => {
    const v = Math.max(0, Math.min(1, boost ? Math.sqrt(value) : value));
    return Math.round(v * 255) * 3;
  };

  function base64Bytes(text) {
    const binary = atob(text);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return bytes;
  }
  async function inflate(bytes) {
    if (typeof DecompressionStream === "undefined") throw new Error("this browser cannot inflate the maps (no DecompressionStream); use a current Chrome, Firefox or Safari");
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }
  const nextFrame = () => new Promise((resolve) => setTimeout(resolve, 0));

  // ------------------------------------------------------------------ one model's maps
  class ModelMaps {
    constructor(spec) {
      this.spec = spec;
      this.n = spec.tokens.length;
      this.nWords = spec.words.length;
      this.sinkIndex = [];
      spec.sinks.forEach((s, i) => { if (s) this.sinkIndex.push(i); });
      this.wordSize = new Float32Array(this.nWords);
      for (const w of spec.word_of_token) this.wordSize[w] += 1;
      this.wordSink = new Uint8Array(this.nWords).fill(1);  // a word is a sink when all its pieces are
      this.wordSpecial = new Uint8Array(this.nWords).fill(1);
      spec.word_of_token.forEach((w, i) => {
        if (!spec.sinks[i]) this.wordSink[w] = 0;
        if (!spec.special[i]) this.wordSpecial[w] = 0;
      });
      this.codes = new Map();    // "layer.head" -> Promise of {scale, codes} (quantised, as stored)
      this.derived = new Map();  // "layer.head.words.sinks" -> Promise of {n, values, removed}
    }
    labels(words) { return words ? this.spec.words : this.spec.tokens; }
    isSink(index, words) { return words ? this.wordSink[index] === 1 : this.spec.sinks[index] === 1; }
    isSpecial(index, words) { return words ? this.wordSpecial[index] === 1 : this.spec.special[index] === 1; }

    // One map as stored (see clozelm/heads/views.py): float32 step per row, uint16 sink columns, uint8 codes.
    quantised(layer, head) {
      const key = layer + "." + head;
      if (!this.codes.has(key)) {
        this.codes.set(key, (async () => {
          let bytes = base64Bytes(this.spec.maps[layer][head]);
          if (this.spec.encoding === "deflate") bytes = await inflate(bytes);
          const n = this.n, s = this.sinkIndex.length, base = bytes.byteOffset;
          const step = new Float32Array(bytes.buffer.slice(base, base + 4 * n));
          const sinks = new Uint16Array(bytes.buffer.slice(base + 4 * n, base + 4 * n + 2 * s * n));
          return { step, sinks, codes: bytes.subarray(4 * n + 2 * s * n) };
        })());
      }
      return this.codes.get(key);
    }

    async tokenValues(layer, head) {
      const { step, sinks, codes } = await this.quantised(layer, head);
      const n = this.n, causal = this.spec.causal;
      const values = new Float32Array(n * n);
      let p = 0;
      for (let i = 0; i < n; i++) {
        const width = causal ? i + 1 : n, s = step[i], row = i * n;
        for (let j = 0; j < width; j++) values[row + j] = codes[p++] * s;
      }
      this.sinkIndex.forEach((column, k) => {
        for (let i = 0; i < n; i++) values[i * n + column] = sinks[k * n + i] / 65535;
      });
      return values;
    }

    // Attention of one head as the view asks for it: sinks hidden and rows renormalised, then words
    // (TO a word = sum over its pieces, FROM a word = mean over its pieces). `removed` is the mass each
    // row lost to hidden sinks, before renormalising.
    matrix(layer, head, words, hideSinks) {
      const key = `${layer}.${head}.${+words}.${+hideSinks}`;
      if (this.derived.has(key)) {
        const hit = this.derived.get(key);
        this.derived.delete(key);
        this.derived.set(key, hit);  // most recently used last
        return hit;
      }
      const promise = (async () => {
        const n = this.n;
        let values = await this.tokenValues(layer, head);
        let removed = null;
        if (hideSinks) {
          removed = new Float32Array(n);
          for (let i = 0; i < n; i++) {
            const row = i * n;
            let lost = 0, keep = 0;
            for (const j of this.sinkIndex) { lost += values[row + j]; values[row + j] = 0; }
            removed[i] = lost;
            // the weights left, as stored: 1 - lost would carry the sinks' rounding into rows with little left
            for (let j = 0; j < n; j++) keep += values[row + j];
            const factor = keep > 1e-9 ? 1 / keep : 0;
            for (let j = 0; j < n; j++) values[row + j] *= factor;
          }
        }
        if (!words) return { n, values, removed };
        const W = this.nWords, wot = this.spec.word_of_token, out = new Float32Array(W * W);
        const lostPerWord = removed ? new Float32Array(W) : null;
        for (let i = 0; i < n; i++) {
          const wi = wot[i] * W, row = i * n;
          for (let j = 0; j < n; j++) out[wi + wot[j]] += values[row + j];
          if (removed) lostPerWord[wot[i]] += removed[i];
        }
        for (let w = 0; w < W; w++) {
          const inv = 1 / this.wordSize[w];
          for (let v = 0; v < W; v++) out[w * W + v] *= inv;
          if (lostPerWord) lostPerWord[w] *= inv;
        }
        return { n: W, values: out, removed: lostPerWord };
      })();
      this.derived.set(key, promise);
      while (this.derived.size > DERIVED_CACHE) this.derived.delete(this.derived.keys().next().value);
      return promise;
    }
  }

  // ------------------------------------------------------------------ state and controls
  const models = DATA.models.map((spec) => new ModelMaps(spec));
  const maxLayers = Math.max(...DATA.models.map((m) => m.n_layers));
  const maxHeads = Math.max(...DATA.models.map((m) => m.n_heads));
  const state = {
    view: "head", layer: 0, heads: new Set(Array.from({ length: maxHeads }, (_, i) => i)),
    words: false, hideSinks: false, boost: false, picked: null,
  };

  const viewButtons = {};
  const tabs = h("div", { class: "group", role: "group", "aria-label": "view" },
    ...[["head", "Head view"], ["model", "Model view"]].map(([name, text]) => {
      viewButtons[name] = h("button", { class: "tab", "aria-pressed": String(state.view === name), onclick: () => setView(name) }, text);
      return viewButtons[name];
    }));
  const layerSelect = h("select", { "aria-label": "layer", onchange: () => setLayer(+layerSelect.value) },
    ...Array.from({ length: maxLayers }, (_, l) => h("option", { value: String(l) }, `layer ${l}`)));
  const layerGroup = h("div", { class: "group" }, h("span", { class: "label" }, "Layer"),
    h("button", { title: "previous layer (\u2190)", onclick: () => setLayer(state.layer - 1) }, "\u2039"), layerSelect,
    h("button", { title: "next layer (\u2192)", onclick: () => setLayer(state.layer + 1) }, "\u203a"));
  const chips = Array.from({ length: maxHeads }, (_, head) => h("button", {
    class: "head-chip on", style: `--c:${headColor(head, maxHeads)}`, title: `head ${head}: click to toggle, double-click to show only this head`,
    onclick: () => { state.heads.has(head) ? state.heads.delete(head) : state.heads.add(head); refreshChips(); redrawAll(); },
    ondblclick: () => { state.heads = new Set([head]); refreshChips(); redrawAll(); },
  }, String(head)));
  const headGroup = h("div", { class: "group" }, h("span", { class: "label" }, "Heads"), h("div", { class: "heads" }, ...chips),
    h("button", { onclick: () => { state.heads = new Set(chips.map((_, i) => i)); refreshChips(); redrawAll(); } }, "all"),
    h("button", { onclick: () => { state.heads.clear(); refreshChips(); redrawAll(); } }, "none"));
  const toggle = (name, text, title) => {
    const box = h("input", { type: "checkbox", onchange: () => { state[name] = box.checked; rebuildAll(); } });
    return h("label", { class: "toggle", title }, box, text);
  };
  const legendCanvas = h("canvas", { width: "120", height: "1" });
  const legend = h("div", { class: "legend" }, "0", legendCanvas, "1");
  function drawLegend() {
    const ctx = legendCanvas.getContext("2d"), img = ctx.createImageData(120, 1);
    for (let x = 0; x < 120; x++) {
      const c = shade(x / 119, state.boost);
      img.data.set([LUT[c], LUT[c + 1], LUT[c + 2], 255], x * 4);
    }
    ctx.putImageData(img, 0, 0);
  }
  const bar = h("div", { class: "bar" }, tabs, layerGroup, headGroup,
    h("div", { class: "group" },
      toggle("words", "word level", "attention TO a word = sum over its pieces; FROM a word = mean over its pieces"),
      toggle("hideSinks", "hide sinks", "drop attention to the first token and [CLS]/[SEP]/end-of-text tokens, renormalise each row"),
      toggle("boost", "\u221a boost", "colour by the square root of the weight, so faint attention shows")),
    legend);

  function refreshChips() {
    chips.forEach((chip, i) => chip.classList.toggle("on", state.heads.has(i)));
  }

  // ------------------------------------------------------------------ page skeleton
  const noteLines = [...new Set([...DATA.notes, ...DATA.models.flatMap((m) => m.notes.map((n) => `${m.name}: ${n}`))])];
  app.append(
    h("h1", {}, DATA.title),
    h("div", { class: "sub", title: DATA.text }, DATA.text.replace(/\s+/g, " ")),
    ...noteLines.map((n) => h("div", { class: "notes" }, "\u26a0 " + n)),
    bar);
  const panelRow = h("div", { class: "panels" });
  app.append(panelRow);
  const panels = models.map((model) => makePanel(model));

  function makePanel(model) {
    const spec = model.spec;
    const kind = spec.causal ? "causal" : "bidirectional";
    const status = h("div", { class: "status" });
    const headView = h("div", { class: "hv" });
    const modelView = h("div", { class: "mvwrap" });
    const root = h("section", { class: "panel" },
      h("h2", {}, spec.name),
      h("div", { class: "meta" }, `${kind} \u00b7 ${spec.n_layers} layers \u00d7 ${spec.n_heads} heads \u00b7 ${model.n} tokens`),
      status, headView, modelView);
    panelRow.append(root);
    const panel = { model, root, status, headView, modelView, hover: null, thumbJob: 0 };
    buildHeadView(panel);
    return panel;
  }

  // ------------------------------------------------------------------ head view
  function buildHeadView(panel) {
    const { model, headView } = panel;
    headView.textContent = "";
    const labels = model.labels(state.words);
    const n = labels.length;
    const scroller = h("div", { class: "scroller" });
    const track = h("div", { class: "track", style: `height:${n * ROW + 8}px` });
    const canvas = h("canvas", { class: "lines" });
    const from = [], to = [];
    labels.forEach((text, i) => {
      const special = model.isSpecial(i, state.words);
      const common = `top:${i * ROW + 4}px;`;
      const left = h("div", { class: "tok from" + (special ? " special" : ""), style: common, title: `${i}: ${text}` }, showToken(text));
      const right = h("div", { class: "tok to" + (special ? " special" : ""), style: common, title: `${i}: ${text}` }, showToken(text));
      left.addEventListener("mouseenter", () => setHover(panel, { side: "from", index: i }));
      right.addEventListener("mouseenter", () => setHover(panel, { side: "to", index: i }));
      from.push(left); to.push(right);
      track.append(left, right);
    });
    track.addEventListener("mouseleave", () => setHover(panel, null));
    scroller.append(track);
    headView.append(scroller, canvas);
    Object.assign(panel, { scroller, track, canvas, from, to, n, look: undefined });
    if (panel.hover && panel.hover.index >= n) panel.hover = null;  // word level has fewer rows than tokens
    scroller.addEventListener("scroll", () => scheduleDraw(panel), { passive: true });
    layoutHeadView(panel);
  }

  function layoutHeadView(panel) {
    const width = panel.headView.clientWidth || 600;
    const column = Math.min(170, Math.max(70, Math.floor(width * 0.3)));
    const gap = Math.max(60, Math.min(340, width - 2 * column - 16));  // wider only flattens the lines
    panel.geometry = { column, gap };
    for (const el of panel.from) { el.style.left = "0px"; el.style.width = column + "px"; }
    for (const el of panel.to) { el.style.left = column + gap + "px"; el.style.width = column + "px"; }
    const canvas = panel.canvas, ratio = window.devicePixelRatio || 1, height = panel.headView.clientHeight;
    canvas.style.left = column + "px";
    canvas.style.width = gap + "px";
    canvas.style.height = height + "px";
    canvas.width = Math.round(gap * ratio);
    canvas.height = Math.round(height * ratio);
    scheduleDraw(panel);
  }

  function setHover(panel, hover) {
    const old = panel.hover;
    if (old && hover && old.side === hover.side && old.index === hover.index) return;
    panel.hover = hover;
    scheduleDraw(panel);
  }

  function scheduleDraw(panel) {
    if (panel.pending) return;
    panel.pending = true;
    requestAnimationFrame(() => { panel.pending = false; drawHeadView(panel).catch((e) => showError(panel, e)); });
  }

  function showError(panel, error) {
    panel.status.textContent = "";
    panel.status.append(h("span", { class: "error" }, String(error && error.message || error)));
  }

  async function drawHeadView(panel) {
    if (state.view !== "head") return;
    const { model, canvas, scroller, n } = panel;
    const spec = model.spec;
    const layer = state.layer;
    const ctx = canvas.getContext("2d");
    const ratio = window.devicePixelRatio || 1;
    if (layer >= spec.n_layers) {
      ctx.clearRect(0, 0, canvas.width, canvas.height);
      panel.status.textContent = `this model has no layer ${layer}`;
      return;
    }
    const heads = [...state.heads].filter((x) => x < spec.n_heads).sort((a, b) => a - b);
    const ticket = (panel.ticket = (panel.ticket || 0) + 1);
    const mats = await Promise.all(heads.map((head) => model.matrix(layer, head, state.words, state.hideSinks)));
    if (ticket !== panel.ticket) return;  // a newer draw started while these were decoding

    const width = canvas.width / ratio, height = canvas.height / ratio, top = scroller.scrollTop;
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const y = (i) => i * ROW + 4 + ROW / 2 - top;
    const hover = panel.hover;
    let rows;
    if (hover && hover.side === "from") rows = [hover.index];
    else if (hover && hover.side === "to") rows = Array.from({ length: n }, (_, i) => i);
    else {
      const first = Math.max(0, Math.floor(top / ROW) - 1), last = Math.min(n - 1, Math.ceil((top + height) / ROW) + 1);
      rows = Array.from({ length: last - first + 1 }, (_, k) => first + k);
    }
    const onlyTo = hover && hover.side === "to" ? hover.index : -1;
    const min = hover ? LINE_MIN / 4 : LINE_MIN;
    const share = heads.length > 1 ? 0.75 : 1;
    ctx.lineWidth = 1.4;
    heads.forEach((head, k) => {
      const values = mats[k].values;
      const buckets = Array.from({ length: ALPHA_STEPS }, () => []);
      for (const i of rows) {
        const row = i * n;
        const jFrom = onlyTo >= 0 ? onlyTo : 0, jTo = onlyTo >= 0 ? onlyTo : n - 1;
        for (let j = jFrom; j <= jTo; j++) {
          const w = values[row + j];
          if (w < min) continue;
          buckets[Math.min(ALPHA_STEPS - 1, Math.floor(w * ALPHA_STEPS))].push(i, j);
        }
      }
      ctx.strokeStyle = headColor(head, maxHeads);
      buckets.forEach((pairs, b) => {
        if (!pairs.length) return;
        ctx.globalAlpha = Math.min(1, ((b + 0.6) / ALPHA_STEPS) * share + 0.04);
        ctx.beginPath();
        for (let p = 0; p < pairs.length; p += 2) { ctx.moveTo(0, y(pairs[p])); ctx.lineTo(width, y(pairs[p + 1])); }
        ctx.stroke();
      });
    });
    ctx.globalAlpha = 1;
    paintTokens(panel, heads, mats);
    describe(panel, heads, mats);
  }

  // Token backgrounds: on hover, how much each token receives (or gives), in the colour of the strongest head.
  function paintTokens(panel, heads, mats) {
    const { from, to, n, model } = panel;
    const hover = panel.hover;
    // Scrolling redraws often; the token styles only change with the hover or the sink setting.
    const look = hover ? null : `${state.hideSinks}`;
    if (look !== null && panel.look === look) return;
    panel.look = look;
    for (let i = 0; i < n; i++) {
      from[i].style.background = ""; to[i].style.background = "";
      from[i].classList.remove("hover"); to[i].classList.remove("hover");
      to[i].classList.toggle("sink-hidden", state.hideSinks && model.isSink(i, state.words));
    }
    if (!hover) return;
    const source = hover.side === "from" ? from : to, target = hover.side === "from" ? to : from;
    source[hover.index].classList.add("hover");
    for (let j = 0; j < n; j++) {
      let best = 0, bestHead = -1;
      heads.forEach((head, k) => {
        const w = hover.side === "from" ? mats[k].values[hover.index * n + j] : mats[k].values[j * n + hover.index];
        if (w > best) { best = w; bestHead = head; }
      });
      if (bestHead >= 0 && best > 0.005) {
        const alpha = Math.min(0.85, 0.08 + (state.boost ? Math.sqrt(best) : best));
        target[j].style.background = headColor(bestHead, maxHeads).replace("hsl", "hsla").replace(")", `, ${alpha.toFixed(2)})`);
      }
    }
  }

  function describe(panel, heads, mats) {
    const status = panel.status;
    status.textContent = "";
    if (!heads.length) { status.textContent = "no head selected"; return; }
    const labels = panel.model.labels(state.words);
    const hover = panel.hover;
    const parts = [];
    if (hover && hover.side === "from") {
      const i = hover.index;
      const best = heads.map((head, k) => {
        let arg = 0;
        for (let j = 1; j < panel.n; j++) if (mats[k].values[i * panel.n + j] > mats[k].values[i * panel.n + arg]) arg = j;
        return `H${head}\u2192${showToken(labels[arg]).trim() || "\u2423"} ${(mats[k].values[i * panel.n + arg]).toFixed(2)}`;
      });
      parts.push(h("b", {}, showToken(labels[i]).trim()), " attends most to: " + best.slice(0, 6).join(", ") + (best.length > 6 ? ", \u2026" : ""));
      if (state.hideSinks && mats[0].removed) {
        const lost = heads.reduce((s, _, k) => s + mats[k].removed[i], 0) / heads.length;
        parts.push(` \u00b7 ${(100 * lost).toFixed(1)}% of this row went to hidden sinks`);
      }
    } else if (state.hideSinks && mats[0].removed) {
      let total = 0, count = 0;
      mats.forEach((m) => { for (let i = 0; i < m.n; i++) { total += m.removed[i]; count++; } });
      parts.push("hidden sinks held ", h("b", {}, `${(100 * total / Math.max(count, 1)).toFixed(1)}%`),
        " of the attention (mean over rows and selected heads); rows are renormalised");
    } else {
      parts.push(`layer ${state.layer}, ${heads.length} head${heads.length > 1 ? "s" : ""}: hover a token to see where it looks (left) or who looks at it (right)`);
    }
    status.append(...parts);
  }

  // ------------------------------------------------------------------ model view
  function buildModelView(panel) {
    const { model, modelView } = panel;
    const spec = model.spec;
    modelView.textContent = "";
    const grid = h("div", { class: "mv", style: `grid-template-columns: 28px repeat(${spec.n_heads}, minmax(18px, 64px))` });
    grid.append(h("div", {}), ...Array.from({ length: spec.n_heads }, (_, head) => h("div", { class: "collabel" }, `H${head}`)));
    panel.thumbs = [];
    for (let layer = 0; layer < spec.n_layers; layer++) {
      grid.append(h("div", { class: "rowlabel" }, `L${layer}`));
      const row = [];
      for (let head = 0; head < spec.n_heads; head++) {
        const canvas = h("canvas", { title: `layer ${layer}, head ${head}: click to open`, onclick: () => pick(layer, head) });
        row.push(canvas);
        grid.append(canvas);
      }
      panel.thumbs.push(row);
    }
    panel.detail = h("div", { class: "detail" });
    modelView.append(grid, panel.detail);
    panel.status.textContent = "click a map to open it";
    drawThumbnails(panel);
    if (state.picked) openDetail(panel).catch((e) => showError(panel, e));
  }

  function paintSquare(canvas, size, valueAt) {
    canvas.width = size; canvas.height = size;
    const ctx = canvas.getContext("2d"), img = ctx.createImageData(size, size), data = img.data;
    for (let i = 0; i < size; i++) for (let j = 0; j < size; j++) {
      const c = shade(valueAt(i, j), state.boost), p = (i * size + j) * 4;
      data[p] = LUT[c]; data[p + 1] = LUT[c + 1]; data[p + 2] = LUT[c + 2]; data[p + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
  }

  // Plain token maps come precomputed with the page; other settings are pooled here from the full maps,
  // a few heads per frame so the page stays responsive while it works.
  async function drawThumbnails(panel) {
    const spec = panel.model.spec;
    const job = ++panel.thumbJob;
    if (!state.words && !state.hideSinks) {
      const size = spec.thumb_size;
      for (let layer = 0; layer < spec.n_layers; layer++) {
        let bytes = base64Bytes(spec.thumbs[layer]);
        if (spec.encoding === "deflate") bytes = await inflate(bytes);
        if (job !== panel.thumbJob) return;
        for (let head = 0; head < spec.n_heads; head++) {
          const offset = head * size * size;
          paintSquare(panel.thumbs[layer][head], size, (i, j) => bytes[offset + i * size + j] / 255);
        }
      }
      return;
    }
    let done = 0;
    for (let layer = 0; layer < spec.n_layers; layer++) {
      for (let head = 0; head < spec.n_heads; head++) {
        const m = await panel.model.matrix(layer, head, state.words, state.hideSinks);
        if (job !== panel.thumbJob || state.view !== "model") return;
        const size = Math.min(m.n, 64), start = Array.from({ length: size + 1 }, (_, k) => Math.floor((k * m.n) / size));
        const pooled = new Float32Array(size * size);
        for (let a = 0; a < size; a++) for (let i = start[a]; i < start[a + 1]; i++) {
          const row = i * m.n;
          for (let b = 0; b < size; b++) {
            let best = pooled[a * size + b];
            for (let j = start[b]; j < start[b + 1]; j++) if (m.values[row + j] > best) best = m.values[row + j];
            pooled[a * size + b] = best;
          }
        }
        paintSquare(panel.thumbs[layer][head], size, (i, j) => pooled[i * size + j]);
        if (++done % 6 === 0) await nextFrame();
      }
    }
  }

  function pick(layer, head) {
    state.picked = { layer, head };
    for (const panel of panels) openDetail(panel).catch((e) => showError(panel, e));
  }

  async function openDetail(panel) {
    const { model } = panel;
    const spec = model.spec;
    const { layer, head } = state.picked;
    const detail = panel.detail;
    const ticket = (panel.detailTicket = (panel.detailTicket || 0) + 1);
    for (const row of panel.thumbs) for (const c of row) c.classList.remove("picked");
    detail.textContent = "";
    if (layer >= spec.n_layers || head >= spec.n_heads) {
      detail.append(h("div", { class: "head-title" }, `this model has no layer ${layer} head ${head}`));
      return;
    }
    panel.thumbs[layer][head].classList.add("picked");
    const m = await model.matrix(layer, head, state.words, state.hideSinks);
    if (ticket !== panel.detailTicket || detail !== panel.detail) return;  // a newer pick or rebuild won
    const labels = model.labels(state.words);
    const n = m.n;
    const readout = h("div", { class: "readout" }, "hover the map to read a weight");
    const showInHeadView = h("button", { onclick: () => { state.layer = layer; layerSelect.value = String(layer); state.heads = new Set([head]); refreshChips(); setView("head"); } }, "show in head view");
    const title = h("div", { class: "head-title" }, `layer ${layer}, head ${head}`, showInHeadView);
    // Token labels along the axes when they fit; otherwise the readout names them.
    const labelled = n <= 80;
    const margin = labelled ? 90 : 0;
    const cell = Math.max(1, Math.min(14, Math.floor(560 / n)));
    const side = n * cell;
    const canvas = h("canvas", {});
    const ratio = window.devicePixelRatio || 1;
    canvas.width = Math.round((side + margin) * ratio);
    canvas.height = Math.round((side + margin) * ratio);
    canvas.style.width = side + margin + "px";
    canvas.style.height = side + margin + "px";
    const ctx = canvas.getContext("2d");
    const image = document.createElement("canvas");
    paintSquare(image, n, (i, j) => m.values[i * n + j]);
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(image, margin, margin, side, side);
    if (labelled) {
      ctx.fillStyle = "#1f2328";
      ctx.font = `${Math.min(11, cell)}px ui-monospace, monospace`;
      ctx.textBaseline = "middle";
      ctx.textAlign = "right";
      labels.forEach((t, i) => ctx.fillText(showToken(t).slice(0, 12), margin - 3, margin + i * cell + cell / 2));
      ctx.save();
      ctx.translate(margin, margin);
      ctx.rotate(-Math.PI / 2);
      ctx.textAlign = "left";
      labels.forEach((t, j) => ctx.fillText(showToken(t).slice(0, 12), 3, j * cell + cell / 2));
      ctx.restore();
    }
    canvas.addEventListener("mousemove", (event) => {
      const rect = canvas.getBoundingClientRect();
      const x = event.clientX - rect.left - margin, yy = event.clientY - rect.top - margin;
      const i = Math.floor(yy / cell), j = Math.floor(x / cell);
      if (i < 0 || j < 0 || i >= n || j >= n) { readout.textContent = "rows attend FROM, columns TO"; return; }
      let text = `${JSON.stringify(showToken(labels[i]))} \u2192 ${JSON.stringify(showToken(labels[j]))}: ${m.values[i * n + j].toFixed(4)}`;
      if (m.removed) text += `   (row lost ${(100 * m.removed[i]).toFixed(1)}% to sinks)`;
      readout.textContent = text;
    });
    detail.append(title, readout, canvas);
  }

  // ------------------------------------------------------------------ switching
  function setView(view) {
    state.view = view;
    for (const [name, button] of Object.entries(viewButtons)) button.setAttribute("aria-pressed", String(name === view));
    layerGroup.style.visibility = view === "head" ? "visible" : "hidden";
    headGroup.style.visibility = view === "head" ? "visible" : "hidden";
    for (const panel of panels) {
      panel.headView.style.display = view === "head" ? "" : "none";
      panel.modelView.style.display = view === "model" ? "" : "none";
      if (view === "head") { layoutHeadView(panel); } else { buildModelView(panel); }
    }
  }

  function setLayer(layer) {
    state.layer = Math.max(0, Math.min(maxLayers - 1, layer));
    layerSelect.value = String(state.layer);
    redrawAll();
  }

  function redrawAll() {
    for (const panel of panels) if (state.view === "head") scheduleDraw(panel);
  }

  function rebuildAll() {
    drawLegend();
    for (const panel of panels) {
      if (state.view === "head") buildHeadView(panel); else buildModelView(panel);
    }
  }

  document.addEventListener("keydown", (event) => {
    if (event.target instanceof HTMLSelectElement || event.target instanceof HTMLInputElement) return;
    if (state.view === "head" && event.key === "ArrowLeft") setLayer(state.layer - 1);
    if (state.view === "head" && event.key === "ArrowRight") setLayer(state.layer + 1);
  });
  let resizeTimer = 0;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => { if (state.view === "head") panels.forEach(layoutHeadView); }, 100);
  });

  drawLegend();
  const initial = new URLSearchParams(location.hash.slice(1));  // e.g. view.html#view=model&layer=3 (for links and screenshots)
  const whole = (text) => (/^\d{1,6}$/.test(text || "") ? Number(text) : null);  // a hand-edited link may hold anything
  if (whole(initial.get("layer")) !== null) setLayer(whole(initial.get("layer")));
  if (initial.has("words")) { state.words = true; bar.querySelectorAll("input")[0].checked = true; }
  if (initial.has("sinks")) { state.hideSinks = true; bar.querySelectorAll("input")[1].checked = true; }
  if (initial.has("pick")) {
    const [l, hd] = initial.get("pick").split(".").map(whole);
    if (l !== null && hd !== null && l < maxLayers && hd < maxHeads) state.picked = { layer: l, head: hd };
  }
  setView(initial.get("view") === "model" ? "model" : "head");
  if (state.words || state.hideSinks) rebuildAll();
  if (initial.has("hover")) {  // e.g. #hover=from.5: start with token 5's lines shown
    const [side, index] = initial.get("hover").split(".");
    if (whole(index) !== null) {
      panels.forEach((panel) => setHover(panel, { side: side === "to" ? "to" : "from", index: Math.min(whole(index), panel.n - 1) }));
    }
  }
  document.body.dataset.ready = "1";
})();
