/* rlhf-interp explorable view: plain DOM, no library, no network. Data: the JSON in #explore-data. */
(function () {
  "use strict";
  var node = document.getElementById("explore-data");
  if (!node) { return; }
  var D = JSON.parse(node.textContent);

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined) { e.textContent = text; }
    return e;
  }
  function fmt(v, percent) {
    if (v === null || v === undefined || !isFinite(v)) { return "nan"; }
    var x = percent ? 100 * v : v;
    var s = (x === 0) ? "0" : (Math.abs(x) >= 1e-4 && Math.abs(x) < 1e5 ? String(Number(x.toPrecision(3))) : x.toExponential(2));
    return (x > 0 ? "+" : "") + s + (percent ? "%" : "");
  }
  function colour(v, vmax, diverging) {
    if (v === null) { return "#eee"; }
    var t = Math.max(-1, Math.min(1, v / vmax)), r, g, b;
    if (!diverging) { t = Math.max(0, t); r = Math.round(255 - 150 * t); g = Math.round(255 - 200 * t); b = Math.round(255 - 90 * t); }
    else if (t >= 0) { r = Math.round(255 - 50 * t); g = Math.round(255 - 230 * t); b = Math.round(255 - 220 * t); }
    else { r = Math.round(255 + 220 * t); g = Math.round(255 + 150 * t); b = Math.round(255 + 60 * t); }
    return "rgb(" + r + "," + g + "," + b + ")";
  }
  function tok(s) { return JSON.stringify(s); }

  /* heatmaps with hover values */
  var hmRoot = document.getElementById("explore-heatmaps");
  D.heatmaps.forEach(function (h, n) {
    var box = el("div", {"class": "hm-box"});
    box.appendChild(el("div", {"class": "hm-title"}, h.title));
    var table = el("table", {"class": "hm", "id": "hm-" + n});
    var head = el("tr");
    head.appendChild(el("th", {}, "layer \\ head"));
    h.cols.forEach(function (c) { head.appendChild(el("th", {}, String(c))); });
    table.appendChild(head);
    var readout = el("div", {"class": "readout", "id": "hm-readout-" + n}, "hover a cell");
    h.rows.forEach(function (r, i) {
      var tr = el("tr");
      tr.appendChild(el("th", {}, String(r)));
      h.cols.forEach(function (c, j) {
        var v = h.values[i][j];
        var td = el("td", {"data-layer": r, "data-head": c});
        td.style.background = colour(v, h.vmax, h.diverging);
        td.addEventListener("mouseenter", function () {
          readout.textContent = "L" + r + "H" + c + ": " + fmt(v, h.percent);
        });
        tr.appendChild(td);
      });
      table.appendChild(tr);
    });
    box.appendChild(table);
    box.appendChild(readout);
    hmRoot.appendChild(box);
  });

  /* per-prompt drill-down and attention patterns */
  var A = D.attention, select = document.getElementById("prompt-select");
  var attRoot = document.getElementById("explore-attention"), attReadout = document.getElementById("att-readout");
  var detail = document.getElementById("prompt-detail");
  var byPrompt = {};
  D.prompts.forEach(function (p) { byPrompt[p.prompt] = p; });
  var ranked = D.prompts.slice().sort(function (a, b) { return (b.delta || 0) - (a.delta || 0); });

  var names = D.prompts.map(function (p) { return p.prompt; });
  (A.prompts || []).forEach(function (P) { if (names.indexOf(P.prompt) < 0) { names.push(P.prompt); } });

  function drawAttention(P) {
    attRoot.textContent = "";
    if (!P) {
      attRoot.appendChild(el("p", {"class": "meta"}, "No attention patterns stored for this prompt " +
        "(tables/attention_patterns.csv holds the first prompts; rerun compare to add it)."));
      return;
    }
    A.heads.forEach(function (lh) {
      var key = lh[0] + "." + lh[1], box = el("div", {"class": "att-head"});
      box.appendChild(el("div", {"class": "hm-title"}, "L" + lh[0] + "H" + lh[1]));
      ["base", "tuned"].forEach(function (model) {
        var M = P[model][key], wrap = el("div", {"class": "att-model"});
        wrap.appendChild(el("div", {"class": "att-label"}, model));
        var table = el("table", {"class": "att", "data-model": model, "data-head": key});
        M.forEach(function (row, q) {
          var tr = el("tr");
          tr.appendChild(el("th", {}, P.tokens[q]));
          row.forEach(function (w, kk) {
            var td = el("td");
            if (kk <= q) {
              td.style.background = colour(w, 1, false);
              td.addEventListener("mouseenter", function () {
                attReadout.textContent = "L" + lh[0] + "H" + lh[1] + " query " + q + " " + tok(P.tokens[q]) +
                  " → key " + kk + " " + tok(P.tokens[kk]) + ": base " + P.base[key][q][kk].toFixed(3) +
                  ", tuned " + P.tuned[key][q][kk].toFixed(3);
              });
            }
            tr.appendChild(td);
          });
          table.appendChild(tr);
        });
        wrap.appendChild(table);
        box.appendChild(wrap);
      });
      attRoot.appendChild(box);
    });
  }

  function showPrompt(k) {
    var name = names[k], m = byPrompt[name];
    if (name === undefined) { return; }
    select.value = String(k);
    detail.textContent = m ? (tok(name) + ": metric base " + fmt(m.base) + ", tuned " + fmt(m.tuned) +
      ", tuned − base " + fmt(m.delta) + " (rank " + (ranked.indexOf(m) + 1) + " of " + ranked.length + " by change)")
      : tok(name);
    Array.prototype.forEach.call(document.querySelectorAll("#prompt-table tr[data-prompt]"), function (tr) {
      tr.classList.toggle("selected", tr.getAttribute("data-prompt") === name);
    });
    drawAttention((A.prompts || []).filter(function (P) { return P.prompt === name; })[0]);
  }
  names.forEach(function (name, k) { select.appendChild(el("option", {"value": String(k)}, name)); });
  select.addEventListener("change", function () { showPrompt(Number(select.value)); });
  var ptable = document.getElementById("prompt-table");
  ranked.forEach(function (p) {
    var tr = el("tr", {"data-prompt": p.prompt});
    tr.appendChild(el("td", {}, p.prompt));
    [p.base, p.tuned, p.delta].forEach(function (v) { tr.appendChild(el("td", {"class": "num"}, fmt(v))); });
    tr.addEventListener("click", function () { showPrompt(names.indexOf(p.prompt)); });
    ptable.appendChild(tr);
  });
  showPrompt(0);

  /* token-level KL over the tuned model's samples */
  var klSelect = document.getElementById("kl-select"), klText = document.getElementById("kl-text");
  var klReadout = document.getElementById("kl-readout"), klMax = 1e-12;
  D.kl.forEach(function (s) { s.tokens.forEach(function (t) { if (t[1] !== null) { klMax = Math.max(klMax, t[1]); } }); });
  function showSample(k) {
    var S = D.kl[k], total = 0;
    klText.textContent = "";
    klText.appendChild(el("span", {"class": "kl-prompt"}, S.prompt));
    S.tokens.forEach(function (t, pos) {
      var span = el("span", {"class": "kl-tok", "data-pos": pos}, t[0]);
      total += t[1] || 0;
      span.style.background = colour(t[1], klMax, false);
      span.addEventListener("mouseenter", function () {
        klReadout.textContent = "position " + pos + " " + tok(t[0]) + ": KL " + fmt(t[1]).replace("+", "") + " nats";
      });
      klText.appendChild(span);
    });
    klReadout.textContent = "sample " + S.sample + ": KL summed over the response " + total.toFixed(3) +
      " nats; reward " + fmt(S.reward) + ". Hover a token.";
  }
  if (D.kl.length) {
    D.kl.forEach(function (S, k) {
      klSelect.appendChild(el("option", {"value": String(k)}, "sample " + S.sample + ": " + S.prompt));
    });
    klSelect.addEventListener("change", function () { showSample(Number(klSelect.value)); });
    showSample(0);
  }
})();
