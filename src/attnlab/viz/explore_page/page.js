// attnlab attention explorer. Reads the page data (the JSON in #attnlab-data, written by
// attnlab.viz.explore) and draws it with SVG and canvas; no library, no network.
// A renderer per model kind: RENDER.vit, RENDER.lm, RENDER.translation, RENDER.detr.
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("attnlab-data").textContent);
  const SVGNS = "http://www.w3.org/2000/svg";
  const HEAD_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#393b79", "#ad494a", "#637939", "#8c6d31", "#843c39", "#7b4173"];
  const headColor = (h) => HEAD_COLORS[h % HEAD_COLORS.length];

  // ------------------------------------------------------------------ decoding the numbers
  function bytes(s) {
    const bin = atob(s), out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  function floats(s) {
    const b = bytes(s), dv = new DataView(b.buffer), out = new Float32Array(b.length / 4);
    for (let i = 0; i < out.length; i++) out[i] = dv.getFloat32(4 * i, true);
    return out;
  }
  // Attention weights (L, H, Tq, Tk), 8 bits per weight relative to its row's maximum.
  function Attention(packed) {
    const [L, H, Tq, Tk] = packed.shape, q = bytes(packed.q), rowmax = floats(packed.rowmax);
    return {
      L, H, Tq, Tk,
      row(l, h, i) {
        const r = ((l * H + h) * Tq + i), base = r * Tk, m = rowmax[r] / 255, out = new Float32Array(Tk);
        for (let j = 0; j < Tk; j++) out[j] = q[base + j] * m;
        return out;
      },
      matrix(l, h) {
        const out = new Float32Array(Tq * Tk);
        for (let i = 0; i < Tq; i++) out.set(this.row(l, h, i), i * Tk);
        return out;
      },
    };
  }

  // ------------------------------------------------------------------ small helpers
  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const k of kids) if (k != null) e.append(k);
    return e;
  }
  function svg(tag, attrs) {
    const e = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    return e;
  }
  const fmt = (x, d = 3) => (Number.isFinite(x) ? x.toFixed(d) : (x > 0 ? "∞" : x < 0 ? "−∞" : "NaN"));
  const maxOf = (a) => { let m = -Infinity; for (const v of a) if (v > m) m = v; return m; };
  function section(title, explain) {
    const s = el("section", { class: "card" }, el("h2", { text: title }));
    if (explain) s.append(el("p", { class: "explain", text: explain }));
    document.getElementById("app").append(s);
    return s;
  }
  // Colour maps: matplotlib's inferno (attention) and viridis (similarity), 9 stops each.
  const MAPS = {
    inferno: [[0, 0, 4], [31, 12, 72], [85, 15, 109], [136, 34, 106], [186, 54, 85], [227, 89, 51], [249, 140, 10], [249, 201, 50], [252, 255, 164]],
    viridis: [[68, 1, 84], [71, 45, 123], [59, 82, 139], [44, 114, 142], [33, 145, 140], [40, 174, 128], [94, 201, 98], [173, 220, 48], [253, 231, 37]],
  };
  function colour(t, name) {
    const m = MAPS[name || "inferno"], x = Math.min(1, Math.max(0, t)) * (m.length - 1), i = Math.min(m.length - 2, Math.floor(x)), f = x - i;
    return m[i].map((c, k) => Math.round(c + f * (m[i + 1][k] - c)));
  }
  // Draw rows x cols values into a canvas of that many pixels (CSS scales it up).
  function heatmap(canvas, values, rows, cols, opts) {
    opts = opts || {};
    canvas.width = cols; canvas.height = rows;
    const ctx = canvas.getContext("2d"), img = ctx.createImageData(cols, rows);
    const lo = opts.vmin != null ? opts.vmin : 0, hiAll = opts.vmax != null ? opts.vmax : (maxOf(values) || 1);
    const rowMax = opts.rowNorm ? [...Array(rows).keys()].map((i) => maxOf(values.subarray(i * cols, (i + 1) * cols)) || 1) : null;
    for (let p = 0; p < rows * cols; p++) {
      const blank = opts.blankRowsFrom != null && Math.floor(p / cols) >= opts.blankRowsFrom;
      const hi = rowMax ? rowMax[Math.floor(p / cols)] : hiAll;
      const [r, g, b] = blank ? [240, 240, 240] : colour((values[p] - lo) / ((hi - lo) || 1), opts.cmap);
      img.data.set([r, g, b, 255], 4 * p);
    }
    ctx.putImageData(img, 0, 0);
  }
  // Paint gh x gw values (a row of attention over an image's grid) into a w x hgt canvas, each
  // relative to the largest; alpha [a, b]: opacity a + b·value (an overlay), null: opaque. Outline a cell.
  function paintGrid(ctx, vals, gh, gw, w, hgt, alpha, outline) {
    ctx.clearRect(0, 0, w, hgt);
    const mx = maxOf(vals) || 1, cw = w / gw, ch = hgt / gh;
    for (let p = 0; p < gh * gw; p++) {
      const t = vals[p] / mx, [r, g, b] = colour(t);
      ctx.fillStyle = `rgba(${r},${g},${b},${alpha == null ? 1 : (alpha[0] + alpha[1] * t).toFixed(3)})`;
      ctx.fillRect((p % gw) * cw, Math.floor(p / gw) * ch, Math.ceil(cw), Math.ceil(ch));
    }
    if (outline != null) {
      ctx.strokeStyle = "#00e5ff"; ctx.lineWidth = 2;
      ctx.strokeRect((outline % gw) * cw + 1, Math.floor(outline / gw) * ch + 1, cw - 2, ch - 2);
    }
  }
  // One row of attention (L, H, Tq, Tk): head h, or the mean of the heads when h < 0.
  function headRow(A, l, h, i) {
    if (h >= 0) return A.row(l, h, i);
    const m = new Float32Array(A.Tk);
    for (let hh = 0; hh < A.H; hh++) { const r = A.row(l, hh, i); for (let j = 0; j < A.Tk; j++) m[j] += r[j] / A.H; }
    return m;
  }
  function legend(cmap, lo, hi, what) {
    const c = el("canvas");
    const v = new Float32Array(64).map((_, i) => i / 63);
    heatmap(c, v, 1, 64, { cmap, vmin: 0, vmax: 1 });
    return el("div", { class: "legend" }, el("span", { text: lo }), c, el("span", { text: hi }), el("span", { text: what }));
  }

  // ------------------------------------------------------------------ header
  function header() {
    const m = DATA.meta, meta = document.getElementById("meta");
    meta.append(el("b", { text: m.model }), ` · ${m.family} · ${(m.parameters / 1e6).toFixed(2)}M parameters`,
      el("span", m.random_init ? { class: "badge random", id: "random-init", text: "random init" } : { class: "badge trained", id: "loaded-weights", text: "loaded weights" }));
    const notes = document.getElementById("notes");
    if (m.random_init) notes.append(el("li", { text: "Random init: the weights are untrained, so the patterns below show the mechanics, not what a trained model learned." }));
    for (const n of DATA.notes || []) notes.append(el("li", { text: n }));
  }

  // A heat map with the query tokens down its left and the key tokens along its top.
  function labelledHeatmap(canvas, values, qTok, kTok, opts) {
    const px = Math.max(6, Math.min(22, Math.floor(420 / Math.max(qTok.length, kTok.length))));
    heatmap(canvas, values, qTok.length, kTok.length, opts);
    canvas.style.width = `${kTok.length * px}px`; canvas.style.height = `${qTok.length * px}px`;
    const kl = el("div", { class: "klabels", style: `width:${kTok.length * px}px` }, ...kTok.map((t) => el("span", { style: `width:${px}px;line-height:${px}px`, text: t })));
    const ql = el("div", { class: "qlabels" }, ...qTok.map((t) => el("span", { style: `height:${px}px;line-height:${px}px`, text: t })));
    return el("div", { class: "zoom-wrap" }, el("span"), kl, ql, canvas);
  }

  // ------------------------------------------------------------------ head view (text)
  // Tokens on both sides, a line from query i to key j per selected head, opacity = weight.
  function headView(root, set, qTok, kTok, hooks) {
    const A = set.attn, st = { layer: A.L - 1, heads: new Set([...Array(A.H).keys()]), hover: null, pinned: null, focus: null };
    const layerSel = el("select", { class: "layer", "aria-label": "layer" });
    for (let l = 0; l < A.L; l++) layerSel.append(el("option", { value: l, text: `layer ${set.layers[l]}` }));
    layerSel.value = st.layer;
    layerSel.addEventListener("change", () => { st.layer = +layerSel.value; draw(); });
    const toggles = [...Array(A.H).keys()].map((h) => el("button", {
      class: "head-toggle", "data-head": h, "aria-pressed": "true", title: `head ${h} (click to show or hide)`,
      style: `background:${headColor(h)}`, text: h,
      onclick: () => { st.heads.has(h) ? st.heads.delete(h) : st.heads.add(h); draw(); },
    }));
    const all = el("button", { text: "all", onclick: () => { toggles.forEach((_, h) => st.heads.add(h)); draw(); } });
    const none = el("button", { text: "none", onclick: () => { st.heads.clear(); draw(); } });
    root.append(el("div", { class: "controls" }, el("label", { text: "layer" }), layerSel, el("label", { text: "heads" }), ...toggles, all, none));
    const rowH = 18, w = 520, lx = 150, rx = w - 150, n = Math.max(A.Tq, A.Tk);
    const box = svg("svg", { class: "headview", width: w, height: n * rowH + 24, "data-set": set.id });
    root.append(box);
    const lines = svg("g"), left = svg("g", { class: "hv-left" }), right = svg("g", { class: "hv-right" });
    box.append(svg("text", { x: lx, y: 12, "text-anchor": "end", fill: "#6b6b70", style: "font-weight:600" }),
      svg("text", { x: rx, y: 12, fill: "#6b6b70", style: "font-weight:600" }), lines, left, right);
    box.children[0].textContent = `${set.queries} (query) ↓`; box.children[1].textContent = `${set.keys} (key)`;
    const y = (i) => 24 + i * rowH + rowH / 2;
    function tokens(g, toks, x, anchor, side) {
      return toks.map((t, i) => {
        const bg = svg("rect", { class: "tokbg", x: anchor === "end" ? x - 110 : x - 2, y: y(i) - rowH / 2 + 1, width: 112, height: rowH - 2, opacity: 0 });
        const tx = svg("text", { x, y: y(i) + 4, "text-anchor": anchor, "data-i": i });
        tx.textContent = t;
        tx.addEventListener("mouseenter", () => { st.hover = { side, i }; draw(); });
        tx.addEventListener("mouseleave", () => { st.hover = null; draw(); });
        if (side === "q") tx.addEventListener("click", () => { st.pinned = st.pinned === i ? null : i; if (hooks && hooks.onQuery && st.pinned != null) hooks.onQuery(i); draw(); });
        g.append(bg, tx);
        return { bg, tx };
      });
    }
    const L = tokens(left, qTok, lx, "end", "q"), R = tokens(right, kTok, rx, "start", "k");
    function draw() {
      toggles.forEach((b, h) => b.setAttribute("aria-pressed", st.heads.has(h) ? "true" : "false"));
      layerSel.value = st.layer;
      lines.replaceChildren();
      const q = st.hover && st.hover.side === "q" ? st.hover.i : (st.pinned != null ? st.pinned : st.focus);
      const k = st.hover && st.hover.side === "k" ? st.hover.i : null;
      const kw = new Float32Array(A.Tk), qw = new Float32Array(A.Tq), heads = [...st.heads];
      for (const h of heads) {
        for (let i = 0; i < A.Tq; i++) {
          if (q != null && i !== q) continue;
          const row = A.row(st.layer, h, i);
          for (let j = 0; j < A.Tk; j++) {
            if (k != null && j !== k) continue;
            const wgt = row[j];
            if (q != null) kw[j] += wgt / heads.length;
            if (k != null) qw[i] += wgt / heads.length;
            if (wgt < 0.01) continue;
            lines.append(svg("line", { x1: lx + 6, y1: y(i), x2: rx - 6, y2: y(j), stroke: headColor(h), "stroke-width": 2,
              "stroke-opacity": Math.min(1, wgt).toFixed(3), "data-head": h, "data-q": i, "data-k": j }));
          }
        }
      }
      L.forEach((t, i) => { t.bg.setAttribute("opacity", k != null ? (0.6 * qw[i]).toFixed(3) : 0); t.tx.classList.toggle("pinned", st.pinned === i || (st.pinned == null && st.focus === i)); });
      R.forEach((t, j) => t.bg.setAttribute("opacity", q != null ? (0.6 * kw[j]).toFixed(3) : 0));
      box.setAttribute("data-layer", set.layers[st.layer]);
      box.setAttribute("data-lines", lines.childElementCount);
    }
    draw();
    return {
      show(layer, heads) { st.layer = layer; st.heads = new Set(heads); draw(); },
      focus(i) { st.focus = i; draw(); },
    };
  }

  // ------------------------------------------------------------------ model view (text)
  // Every layer x head as a small heat map; click one to enlarge it (and show it in the head view).
  function modelView(root, set, qTok, kTok, onPick) {
    const A = set.attn;
    const grid = el("div", { class: "mv-grid", style: `grid-template-columns: 60px repeat(${A.H}, 68px)` });
    grid.append(el("span"));
    for (let h = 0; h < A.H; h++) grid.append(el("span", { class: "lab", style: "text-align:center", text: `head ${h}` }));
    const zoom = el("div", { id: `mv-zoom-${set.id}`, class: "mv-zoom", hidden: "" });
    const cells = [];
    for (let l = 0; l < A.L; l++) {
      grid.append(el("span", { class: "lab", text: `layer ${set.layers[l]}` }));
      for (let h = 0; h < A.H; h++) {
        const c = el("canvas", { class: "mv-cell", "data-layer": l, "data-head": h, title: `layer ${set.layers[l]}, head ${h}: click to enlarge` });
        heatmap(c, A.matrix(l, h), A.Tq, A.Tk, { rowNorm: true });
        c.addEventListener("click", () => pick(l, h));
        cells.push(c); grid.append(c);
      }
    }
    function pick(l, h) {
      cells.forEach((c) => c.classList.toggle("active", +c.dataset.layer === l && +c.dataset.head === h));
      zoom.replaceChildren(el("h3", { text: `layer ${set.layers[l]} · head ${h}` }),
        labelledHeatmap(el("canvas", { class: "big" }), A.matrix(l, h), qTok, kTok, { rowNorm: true }),
        legend("inferno", "0", "row max", "weight (rows: queries, columns: keys)"),
        el("button", { text: "close", onclick: () => { zoom.hidden = true; cells.forEach((c) => c.classList.remove("active")); } }));
      zoom.hidden = false;
      zoom.dataset.layer = l; zoom.dataset.head = h;
      if (onPick) onPick(l, h);
    }
    root.append(el("div", { class: "row" }, grid, zoom));
    return { pick };
  }

  // ------------------------------------------------------------------ the worked head
  // the head's scaling of the scores: ÷√d_k, or a learned scale (Locality Self-Attention's temperature)
  const scaleName = (W) => (W && W.learned_scale ? "× learned scale" : "÷√d_k");
  // softmax(q·kⱼ·scale + bias) and Σ wⱼ vⱼ for one query, from the stored Q, K, V of one head.
  function workedHead(root, W, qTok, kTok, title) {
    const D = W.d_k, Tq = W.tq, Tk = W.tk, Q = floats(W.q), K = floats(W.k), V = floats(W.v);
    const B = W.bias ? floats(W.bias) : null, vis = bytes(W.visible), model = floats(W.weights);
    const st = { query: Tq - 1, mode: "model", tau: 1 };
    root.append(el("p", { class: "explain", text: `${title}: layer ${W.layer}, head ${W.head}. The numbers are this head's real query, keys and values (d_k = ${D}); the page computes each step itself.` }));
    const qSel = el("select", { id: "worked-query", "aria-label": "query" });
    qTok.forEach((t, i) => qSel.append(el("option", { value: i, text: `${i}: ${t}` })));
    qSel.addEventListener("change", () => { st.query = +qSel.value; draw(); });
    const S = scaleName(W), sTxt = W.learned_scale ? ` × ${fmt(W.scale, 4)}` : ` / √${D}`;
    const modes = [["model", `${S} (the model)`], ["unscaled", "no scaling"], ["temperature", "temperature τ"]];
    const radios = modes.map(([m, label]) => {
      const r = el("input", { type: "radio", name: "worked-mode", id: `worked-mode-${m}`, value: m });
      if (m === st.mode) r.checked = true;
      r.addEventListener("change", () => { st.mode = m; draw(); });
      return el("label", {}, r, ` ${label}`);
    });
    const tau = el("input", { type: "range", id: "worked-tau", min: "-2", max: "2", step: "0.05", value: "0", "aria-label": "log2 temperature" });
    const tauOut = el("span", { class: "mono", text: "τ = 1.00" });
    tau.addEventListener("input", () => { st.tau = Math.pow(2, +tau.value); st.mode = "temperature"; document.getElementById("worked-mode-temperature").checked = true; draw(); });
    root.append(el("div", { class: "controls" }, el("label", { text: "query" }), qSel, ...radios, tau, tauOut));
    const eq = el("div", { class: "eq mono" }), qv = el("div", { class: "vec", id: "worked-q" }), stats = el("div", { class: "stat", id: "worked-stats" });
    const bars = svg("svg", { width: 720, height: 70, id: "worked-bars" });
    const table = el("table", { class: "worked", id: "worked-table" }), out = el("div", { class: "vec", id: "worked-out" });
    const check = el("div", { id: "worked-check" });
    root.append(eq, el("h3", { text: "1. the query q (this token's row of Q = x W_Q)" }), qv,
      el("h3", { text: "2. scores q·kⱼ, scaled, softmax over the keys it may see" }), bars, stats, table,
      el("h3", { text: "3. the output Σⱼ wⱼ vⱼ (before W_O mixes the heads)" }), out, check);
    const vec = (a) => "[" + Array.from(a, (x) => fmt(x, 3)).join(", ") + "]";
    function softmax(z) {
      let m = -Infinity; for (const v of z) if (v > m) m = v;
      const e = z.map((v) => (v === -Infinity ? 0 : Math.exp(v - m))), s = e.reduce((a, b) => a + b, 0);
      return e.map((v) => v / s);
    }
    function draw() {
      qSel.value = st.query; tauOut.textContent = `τ = ${st.tau.toFixed(2)}`;
      const i = st.query, q = Q.subarray(i * D, (i + 1) * D), dot = new Float64Array(Tk), logit = new Float64Array(Tk), model_logit = new Float64Array(Tk);
      for (let j = 0; j < Tk; j++) {
        let s = 0; for (let d = 0; d < D; d++) s += q[d] * K[j * D + d];
        dot[j] = s;
        const b = B ? B[i * Tk + j] : 0, seen = vis[i * Tk + j] === 1;
        model_logit[j] = seen ? s * W.scale + b : -Infinity;
        const z = st.mode === "unscaled" ? s + b : st.mode === "temperature" ? (s * W.scale + b) / st.tau : s * W.scale + b;
        logit[j] = seen ? z : -Infinity;
      }
      const w = softmax(logit), wModel = softmax(model_logit);
      const scaleTxt = st.mode === "unscaled" ? "" : st.mode === "temperature" ? `${sTxt} / ${st.tau.toFixed(2)}` : sTxt;
      eq.textContent = `w = softmax(q·Kᵀ${scaleTxt}${B ? " + bias" : ""})   o = Σⱼ wⱼ vⱼ        query ${i}: ${qTok[i]}`;
      qv.textContent = vec(q);
      // bars: every key's weight (this mode) and the model's as an outline
      bars.replaceChildren();
      const bw = Math.max(1, Math.min(24, Math.floor(720 / Tk))), top = Math.max(1e-9, maxOf(w), maxOf(wModel));
      for (let j = 0; j < Tk; j++) {
        const hh = 60 * w[j] / top, hm = 60 * wModel[j] / top;
        bars.append(svg("rect", { x: j * bw, y: 64 - hh, width: Math.max(1, bw - 1), height: hh, fill: "#0a66c2" }));
        bars.append(svg("rect", { x: j * bw, y: 64 - hm, width: Math.max(1, bw - 1), height: hm, fill: "none", stroke: "#d62728", "stroke-width": 0.7 }));
      }
      let ent = 0; for (const p of w) if (p > 0) ent -= p * Math.log2(p);
      const mx = maxOf(w);
      stats.textContent = `largest weight ${fmt(mx)} · entropy ${fmt(ent, 2)} bits (≈ ${fmt(Math.pow(2, ent), 1)} keys in effect) · blue: this softmax, red outline: the model's`;
      stats.dataset.max = mx;
      // table: the keys with the largest weights
      const order = [...Array(Tk).keys()].filter((j) => vis[i * Tk + j] === 1).sort((a, b) => w[b] - w[a]);
      const shown = order.slice(0, 12);
      table.replaceChildren(el("tr", {}, ...["key", "q·kⱼ", S, ...(B ? ["+ bias"] : []), "weight here", "", "model's weight"].map((t) => el("th", { text: t }))));
      for (const j of shown) {
        table.append(el("tr", { "data-k": j }, el("td", { class: "tok", text: `${j}: ${kTok[j]}` }), el("td", { text: fmt(dot[j]) }),
          el("td", { text: fmt(dot[j] * W.scale) }), ...(B ? [el("td", { text: fmt(B[i * Tk + j]) })] : []),
          el("td", { class: "w", text: fmt(w[j], 4) }), el("td", { class: "bar" }, el("div", { style: `width:${(100 * w[j]).toFixed(1)}%` })),
          el("td", { text: fmt(model[i * Tk + j], 4) })));
      }
      const rest = order.slice(12), restW = rest.reduce((a, j) => a + w[j], 0), hidden = Tk - order.length;
      if (rest.length || hidden) table.append(el("tr", {}, el("td", { class: "tok", colspan: 7, text: `${rest.length ? `… ${rest.length} more keys with total weight ${fmt(restW, 4)}` : ""}${hidden ? `${rest.length ? "; " : ""}${hidden} keys masked out (weight 0)` : ""}` })));
      const o = new Float64Array(D);
      for (let j = 0; j < Tk; j++) if (w[j] > 0) for (let d = 0; d < D; d++) o[d] += w[j] * V[j * D + d];
      out.textContent = vec(o);
      let diff = 0; for (let j = 0; j < Tk; j++) diff = Math.max(diff, Math.abs(wModel[j] - model[i * Tk + j]));
      check.className = diff < 1e-4 ? "ok" : "bad";
      check.dataset.diff = diff;
      check.textContent = `check: this page's softmax ${S} against the model's own weights for query ${i}: largest difference ${diff.toExponential(1)}`;
    }
    draw();
    return { setQuery(i) { st.query = i; draw(); } };
  }

  // ------------------------------------------------------------------ text models
  function textSets(tokensOf) {
    return DATA.sets.map((s) => ({ ...s, attn: Attention(s.attention), qTok: tokensOf(s.queries), kTok: tokensOf(s.keys) }));
  }
  function attentionSection(sets, withStep) {
    const sec = section("Head view and model view",
      "Head view: each query token (left) sends lines to the key tokens (right) it attends to, one colour per head, stronger lines for larger weights. Hover a token to isolate it, click a query to pin it, click a head's square to show or hide it. Model view: every layer × head; click one to enlarge it.");
    const tabs = el("div", { class: "controls", role: "tablist" });
    const body = el("div");
    sec.append(tabs, body);
    const views = {};
    sets.forEach((s) => {
      const b = el("button", { class: "tab", role: "tab", "data-set": s.id, "aria-selected": "false", text: s.title, onclick: () => select(s.id) });
      tabs.append(b);
    });
    function select(id) {
      tabs.querySelectorAll("button").forEach((b) => b.setAttribute("aria-selected", b.dataset.set === id ? "true" : "false"));
      body.replaceChildren();
      const s = sets.find((x) => x.id === id);
      const hv = el("div"), mv = el("div");
      body.append(el("h3", { text: `head view: ${s.title}` }), hv, el("h3", { text: `model view: ${s.title}` }), mv);
      const head = headView(hv, s, s.qTok, s.kTok, { onQuery: (i) => worked && worked.set === id && worked.view.setQuery(i) });
      modelView(mv, s, s.qTok, s.kTok, (l, h) => head.show(l, [h]));
      views[id] = head;
      if (withStep) withStep.apply();
    }
    if (sets.length < 2) tabs.hidden = true;
    return { select, views };
  }
  let worked = null;
  function workedSection(sets, tokensOf) {
    if (!DATA.worked) return;
    const W = DATA.worked, s = sets.find((x) => x.id === W.set);
    const sec = section(`A worked head: Q·Kᵀ → ${scaleName(DATA.worked)} → softmax → ·V`,
      "Attention(Q, K, V) = softmax(QKᵀ/√d_k) V, one query at a time. Switch off the scaling or change the temperature to see why the paper divides by √d_k: dot products of d_k-dimensional vectors grow with d_k, and an unscaled softmax saturates onto a few keys.");
    sec.id = "worked";
    const view = workedHead(sec, W, tokensOf(s.queries), tokensOf(s.keys), s.title);
    worked = { set: W.set, view };
  }
  function renderText(tokensOf, withStep) {
    const sets = textSets(tokensOf);
    const ui = attentionSection(sets, withStep);
    workedSection(sets, tokensOf);
    ui.select(DATA.kind === "translation" && sets.some((s) => s.id === "cross") ? "cross" : sets[0].id);
    return { sets, ui };
  }

  const RENDER = {};
  RENDER.lm = function () {
    const T = DATA.text;
    const sec = section("The prompt", "Each token and the next token the model predicts there (with its probability).");
    sec.append(el("div", { class: "chips predicted", id: "prompt" }, ...T.tokens.map((t, i) => el("span", { class: "tok" },
      el("span", { text: t }), el("span", { class: "pred", text: `→ ${T.next[i].token} ${fmt(T.next[i].p, 2)}` })))));
    renderText(() => T.tokens);
  };

  RENDER.translation = function () {
    const T = DATA.text, tokensOf = (side) => (side === "source" ? T.source : T.target);
    const Tt = T.target.length;
    const sec = section(T.forced ? "Decoding a forced target, one step at a time" : "Decoding, one step at a time",
      (T.forced
        ? "The target was given (--target) and forced: at step t the decoder has read the given target up to t (blue), whatever it would have said itself. Dashed: the target's next token; beside it, what the model itself predicts there (red where the two differ)."
        : "At step t the decoder has read its own translation up to t (blue) and predicts the next token (dashed).") +
      " The head views of decoder self-attention and cross-attention follow the step's query; the alignment grows one row per step.");
    const step = el("input", { type: "range", id: "step", min: 0, max: Tt - 1, value: 0, "aria-label": "decoding step" });
    const label = el("span", { class: "mono", id: "step-label" });
    const src = el("div", { class: "chips" }, ...T.source.map((t) => el("span", { text: t })));
    const tgt = el("div", { class: "chips", id: "target" });
    const alignCanvas = el("canvas", { class: "big", id: "alignment" }), alignWrap = el("div");
    const layerSel = el("select", { "aria-label": "alignment layer" });
    const cross = DATA.sets.find((s) => s.id === "cross"), C = Attention(cross.attention);
    for (let l = 0; l < C.L; l++) layerSel.append(el("option", { value: l, text: `layer ${cross.layers[l]}, mean of heads` }));
    layerSel.value = C.L - 1;
    sec.append(el("div", { class: "controls" }, el("label", { text: "step" }), step, label), el("h3", { text: "source" }), src,
      el("h3", { text: "target" }), tgt, el("h3", { text: "cross-attention alignment (rows: target steps, columns: source tokens)" }),
      el("div", { class: "controls" }, layerSel), alignWrap);
    let ui = null;
    const withStep = {
      apply() {
        const t = +step.value;
        if (ui) for (const id of ["dec", "cross"]) if (ui.views[id]) ui.views[id].focus(t);
        if (worked && worked.set !== "enc") worked.view.setQuery(t);  // decoder queries are the steps
      },
    };
    function update() {
      const t = +step.value;
      const own = T.predicted[t], differs = T.forced && own !== T.output[t];
      label.textContent = T.forced
        ? `step ${t}: reads “${T.target.slice(0, t + 1).join(" ")}” → target (forced) “${T.output[t]}” · the model predicts “${own}”`
        : `step ${t}: reads “${T.target.slice(0, t + 1).join(" ")}” → predicts “${own}”`;
      label.classList.toggle("differs", differs);
      tgt.replaceChildren(...T.target.map((x, i) => el("span", { class: i < t ? "done" : i === t ? "now" : "", text: x })),
        el("span", { class: "next", text: T.forced ? T.output[t] : own }),
        T.forced ? el("span", { class: differs ? "own differs" : "own", id: "own-prediction", text: `model: ${own}` }) : null);
      const l = +layerSel.value, m = new Float32Array(C.Tq * C.Tk);
      for (let h = 0; h < C.H; h++) { const a = C.matrix(l, h); for (let p = 0; p < a.length; p++) m[p] += a[p] / C.H; }
      alignWrap.replaceChildren(labelledHeatmap(alignCanvas, m, T.target, T.source, { blankRowsFrom: t + 1, vmin: 0, vmax: 1 }));
      alignCanvas.dataset.step = t;
      withStep.apply();
    }
    step.addEventListener("input", update);
    layerSel.addEventListener("change", update);
    ui = renderText(tokensOf, withStep).ui;
    update();
  };

  // ------------------------------------------------------------------ Vision Transformer
  RENDER.vit = function () {
    const set = DATA.sets[0], A = Attention(set.attention), layers = set.layers, [gh, gw] = DATA.grid, k = DATA.prefix;
    const N = gh * gw, S = 336, cell = S / gw, hS = S * gh / gw;
    const st = { li: layers.length - 1, head: -1, query: DATA.class_token ? 0 : k, pinned: false };
    let vitWorked = null;
    const qName = (i) => (i < k ? (i === 0 && DATA.class_token ? "[CLS]" : `prefix ${i}`) : `patch (${Math.floor((i - k) / gw)}, ${(i - k) % gw})`);
    const tokens = [...Array(k + N).keys()].map(qName);

    const sec = section("Where each patch looks",
      `Hover a patch to see where it attends (its row of the attention matrix, over the ${gh}×${gw} patches), click to pin it. Choose the block and a head, or the mean of the heads. Colours: that row's weight over its largest.`);
    if (DATA.predictions.length) {
      sec.append(el("p", { class: "preds mono", id: "predictions" }, el("b", { text: "prediction: " }),
        DATA.predictions.map((x) => `${x.label} (${fmt(x.p, 3)})`).join(" · ")));
    }
    const layerSel = el("select", { id: "vit-layer", "aria-label": "block" });
    layers.forEach((l, n) => layerSel.append(el("option", { value: n, text: `block ${l}` })));
    layerSel.value = st.li;
    layerSel.addEventListener("change", () => { st.li = +layerSel.value; draw(); });
    const headBtns = [-1, ...Array(A.H).keys()].map((h) => el("button", {
      class: h < 0 ? "" : "head-toggle", "data-head": h, style: h < 0 ? "" : `background:${headColor(h)}`, text: h < 0 ? "mean" : h,
      title: h < 0 ? "mean of the heads" : `head ${h}`, onclick: () => { st.head = h; draw(); },
    }));
    const clsBtn = DATA.class_token ? el("button", { id: "vit-cls", text: "query: [CLS]", onclick: () => { st.query = 0; st.pinned = true; draw(); } }) : null;
    sec.append(el("div", { class: "controls" }, el("label", { text: "block" }), layerSel, el("label", { text: "head" }), ...headBtns, clsBtn));
    const stage = el("div", { class: "stage", id: "vit-stage" });
    const img = el("img", { src: DATA.image.src, width: S, height: hS, alt: "input image" });
    const over = el("canvas", { width: S, height: hS, id: "vit-overlay" });
    stage.append(img, over);
    const info = el("div", { id: "vit-query", class: "mono" });
    const heads = el("div", { class: "heads-grid", id: "vit-heads" });
    sec.append(el("div", { class: "row" }, el("div", { style: `width:${S}px` }, stage, info, legend("inferno", "0", "max", "weight / row max")), el("div", {}, el("h3", { text: "every head of this block, same query" }), heads)));
    const row = (li, h, i) => headRow(A, li, h, i);
    const paint = (ctx, vals, w, hgt, alpha, outline) => paintGrid(ctx, vals, gh, gw, w, hgt, alpha, outline);
    function draw() {
      layerSel.value = st.li;
      headBtns.forEach((b) => b.setAttribute("aria-pressed", +b.dataset.head === st.head ? "true" : "false"));
      const r = row(st.li, st.head, st.query);
      paint(over.getContext("2d"), r.subarray(k), S, hS, [0.05, 0.6], st.query >= k ? st.query - k : null);
      stage.dataset.query = st.query; stage.dataset.layer = layers[st.li]; stage.dataset.head = st.head;
      info.textContent = `query: ${qName(st.query)}${st.pinned ? " (pinned)" : ""} · block ${layers[st.li]}, ${st.head < 0 ? "mean of heads" : `head ${st.head}`}` +
        (k ? ` · weight on [CLS]: ${fmt(r[0], 3)}` : "");
      heads.replaceChildren();
      for (let h = 0; h < A.H; h++) {
        const c = el("canvas", { width: gw * 4, height: gh * 4 });
        paint(c.getContext("2d"), A.row(st.li, h, st.query).subarray(k), gw * 4, gh * 4, null, null);
        heads.append(el("figure", { class: h === st.head ? "active" : "", "data-head": h, onclick: () => { st.head = h; draw(); } }, c, el("figcaption", { text: `head ${h}` })));
      }
    }
    function patchAt(ev) {
      const b = over.getBoundingClientRect();
      const c = Math.min(gw - 1, Math.max(0, Math.floor((ev.clientX - b.left) / (b.width / gw))));
      const r = Math.min(gh - 1, Math.max(0, Math.floor((ev.clientY - b.top) / (b.height / gh))));
      return k + r * gw + c;
    }
    stage.addEventListener("mousemove", (ev) => { if (!st.pinned) { const q = patchAt(ev); if (q !== st.query) { st.query = q; draw(); } } });
    stage.addEventListener("click", (ev) => {
      const q = patchAt(ev);
      st.pinned = !(st.pinned && q === st.query); st.query = q; draw();
      if (vitWorked) vitWorked.setQuery(q);
    });
    draw();

    // rollout
    const R = floats(DATA.rollout.values), depth = DATA.rollout.shape[0];
    const rsec = section("Attention rollout",
      "Rollout (Abnar & Zuidema 2020) follows attention through the blocks and their residual connections: (0.5·A + 0.5·I) multiplied from the first block up, heads averaged. Shown: the class token's row (or the patches' mean), after the chosen block.");
    const rs = el("input", { type: "range", id: "rollout-depth", min: 1, max: depth, value: depth, "aria-label": "blocks rolled out" });
    const rl = el("span", { class: "mono" });
    const rstage = el("div", { class: "stage" }), rimg = el("img", { src: DATA.image.src, width: S, height: hS, alt: "input image" });
    const rover = el("canvas", { width: S, height: hS, id: "rollout-overlay" });
    rstage.append(rimg, rover);
    rsec.append(el("div", { class: "controls" }, el("label", { text: "after block" }), rs, rl), rstage);
    function drawRollout() {
      const d = +rs.value;
      rl.textContent = `blocks 0..${d - 1}`;
      paint(rover.getContext("2d"), R.subarray((d - 1) * N, d * N), S, hS, [0.05, 0.6], null);
    }
    rs.addEventListener("input", drawRollout);
    drawRollout();

    // position embeddings
    if (DATA.posembed) {
      const P = bytes(DATA.posembed.q), psec = section("Position-embedding similarity (ViT paper, Fig. 7)",
        `Tile (r, c) shows the cosine similarity of patch (r, c)'s ${DATA.posembed.kind === "learn" ? "learned" : "2-D sin-cos"} position embedding with every patch's. Hover a tile to enlarge it.`);
      const tile = Math.max(1, Math.floor(300 / (gw * gw))), gap = 1, pw = gw * (gw * tile + gap), ph = gh * (gh * tile + gap);
      const pc = el("canvas", { class: "posgrid", width: pw, height: ph, id: "posgrid" });
      const ctx = pc.getContext("2d"), imgd = ctx.createImageData(pw, ph);
      for (let p = 0; p < N; p++) {
        const tr = Math.floor(p / gw), tc = p % gw;
        for (let j = 0; j < N; j++) {
          const [r, g, b] = colour(P[p * N + j] / 255, "viridis"), y0 = tr * (gh * tile + gap) + Math.floor(j / gw) * tile, x0 = tc * (gw * tile + gap) + (j % gw) * tile;
          for (let dy = 0; dy < tile; dy++) for (let dx = 0; dx < tile; dx++) imgd.data.set([r, g, b, 255], 4 * ((y0 + dy) * pw + x0 + dx));
        }
      }
      ctx.putImageData(imgd, 0, 0);
      pc.style.width = `${Math.min(520, pw * 2)}px`;
      const zoomC = el("canvas", { class: "big", width: gw, height: gh, style: `width:${Math.min(240, gw * 24)}px` });
      const zl = el("div", { class: "mono" });
      const showTile = (r, c) => {
        const p = r * gw + c, v = new Float32Array(N);
        for (let j = 0; j < N; j++) v[j] = P[p * N + j] / 127.5 - 1;
        heatmap(zoomC, v, gh, gw, { cmap: "viridis", vmin: -1, vmax: 1 });
        zl.textContent = `patch (${r}, ${c})`;
      };
      pc.addEventListener("mousemove", (ev) => {
        const b = pc.getBoundingClientRect();
        showTile(Math.min(gh - 1, Math.floor((ev.clientY - b.top) / b.height * gh)), Math.min(gw - 1, Math.floor((ev.clientX - b.left) / b.width * gw)));
      });
      showTile(Math.floor(gh / 2), Math.floor(gw / 2));
      psec.append(el("div", { class: "posgrid-wrap" }, pc, el("div", {}, zl, zoomC)), legend("viridis", "−1", "1", "cosine similarity"));
    }
    if (DATA.worked) {
      const W = DATA.worked, ws = section(`A worked head: Q·Kᵀ → ${scaleName(W)} → softmax → ·V`,
        "Attention(Q, K, V) = softmax(QKᵀ/√d_k) V for one query token (click a patch above, or choose it here). Switch off the scaling or change the temperature to see the softmax sharpen or flatten.");
      ws.id = "worked";
      vitWorked = workedHead(ws, W, tokens, tokens, "self-attention");
      vitWorked.setQuery(st.query);
    }
  };

  // ------------------------------------------------------------------ DETR
  // Put each box's label (most confident first) where it overlaps no label placed before: above the
  // box, inside its top, below it, right-aligned above; else the free row nearest the box. Measured
  // text, so the labels of crowded boxes never print over each other.
  function placeLabels(texts, boxes, w, h) {
    const placed = [], free = (a) => placed.every((b) => a.x + a.w <= b.x || b.x + b.w <= a.x || a.y + a.h <= b.y || b.y + b.h <= a.y);
    texts.forEach((t, n) => {
      const [x0, y0, x1, y1] = boxes[n], bb = t.getBBox(), lw = Math.ceil(bb.width) + 2, lh = Math.ceil(bb.height) + 1;
      const at = (x, y) => ({ x: Math.min(Math.max(0, x), w - lw), y: Math.min(Math.max(0, y), h - lh), w: lw, h: lh });
      const tries = [at(x0, y0 - lh - 1), at(x0 + 2, y0 + 1), at(x0, y1 + 1), at(x1 - lw, y0 - lh - 1)];
      for (let d = 1; d <= Math.ceil(h / lh); d++) for (const dy of [-d, d]) for (const x of [x0, x1 - lw, 0, w - lw]) tries.push(at(x, y0 - lh - 1 + dy * lh));
      const spot = tries.find(free) || tries[0];
      placed.push(spot);
      t.setAttribute("x", spot.x + 1 - bb.x); t.setAttribute("y", spot.y - bb.y);  // bb: the text as drawn at (0, 0)
    });
  }
  // The detections over the image; a query's decoder cross-attention over the feature map (Fig. 6);
  // the encoder self-attention of a hovered feature-map cell (Fig. 3); the worked cross-attention head.
  RENDER.detr = function () {
    const [gh, gw] = DATA.grid, S = 336, hS = Math.round(S * DATA.image.height / DATA.image.width);
    const sx = S / DATA.image.width, sy = hS / DATA.image.height, Q = DATA.queries, shown = DATA.shown;
    const cross = DATA.sets.find((s) => s.id === "cross"), enc = DATA.sets.find((s) => s.id === "enc");
    const C = Attention(cross.attention), E = Attention(enc.attention);
    const qName = (i) => `query ${i}: ${Q[i].label} ${fmt(Q[i].score, 2)}`, cellName = (p) => `cell (${Math.floor(p / gw)}, ${p % gw})`;
    const colourOf = (i) => headColor(shown.indexOf(i));
    let detrWorked = null;
    function layerSelect(id, set, what) {
      const sel = el("select", { id, "aria-label": what });
      set.layers.forEach((l, n) => sel.append(el("option", { value: n, text: `${what} ${l}` })));
      sel.value = set.layers.length - 1;
      return sel;
    }
    function headButtons(A, onPick) {
      return [-1, ...Array(A.H).keys()].map((h) => el("button", {
        class: h < 0 ? "" : "head-toggle", "data-head": h, style: h < 0 ? "" : `background:${headColor(h)}`, text: h < 0 ? "mean" : h,
        title: h < 0 ? "mean of the heads" : `head ${h}`, onclick: () => onPick(h),
      }));
    }
    function stage(id, overlayId) {
      const st = el("div", { class: "stage", id });
      const over = el("canvas", { width: S, height: hS, id: overlayId });
      st.append(el("img", { src: DATA.image.src, width: S, height: hS, alt: "input image" }), over);
      return [st, over];
    }

    // the detections and each query's cross-attention
    const cs = { li: C.L - 1, head: -1, query: shown[0], hover: null };
    const sec = section("Detections and where each query looks (DETR Fig. 6)",
      `Each box is one object query's prediction: its most likely class and that probability (shown: score ≥ ${DATA.threshold}; the other queries predict “no object” or are unsure). Hover or click a box or a query to see its decoder cross-attention over the ${gh}×${gw} feature map, for one decoder layer and head or the mean of the heads. Colours: the weight over its largest.`);
    const layerSel = layerSelect("detr-layer", cross, "decoder layer");
    layerSel.addEventListener("change", () => { cs.li = +layerSel.value; draw(); });
    const heads = el("span", { id: "detr-heads", class: "controls" }, ...headButtons(C, (h) => { cs.head = h; draw(); }));
    const qBtns = shown.map((i) => el("button", {
      class: "query-btn", "data-query": i, style: `border-left:6px solid ${colourOf(i)}`, text: qName(i),
      onclick: () => pick(i), onmouseenter: () => { cs.hover = i; draw(); }, onmouseleave: () => { cs.hover = null; draw(); },
    }));
    sec.append(el("div", { class: "controls", id: "detr-queries" }, el("label", { text: "query" }), ...qBtns),
      el("div", { class: "controls" }, el("label", { text: "decoder layer" }), layerSel, el("label", { text: "head" }), heads));
    const [stg, over] = stage("detr-stage", "detr-cross");
    const boxes = svg("svg", { class: "boxes", id: "detr-boxes", width: S, height: hS });
    stg.append(boxes);
    const rects = shown.map((i) => {
      const [x0, y0, x1, y1] = Q[i].box, g = svg("g", { class: "box", "data-query": i });
      const r = svg("rect", { x: x0 * sx, y: y0 * sy, width: Math.max(1, (x1 - x0) * sx), height: Math.max(1, (y1 - y0) * sy), stroke: colourOf(i) });
      const t = svg("text", { fill: colourOf(i) });
      t.textContent = `${Q[i].label} ${fmt(Q[i].score, 2)}`;
      g.append(r, t);
      g.addEventListener("click", (ev) => { ev.stopPropagation(); pick(i); });
      g.addEventListener("mouseenter", () => { cs.hover = i; draw(); });
      g.addEventListener("mouseleave", () => { cs.hover = null; draw(); });
      boxes.append(g);
      return g;
    });
    const info = el("div", { id: "detr-query", class: "mono" }), grid = el("div", { class: "heads-grid", id: "detr-heads-grid" });
    sec.append(el("div", { class: "row" }, el("div", { style: `width:${S}px` }, stg, info, legend("inferno", "0", "max", "weight / row max")),
      el("div", {}, el("h3", { text: "every head of this layer, same query" }), grid)));
    placeLabels(rects.map((g) => g.querySelector("text")), shown.map((i) => Q[i].box.map((v, n) => v * (n % 2 ? sy : sx))), S, hS);
    function pick(i) { cs.query = i; draw(); if (detrWorked) detrWorked.setQuery(i); }
    function draw() {
      const q = cs.hover != null ? cs.hover : cs.query, r = shown.indexOf(q);
      layerSel.value = cs.li;
      heads.querySelectorAll("button").forEach((b) => b.setAttribute("aria-pressed", +b.dataset.head === cs.head ? "true" : "false"));
      qBtns.forEach((b) => b.setAttribute("aria-pressed", +b.dataset.query === cs.query ? "true" : "false"));
      rects.forEach((g) => g.classList.toggle("active", +g.dataset.query === q));
      boxes.dataset.active = q;
      paintGrid(over.getContext("2d"), headRow(C, cs.li, cs.head, r), gh, gw, S, hS, [0.05, 0.6], null);
      Object.assign(stg.dataset, { query: q, layer: cross.layers[cs.li], head: cs.head });
      info.textContent = `${qName(q)} · box (${Q[q].box.map((v) => fmt(v, 1)).join(", ")}) · decoder layer ${cross.layers[cs.li]}, ${cs.head < 0 ? "mean of heads" : `head ${cs.head}`}`;
      grid.replaceChildren();
      for (let h = 0; h < C.H; h++) {
        const c = el("canvas", { width: gw * 4, height: gh * 4 });
        paintGrid(c.getContext("2d"), C.row(cs.li, h, r), gh, gw, gw * 4, gh * 4, null, null);
        grid.append(el("figure", { class: h === cs.head ? "active" : "", "data-head": h, onclick: () => { cs.head = h; draw(); } }, c, el("figcaption", { text: `head ${h}` })));
      }
    }
    draw();

    // the encoder self-attention at a point
    const b0 = Q[shown[0]].box, centre = [Math.min(gh - 1, Math.floor((b0[1] + b0[3]) / 2 / DATA.image.height * gh)), Math.min(gw - 1, Math.floor((b0[0] + b0[2]) / 2 / DATA.image.width * gw))];
    const es = { li: E.L - 1, head: -1, cell: centre[0] * gw + centre[1], pinned: false };
    const esec = section("Encoder self-attention at a point (DETR Fig. 3)",
      `Hover a cell of the ${gh}×${gw} feature map to see where the encoder attends from it (its row of the encoder's self-attention), click to pin it. The encoder already separates the objects: a cell on an object tends to attend to that object.${enc.heads_mean ? " Stored as the mean of the heads." : ""}`);
    const eLayer = layerSelect("enc-layer", enc, "encoder layer");
    eLayer.addEventListener("change", () => { es.li = +eLayer.value; edraw(); });
    const eHeads = el("span", { id: "enc-heads", class: "controls" }, ...(enc.heads_mean ? [] : headButtons(E, (h) => { es.head = h; edraw(); })));
    esec.append(el("div", { class: "controls" }, el("label", { text: "encoder layer" }), eLayer, el("label", { text: enc.heads_mean ? "mean of the heads" : "head" }), eHeads));
    const [estg, eover] = stage("enc-stage", "enc-overlay");
    const einfo = el("div", { id: "enc-query", class: "mono" });
    esec.append(el("div", { style: `width:${S}px` }, estg, einfo));
    function edraw() {
      eLayer.value = es.li;
      eHeads.querySelectorAll("button").forEach((b) => b.setAttribute("aria-pressed", +b.dataset.head === es.head ? "true" : "false"));
      paintGrid(eover.getContext("2d"), headRow(E, es.li, es.head, es.cell), gh, gw, S, hS, [0.05, 0.6], es.cell);
      Object.assign(estg.dataset, { cell: es.cell, layer: enc.layers[es.li], head: es.head });
      einfo.textContent = `from ${cellName(es.cell)}${es.pinned ? " (pinned)" : ""} · encoder layer ${enc.layers[es.li]}, ${es.head < 0 ? "mean of heads" : `head ${es.head}`}`;
    }
    function cellAt(ev) {
      const b = eover.getBoundingClientRect();
      const c = Math.min(gw - 1, Math.max(0, Math.floor((ev.clientX - b.left) / (b.width / gw))));
      return Math.min(gh - 1, Math.max(0, Math.floor((ev.clientY - b.top) / (b.height / gh)))) * gw + c;
    }
    estg.addEventListener("mousemove", (ev) => { if (!es.pinned) { const p = cellAt(ev); if (p !== es.cell) { es.cell = p; edraw(); } } });
    estg.addEventListener("click", (ev) => { const p = cellAt(ev); es.pinned = !(es.pinned && p === es.cell); es.cell = p; edraw(); });
    edraw();

    if (DATA.worked) {
      const W = DATA.worked, ws = section(`A worked head: decoder cross-attention, Q·Kᵀ → ${scaleName(W)} → softmax → ·V`,
        "One object query's cross-attention: q = (decoder state + query embedding) W_Q, kⱼ = (memory + sine position)ⱼ W_K, vⱼ = memoryⱼ W_V (DETR adds positions to queries and keys, never to values). Click a query above, or choose any query here.");
      ws.id = "worked";
      detrWorked = workedHead(ws, W, Q.map((q) => `${q.label} ${fmt(q.score, 2)}`), [...Array(gh * gw).keys()].map(cellName), "decoder cross-attention");
      detrWorked.setQuery(cs.query);
    }
  };

  header();
  if (!RENDER[DATA.kind]) section("Nothing to draw", `This page's data is of kind “${DATA.kind}”, which this page cannot draw.`);
  else RENDER[DATA.kind]();
  document.body.dataset.ready = "1";
})();
