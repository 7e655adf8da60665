// clozelm serve: the page's script. It talks only to this server's /api/* (docs/api.md) and puts every
// piece of user or model text on the page as text (textContent / text nodes), never as HTML.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const text = $("text");
  const BLANK = /_{3,}|\[MASK\]/;
  let models = [];
  let limits = { max_top: 20, max_new_tokens: 200, max_text: 4000 };
  let fillRun = 0;
  let generation = null; // AbortController of the generation being streamed
  let tokenTimer = 0;

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (key === "class") node.className = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value);
    }
    node.append(...children); // strings become text nodes
    return node;
  }

  function say(message, bad = false) {
    const status = $("status");
    status.textContent = message;
    status.classList.toggle("bad", bad);
  }

  function networkError() {
    return new Error("the server does not answer (is clozelm serve still running?)");
  }

  async function api(path, body, signal) {
    const init = body === undefined ? { signal } : {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body), signal,
    };
    let response;
    try {
      response = await fetch(path, init);
    } catch (error) {
      throw error.name === "AbortError" ? error : networkError();
    }
    if (!response.ok) throw await errorOf(response);
    return response;
  }

  async function errorOf(response) {
    const data = await response.json().catch(() => ({}));
    return new Error(data.error || `the server answered ${response.status}`);
  }

  function intFrom(input, low, high, fallback) {
    const value = Number.parseInt(input.value, 10);
    if (!Number.isFinite(value)) return fallback;
    return Math.min(high, Math.max(low, value));
  }

  function elapsed(since) {
    return ((performance.now() - since) / 1000).toFixed(1);
  }

  // ------------------------------------------------------------------------------------------ models

  async function start() {
    try {
      const data = await (await api("/api/models")).json();
      models = data.models;
      limits = data.limits;
    } catch (error) {
      $("models-line").textContent = "No models: " + error.message;
      say(error.message, true);
      return;
    }
    $("models-line").textContent = models.map((m) => `${m.label}: ${m.method}, ${m.layers} layers × ${m.heads} heads`)
      .join("  ·  ");
    $("top").max = String(limits.max_top);
    $("max-tokens").max = String(limits.max_new_tokens);
    text.maxLength = limits.max_text;

    const columns = $("columns");
    columns.style.setProperty("--models", String(models.length));
    columns.replaceChildren(...models.map((m) => el("article", { class: "column", "data-model": m.name,
      "aria-labelledby": `col-${models.indexOf(m)}` },
    el("div", { class: "column-head" },
      el("h3", { id: `col-${models.indexOf(m)}` }, m.label),
      el("span", { class: "badge", title: "how this model fills blanks" }, m.method),
      el("span", { class: "timing" })),
    el("div", { class: "column-body" }, el("p", { class: "placeholder" }, "Press Fill the blanks to see its answers.")))));

    const select = $("gen-model");
    const generators = models.filter((m) => m.can_generate);
    select.replaceChildren(...generators.map((m) => el("option", { value: m.name }, m.label)));
    if (!generators.length) {
      $("generate").disabled = true;
      $("generate").title = "none of the served models can generate (they are bidirectional)";
    }
    updateTokens();
  }

  function columnFor(name) {
    return [...document.querySelectorAll(".column")].find((c) => c.dataset.model === name);
  }

  // ------------------------------------------------------------------------------------------ editing

  function hideSelection() {
    const value = text.value;
    let start = text.selectionStart, end = text.selectionEnd;
    const wordChar = /[\p{L}\p{N}\p{M}'’-]/u;
    if (start === end) { // no selection: the word around the caret
      while (start > 0 && wordChar.test(value[start - 1])) start--;
      while (end < value.length && wordChar.test(value[end])) end++;
    } else { // "word " hides the word and keeps the space
      while (start < end && /\s/.test(value[start])) start++;
      while (end > start && /\s/.test(value[end - 1])) end--;
    }
    if (start === end) {
      say("Select a word (or put the cursor in one) to hide it.", true);
      text.focus();
      return;
    }
    text.focus();
    text.setSelectionRange(start, end);
    // insertText keeps the browser's undo history; setRangeText is the fallback where it is gone.
    if (!document.execCommand || !document.execCommand("insertText", false, "___")) {
      text.setRangeText("___", start, end, "end");
      text.dispatchEvent(new Event("input"));
    }
    say(`Hid “${value.slice(start, end)}”. Press Enter to fill.`);
  }

  function updateTokens() {
    clearTimeout(tokenTimer);
    tokenTimer = setTimeout(async () => {
      const value = text.value;
      const near = value.length > limits.max_text * 0.9 ? `  ·  ${value.length} / ${limits.max_text} characters` : "";
      if (!value) {
        $("text-count").textContent = "";
        $("tokens").replaceChildren();
        return;
      }
      try {
        const data = await (await api("/api/tokenize", { text: value })).json();
        if (value !== text.value) return; // typed on meanwhile
        const label = (name) => (models.find((m) => m.name === name) || { label: name }).label;
        $("text-count").textContent = data.results.map((r) => r.error ? `${label(r.model)}: ${r.error}`
          : `${r.count} tokens for ${label(r.model)}`).join("  ·  ") + near;
        $("tokens").replaceChildren(...data.results.filter((r) => !r.error).map((r) => el("div", { class: "token-row" },
          el("h3", {}, label(r.model)),
          el("div", { class: "chips" }, ...r.tokens.slice(0, 400).map((t) => el("span", { class: "chip", title: `id ${t.id}: ${t.piece}` }, t.text))))));
      } catch (error) {
        $("text-count").textContent = error.message;
      }
    }, 350);
  }

  // ------------------------------------------------------------------------------------------ fill

  async function fill() {
    if ($("fill").disabled || !models.length) return;
    const value = text.value;
    if (!value.trim()) {
      say("Type a text first.", true);
      text.focus();
      return;
    }
    if (!BLANK.test(value)) {
      say("Nothing is hidden yet: select a word and press Hide selected word, or type ___.", true);
      text.focus();
      return;
    }
    const top = intFrom($("top"), 1, limits.max_top, 5);
    const run = ++fillRun;
    const since = performance.now();
    $("fill").disabled = true;
    say("Filling…");
    const timer = setInterval(() => say(`Filling… ${Math.round((performance.now() - since) / 1000)} s`), 1000);
    // One request per model, so the faster model's answers show while the other is still working.
    const failures = await Promise.all(models.map(async (model) => {
      const column = columnFor(model.name);
      const body = column.querySelector(".column-body");
      column.setAttribute("aria-busy", "true");
      column.querySelector(".timing").textContent = "";
      body.replaceChildren(el("p", { class: "placeholder" }, "Working…"));
      try {
        const data = await (await api("/api/fill", { text: value, top, model: model.name })).json();
        if (run === fillRun) showAnswers(column, model, data.results[0]);
        return null;
      } catch (error) {
        if (run === fillRun) body.replaceChildren(el("p", { class: "bad" }, error.message));
        return error;
      } finally {
        column.removeAttribute("aria-busy");
      }
    }));
    clearInterval(timer);
    if (run !== fillRun) return;
    $("fill").disabled = false;
    const errors = failures.filter(Boolean);
    if (errors.length === models.length) say(errors[0].message, true);
    else say(`Filled in ${elapsed(since)} s.` + (errors.length ? " One model failed: see its column." : ""));
  }

  function showAnswers(column, model, result) {
    const body = column.querySelector(".column-body");
    if (result.error) {
      body.replaceChildren(el("p", { class: "bad" }, result.error));
      return;
    }
    column.querySelector(".timing").textContent = `${result.seconds.toFixed(1)} s`;
    const answers = result.answers;
    const best = Math.max(...answers.map((a) => a.score));
    const weights = answers.map((a) => Math.exp(a.score - best));
    const total = weights.reduce((a, b) => a + b, 0);
    const list = el("ol", { class: "answers", "aria-label": `answers of ${model.label}` });
    answers.forEach((answer, i) => {
      const share = weights[i] / total;
      const fill = el("span");
      fill.style.width = `${(share * 100).toFixed(1)}%`;
      list.append(el("li", {},
        el("span", { class: "rank", "aria-hidden": "true" }, `${i + 1}.`),
        el("p", { class: "answer-text", title: answer.text }, ...answerParts(answer)),
        el("span", { class: "answer-side" },
          el("span", { class: "score", title: "log-probability" }, answer.score.toFixed(2).replace("-", "−")),
          el("button", { type: "button", class: "small", "aria-label": `Attention heads of answer ${i + 1} of ${model.label}`,
            onclick: () => showHeads(answer.text) }, "Heads")),
        el("span", { class: "share", title: "share of the shown answers" },
          el("span", { class: "bar", "aria-hidden": "true" }, fill), `${Math.round(share * 100)}%`)));
    });
    const notes = answers.length ? answers[0].notes : [];
    body.replaceChildren(list, ...notes.map((n) => el("p", { class: "help" }, n)));
  }

  // A long text is shown around its blanks: 60 characters on each side, cut at a space.
  function answerParts(answer) {
    const parts = answer.parts || [{ text: answer.text }];
    const keep = 60;
    const out = [];
    const gap = () => el("span", { class: "elided", "aria-label": "text left out" }, "…");
    parts.forEach((part, i) => {
      if (part.fill !== undefined) {
        out.push(el("mark", {}, part.fill === "" ? "∅" : part.fill));
        return;
      }
      const s = part.text, first = i === 0, last = i === parts.length - 1;
      if (first && !last && s.length > keep + 15) out.push(gap(), s.slice(-keep).replace(/^\S*/, ""));
      else if (last && !first && s.length > keep + 15) out.push(s.slice(0, keep).replace(/\S*$/, ""), gap());
      else if (!first && !last && s.length > 2 * keep + 15) out.push(s.slice(0, keep), gap(), s.slice(-keep));
      else out.push(s);
    });
    return out;
  }

  // ------------------------------------------------------------------------------------------ generate

  async function generate() {
    if (generation || $("generate").disabled) return;
    const value = text.value;
    const cut = value.search(BLANK);
    const prompt = (cut >= 0 ? value.slice(0, cut) : value).replace(/[ \t]+$/, "");
    const body = {
      text: prompt, model: $("gen-model").value,
      max_tokens: intFrom($("max-tokens"), 1, limits.max_new_tokens, 40),
      temperature: Math.max(0, Number.parseFloat($("temperature").value) || 0),
    };
    const seed = Number.parseInt($("seed").value, 10);  // a seed shapes sampling only: greedy decoding takes none
    if (Number.isFinite(seed) && seed >= 0 && body.temperature > 0) body.seed = seed;
    const output = $("gen-output");
    output.querySelector(".prompt").textContent = prompt;
    const continuation = output.querySelector(".continuation");
    continuation.textContent = "";
    generation = new AbortController();
    $("generate").disabled = true;
    $("stop").hidden = false;
    const since = performance.now();
    say("Generating… (Esc stops)");
    try {
      const response = await api("/api/generate", body, generation.signal);
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "", last = null;
      for (;;) {
        const { value: chunk, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(chunk, { stream: true });
        let newline;
        while ((newline = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, newline);
          buffer = buffer.slice(newline + 1);
          if (!line.trim()) continue;
          const event = JSON.parse(line);
          if (typeof event.text === "string") continuation.append(event.text);
          else if (event.done || event.error) last = event;
        }
      }
      if (last && last.error) say(last.error, true);
      else if (last && last.stopped === "time limit") say("Stopped at the server's time limit.");
      else say(`Generated in ${elapsed(since)} s.`);
    } catch (error) {
      if (error.name === "AbortError") say("Stopped.");
      else say(error.message === "Failed to fetch" ? networkError().message : error.message, true);
    } finally {
      generation = null;
      $("generate").disabled = false;
      $("stop").hidden = true;
    }
  }

  function stopGeneration() {
    if (generation) generation.abort();
  }

  // ------------------------------------------------------------------------------------------ heads

  async function showHeads(value = text.value) {
    if (!value.trim()) {
      say("Type a text first.", true);
      text.focus();
      return;
    }
    const url = "/api/heads?" + new URLSearchParams({ text: value });
    const button = $("heads");
    button.disabled = true;
    const since = performance.now();
    say("Computing the attention maps…");
    try {
      // Asked once here to see errors (an iframe cannot show a status); the server keeps the page, so the
      // iframe's own request for it costs nothing.
      await (await api(url)).arrayBuffer();
      const frame = $("heads-frame");
      frame.hidden = false;
      frame.src = url;
      const open = $("heads-open");
      open.href = url;
      open.hidden = false;
      say(`Attention maps ready in ${elapsed(since)} s (below).`);
      $("heads-title").scrollIntoView({ block: "start" });
    } catch (error) {
      say(error.message, true);
    } finally {
      button.disabled = false;
    }
  }

  // ------------------------------------------------------------------------------------------ wiring

  $("hide").addEventListener("click", hideSelection);
  $("fill").addEventListener("click", fill);
  $("generate").addEventListener("click", generate);
  $("stop").addEventListener("click", stopGeneration);
  $("heads").addEventListener("click", () => showHeads());
  text.addEventListener("input", updateTokens);
  text.addEventListener("keydown", (event) => {
    // Enter and Ctrl+Enter fill; Shift+Enter is a new line; Enter while composing (IME) is the IME's.
    if (event.key === "Enter" && !event.shiftKey && !event.altKey && !event.isComposing) {
      event.preventDefault();
      fill();
    }
  });
  $("top").addEventListener("keydown", (event) => {
    if (event.key === "Enter") fill();
  });
  for (const id of ["max-tokens", "temperature", "seed", "gen-model"]) {
    $(id).addEventListener("keydown", (event) => {
      if (event.key === "Enter") generate();
    });
  }
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape") stopGeneration();
  });
  start();
})();
