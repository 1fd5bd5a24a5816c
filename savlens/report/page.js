(function (rootId) {
  "use strict";
  var root = document.getElementById(rootId);
  if (!root) { return; }
  var data = JSON.parse(root.querySelector("script.sr-data").textContent);
  if (data.version !== 1) { throw new Error("savlens report: unknown data version " + data.version); }

  // ---- helpers: every piece of user text goes in through textContent, never as HTML ----
  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }
  function value(x) {  // numbers, or the strings "inf" / "-inf"; null is NaN
    if (x === "inf") { return Infinity; }
    if (x === "-inf") { return -Infinity; }
    return x === null ? NaN : x;
  }
  function fmt(x, digits) {
    var v = value(x);
    if (isNaN(v)) { return "n/a"; }
    if (!isFinite(v)) { return v > 0 ? "inf" : "-inf"; }
    return v.toFixed(digits === undefined ? 3 : digits);
  }
  function pct(x) { return isNaN(value(x)) ? "n/a" : Math.round(100 * value(x)) + "%"; }
  var VIRIDIS = [[68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142], [31, 158, 137],
                 [53, 183, 121], [109, 205, 89], [180, 222, 44], [253, 231, 37]];
  var INFERNO = [[0, 0, 4], [31, 12, 72], [85, 15, 109], [136, 34, 106], [186, 54, 85], [227, 89, 51],
                 [249, 140, 10], [249, 201, 50], [252, 255, 164]];
  function colour(map, t) {
    t = Math.max(0, Math.min(1, isNaN(t) ? 0 : t));
    var x = t * (map.length - 1), i = Math.min(map.length - 2, Math.floor(x)), f = x - i;
    var c = map[i].map(function (a, j) { return Math.round(a + f * (map[i + 1][j] - a)); });
    return "rgb(" + c.join(",") + ")";
  }
  function cls(i) { return i === null || i === undefined ? "?" : data.classes[i]; }
  function safeImage(url) { return typeof url === "string" && url.indexOf("data:image/png;base64,") === 0; }

  // ---- header ----
  var summary = root.querySelector(".sr-summary");
  var parts = [];
  if (data.model_id) { parts.push("model " + data.model_id); }
  parts.push(data.selected.length + " heads selected");
  parts.push(data.classes.length + " classes: " + data.classes.join(", "));
  if (data.n_examples) {
    parts.push(data.n_examples + " examples" + (data.accuracy === null ? "" :
      ", SAV accuracy " + pct(data.accuracy) + " (" + data.n_wrong + " wrong, listed first)"));
  }
  summary.textContent = parts.join(" · ");
  var notes = root.querySelector(".sr-notes");
  data.notes.forEach(function (n) { notes.appendChild(el("li", null, n)); });

  // ---- the layer x head map ----
  var selected = {};
  data.selected.forEach(function (s, k) { selected[s.layer + "." + s.head] = { info: s, k: k }; });
  var lo = Infinity, hi = -Infinity;
  if (data.scores) {
    data.scores.forEach(function (row) {
      row.forEach(function (x) { var v = value(x); if (isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); } });
    });
  }
  if (!isFinite(lo)) { lo = 0; hi = 1; }
  var size = Math.max(9, Math.min(24, Math.floor(520 / Math.max(1, data.n_heads))));
  var grid = root.querySelector(".sr-grid");
  grid.style.gridTemplateColumns = "28px repeat(" + data.n_heads + ", " + size + "px)";
  grid.appendChild(el("div", "sr-axis", "L\\H"));
  for (var h = 0; h < data.n_heads; h++) { grid.appendChild(el("div", "sr-axis", h)); }
  var cells = {};
  data.layers.forEach(function (layer, r) {
    grid.appendChild(el("div", "sr-axis", layer));
    for (var h = 0; h < data.n_heads; h++) {
      var key = layer + "." + h, sel = selected[key];
      var cell = el("button", "sr-cell" + (sel ? " sr-selected" : ""), sel ? sel.info.rank : "");
      cell.type = "button";
      cell.style.height = size + "px";
      cell.dataset.head = "L" + layer + "H" + h;
      var score = data.scores ? data.scores[r][h] : null;
      var v = value(score);
      cell.style.background = data.scores ? (isNaN(v) ? "#ccc" : colour(VIRIDIS, (v - lo) / ((hi - lo) || 1))) : (sel ? "#555" : "#eee");
      cell.title = "L" + layer + "H" + h + (data.scores ? ": score " + fmt(score) : "") + (sel ? ", selected (rank " + sel.info.rank + ")" : "");
      cell.addEventListener("click", showHead.bind(null, layer, h, r));
      cells[key] = cell;
      grid.appendChild(cell);
    }
  });
  var legend = root.querySelector(".sr-legend");
  if (data.scores) {
    var bar = el("span", "sr-bar");
    bar.style.background = "linear-gradient(to right, " + VIRIDIS.map(function (c) { return "rgb(" + c.join(",") + ")"; }).join(", ") + ")";
    legend.appendChild(el("span", null, fmt(lo)));
    legend.appendChild(bar);
    legend.appendChild(el("span", null, fmt(hi) + "  " + (data.criterion || "score")));
  }
  legend.appendChild(el("span", "sr-key"));
  legend.appendChild(el("span", null, "selected (number: rank)"));

  // ---- one head: its votes, similarities and attention on every example ----
  // one picture (an image, or a video's frame) with one view's panels of cells over it, each at its box
  function picture(url, view, top, label) {
    var box = el("div");
    var frame = el("div", "sr-img");
    var img = el("img");
    if (safeImage(url)) { img.src = url; }
    img.alt = label ? "example " + label : "example image";
    frame.appendChild(img);
    if (view) {
      view.panels.forEach(function (p) {
        var ov = el("div", "sr-overlay");
        var b = p.box.map(function (x) { return value(x) || 0; });
        ov.style.inset = "auto";
        ov.style.left = 100 * b[0] + "%";
        ov.style.top = 100 * b[1] + "%";
        ov.style.width = 100 * (b[2] - b[0]) + "%";
        ov.style.height = 100 * (b[3] - b[1]) + "%";
        ov.style.gridTemplate = "repeat(" + p.rows + ", 1fr) / repeat(" + p.cols + ", 1fr)";
        p.w.forEach(function (x) {
          var c = el("div");
          c.style.background = colour(INFERNO, top > 0 ? (value(x) || 0) / top : 0);
          c.title = "attention " + fmt(x, 4);
          ov.appendChild(c);
        });
        frame.appendChild(ov);
      });
      frame.title = "this head's attention over the image tokens at their grid (colour: weight / its maximum on this image); the pointer hides it";
    }
    box.appendChild(frame);
    if (label) { box.appendChild(el("div", "sr-caption", label)); }
    return box;
  }

  // every image and video of an example, each view of it a picture (a video: a strip of frames)
  function mediaStrip(ex, k) {
    var imgs = el("div", "sr-images");
    var media = ex.grids.length ? ex.grids[k] : [];
    var off = 0;
    media.forEach(function (m) {
      var top = 0;
      m.views.forEach(function (v) {
        v.panels.forEach(function (p) { p.w.forEach(function (x) { top = Math.max(top, value(x) || 0); }); });
      });
      off += value(m.off) || 0;
      var many = m.views.length > 1 || m.kind === "video";
      m.views.forEach(function (v) {
        var url = m.kind === "video" ? (ex.frames[m.index] || [])[v.frame] : ex.images[m.index];
        imgs.appendChild(picture(url, v, top, many ? m.kind + " " + m.index + ": " + v.label : null));
      });
    });
    if (!media.length) {
      ex.images.forEach(function (url) { imgs.appendChild(picture(url, null, 0, null)); });
      (ex.frames || []).forEach(function (frames, j) {
        frames.forEach(function (url, f) { imgs.appendChild(picture(url, null, 0, "video " + j + ": frame " + f)); });
      });
    }
    var wrap = el("div");
    wrap.appendChild(imgs);
    if (ex.image_share.length) {
      wrap.appendChild(el("div", "sr-caption", (media.length ? "" : "grid unknown; ") + pct(ex.image_share[k]) +
        " of attention on image and video tokens" + (off > 0 ? " (" + pct(off) + " on newline tokens)" : "")));
    }
    return wrap;
  }

  function exampleCard(ex, k) {
    var card = el("div", "sr-example" + (ex.correct === false ? " sr-wrong" : ex.correct ? " sr-right" : ""));
    card.dataset.index = ex.index;
    if (ex.images.length || (ex.frames && ex.frames.length)) { card.appendChild(mediaStrip(ex, k)); }
    var meta = el("div", "sr-meta");
    meta.appendChild(el("div", "sr-id", ex.id));
    if (ex.text !== null) { meta.appendChild(el("div", "sr-text", ex.text)); }
    var verdict = el("div", "sr-verdict");
    var vote = ex.votes[k];
    verdict.appendChild(el("span", null, "label: " + (ex.label === null ? "none" : ex.label)));
    verdict.appendChild(el("span", ex.correct === false ? "sr-bad" : ex.correct ? "sr-good" : null,
      "SAV: " + cls(ex.predicted) + " (" + pct(ex.confidence) + " of votes)" + (ex.correct === false ? " ✗" : ex.correct ? " ✓" : "")));
    var agrees = ex.label_index === null ? null : vote === ex.label_index;
    verdict.appendChild(el("span", agrees === false ? "sr-bad" : agrees ? "sr-good" : null, "this head votes: " + cls(vote)));
    meta.appendChild(verdict);
    var table = el("table", "sr-sims");
    var sims = ex.similarity[k].map(function (s) { return value(s) || 0; });
    var sLo = Math.min.apply(null, sims), sHi = Math.max.apply(null, sims);
    ex.similarity[k].forEach(function (s, c) {
      var tr = el("tr", (c === vote ? "sr-voted" : "") + (c === ex.label_index ? " sr-truth" : ""));
      tr.appendChild(el("td", null, data.classes[c]));
      var td = el("td"), b = el("span", "sr-simbar");
      b.style.width = Math.round(6 + 74 * (sHi > sLo ? (sims[c] - sLo) / (sHi - sLo) : 1)) + "px";
      td.appendChild(b);
      tr.appendChild(td);
      tr.appendChild(el("td", null, fmt(s)));
      table.appendChild(tr);
    });
    meta.appendChild(el("div", "sr-caption", "cosine similarity to each class centroid (bars span this example's lowest to highest; pink: the vote; underlined: the label)"));
    meta.appendChild(table);
    card.appendChild(meta);
    return card;
  }

  var title = root.querySelector(".sr-head-title");
  var headSummary = root.querySelector(".sr-head-summary");
  var list = root.querySelector(".sr-examples");
  var active = null;

  function showHead(layer, head, r) {
    var key = layer + "." + head, sel = selected[key];
    if (active) { active.classList.remove("sr-active"); }
    active = cells[key];
    active.classList.add("sr-active");
    root.dataset.head = "L" + layer + "H" + head;
    var name = "L" + layer + "H" + head;
    title.textContent = name + (sel ? ": selected, rank " + sel.info.rank + " of " + data.selected.length : ": not selected");
    headSummary.textContent = "";
    list.textContent = "";
    var facts = [];
    if (data.scores) { facts.push("score " + fmt(data.scores[r][head]) + " (" + (data.criterion || "criterion") + ")"); }
    if (!sel) {
      facts.push("not one of the SAV's heads, so it has no centroids and casts no vote");
      headSummary.textContent = facts.join("; ") + ".";
      return;
    }
    var k = sel.k, agree = 0, known = 0, shares = [];
    data.examples.forEach(function (ex) {
      if (ex.label_index !== null) { known++; if (ex.votes[k] === ex.label_index) { agree++; } }
      if (ex.image_share.length) { shares.push(value(ex.image_share[k])); }
    });
    if (known) { facts.push("its vote matches the label on " + agree + " of " + known + " listed examples (" + pct(agree / known) + ")"); }
    if (shares.length) {
      facts.push("mean " + pct(shares.reduce(function (a, b) { return a + b; }, 0) / shares.length) + " of its attention on image and video tokens");
    }
    headSummary.textContent = facts.join("; ") + (facts.length ? "." : "");
    if (!data.examples.length) {
      list.appendChild(el("p", "sr-empty", "No examples: build the report with examples to see this head's votes."));
      return;
    }
    data.examples.forEach(function (ex) { list.appendChild(exampleCard(ex, k)); });
  }

  if (data.selected.length) {
    var first = data.selected[0];
    var row = data.layers.indexOf(first.layer);
    if (row >= 0) { showHead(first.layer, first.head, row); }
  }
})(__SAVLENS_ROOT__);
