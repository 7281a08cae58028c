"""The static HTML gallery: `index.html` + `data.js` (boxes as data) + `thumbs/`, opened from file:// (no server).

The page draws each image's boxes as SVG over its thumbnail, so the controls act live: a score slider, a phrase
filter, sorting (best score, boxes per image, key) and pages. The state lives in the URL hash
(`#score=0.5&phrase=dog&sort=boxes&page=2`), so a view can be bookmarked or opened by a test. After each render
the page records what it drew: `<body data-drawn=N data-shown=M>`, and each frame its on-screen rectangle.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Sequence

from glipkit.files import write_text_atomic
from glipkit.viz.palette import PALETTE, hex_colour

INDEX = "index.html"
DATA = "data.js"
THUMBS = "thumbs"

_STYLE = """
body{font-family:sans-serif;margin:0;background:#f4f4f4;color:#222}
#controls{position:sticky;top:0;z-index:2;background:#fff;padding:8px 12px;border-bottom:1px solid #ccc;
 display:flex;gap:14px;align-items:center;flex-wrap:wrap;font-size:14px}
#grid{display:flex;flex-wrap:wrap;gap:12px;padding:12px}
figure.card{margin:0;background:#fff;border:1px solid #ddd;width:300px;padding:6px}
.frame{position:relative;width:300px;line-height:0}
.frame img,.frame svg{position:absolute;left:0;top:0;width:100%;height:100%}
figcaption{font-size:13px;line-height:1.4;margin-top:6px;word-wrap:break-word}
figcaption mark{padding:0 2px;border-radius:2px}
.key{color:#777;font-size:11px}
.chip{display:inline-block;padding:0 4px;margin:1px;border-radius:3px;font-size:12px}
"""

_SCRIPT = r"""
(function () {
  const G = window.GALLERY, PALETTE = G.palette;
  const $ = (id) => document.getElementById(id);
  const state = {score: 0, phrase: "", sort: "score", page: 1};
  function readHash() {
    const p = new URLSearchParams(location.hash.slice(1));
    state.score = p.has("score") ? parseFloat(p.get("score")) : G.min_score;
    state.phrase = p.get("phrase") || "";
    state.sort = p.get("sort") || "score";
    state.page = Math.max(1, parseInt(p.get("page") || "1", 10));
    $("score").value = state.score; $("phrase").value = state.phrase; $("sort").value = state.sort;
  }
  function writeHash() {
    const p = new URLSearchParams({score: state.score, phrase: state.phrase, sort: state.sort, page: state.page});
    history.replaceState(null, "", "#" + p.toString());
  }
  const colour = (i) => PALETTE[i % PALETTE.length];
  const textColour = (hex) => {
    const n = parseInt(hex.slice(1), 16), r = n >> 16, g = (n >> 8) & 255, b = n & 255;
    return 0.299 * r + 0.587 * g + 0.114 * b > 140 ? "#000" : "#fff";
  };
  function visibleBoxes(item) {
    const q = state.phrase.toLowerCase();
    return item.boxes.filter((b) => b[4] >= state.score &&
      (!q || item.phrases[b[5]][0].toLowerCase().includes(q)));
  }
  function esc(s) { return s.replace(/[&<>"]/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"})[c]); }
  function caption(item, boxes) {
    const used = new Set(boxes.map((b) => b[5]));
    const spans = item.phrases.map((p, i) => [p[1], p[2], i]).filter((s) => s[0] >= 0 && used.has(s[2]))
      .sort((a, b) => a[0] - b[0]);
    let html = "", at = 0;
    for (const [start, end, i] of spans) {
      if (start < at) continue;
      const c = colour(i);
      html += esc(item.caption.slice(at, start)) +
        `<mark style="background:${c};color:${textColour(c)}">${esc(item.caption.slice(start, end))}</mark>`;
      at = end;
    }
    html += esc(item.caption.slice(at));
    const chips = [...used].filter((i) => item.phrases[i][1] < 0).map((i) =>
      `<span class="chip" style="background:${colour(i)};color:${textColour(colour(i))}">${esc(item.phrases[i][0])}</span>`);
    return html + (chips.length ? "<br>" + chips.join("") : "");
  }
  function card(item, boxes) {
    const w = item.width, h = item.height, font = Math.max(w, h) / 22;
    const rects = boxes.map((b) => {
      const c = colour(b[5]), label = `${item.phrases[b[5]][0]} ${b[4].toFixed(2)}`;
      return `<g><title>${esc(label)}</title><rect class="box" data-score="${b[4]}" x="${b[0]}" y="${b[1]}" ` +
        `width="${b[2] - b[0] + 1}" height="${b[3] - b[1] + 1}" fill="none" stroke="${c}" stroke-width="3" ` +
        `vector-effect="non-scaling-stroke"/><text x="${b[0] + 2}" y="${b[1] + font}" font-size="${font}" ` +
        `fill="${c}" stroke="${textColour(c)}" stroke-width="${font / 20}" paint-order="stroke">${esc(label)}</text></g>`;
    }).join("");
    const height = Math.round(300 * h / w);
    return `<figure class="card" data-key="${esc(item.key)}" data-boxes="${boxes.length}">` +
      `<div class="frame" style="height:${height}px"><img src="${item.thumb}" width="300" height="${height}" alt="">` +
      `<svg viewBox="0 0 ${w} ${h}" preserveAspectRatio="none">${rects}</svg></div>` +
      `<figcaption>${caption(item, boxes)}<div class="key">${esc(item.key)} · ${boxes.length}/${item.boxes.length} boxes</div>` +
      `</figcaption></figure>`;
  }
  function render() {
    let items = G.items.map((item) => ({item, boxes: visibleBoxes(item)}));
    if (state.phrase) items = items.filter((x) => x.boxes.length);
    const best = (x) => x.boxes.reduce((m, b) => Math.max(m, b[4]), -1);
    if (state.sort === "score") items.sort((a, b) => best(b) - best(a));
    else if (state.sort === "boxes") items.sort((a, b) => b.boxes.length - a.boxes.length);
    else items.sort((a, b) => (a.item.key < b.item.key ? -1 : a.item.key > b.item.key ? 1 : 0));
    const pages = Math.max(1, Math.ceil(items.length / G.per_page));
    state.page = Math.min(state.page, pages);
    const shown = items.slice((state.page - 1) * G.per_page, state.page * G.per_page);
    $("grid").innerHTML = shown.map((x) => card(x.item, x.boxes)).join("");
    $("scorevalue").textContent = Number(state.score).toFixed(2);
    $("pageinfo").textContent = `page ${state.page} / ${pages} · ${items.length} images`;
    document.body.dataset.drawn = shown.reduce((n, x) => n + x.boxes.length, 0);
    document.body.dataset.shown = shown.length;
    for (const frame of document.querySelectorAll(".frame")) {
      const r = frame.getBoundingClientRect();
      frame.dataset.rect = [r.left + scrollX, r.top + scrollY, r.width, r.height].map((v) => v.toFixed(1)).join(",");
    }
    writeHash();
  }
  $("score").addEventListener("input", (e) => { state.score = parseFloat(e.target.value); render(); });
  $("phrase").addEventListener("input", (e) => { state.phrase = e.target.value; state.page = 1; render(); });
  $("sort").addEventListener("change", (e) => { state.sort = e.target.value; render(); });
  $("prev").addEventListener("click", () => { state.page = Math.max(1, state.page - 1); render(); });
  $("next").addEventListener("click", () => { state.page += 1; render(); });
  window.addEventListener("hashchange", () => { readHash(); render(); });
  readHash();
  render();
})();
"""


def gallery_html(title: str) -> str:
    """The page: controls, an empty grid, `data.js` and the script that draws from it."""
    title = html.escape(title)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title><style>{_STYLE}</style></head>
<body><div id="controls"><b>{title}</b>
<label>score &ge; <input id="score" type="range" min="0" max="1" step="0.01"> <span id="scorevalue"></span></label>
<label>phrase <input id="phrase" type="search" placeholder="filter"></label>
<label>sort <select id="sort"><option value="score">best score</option><option value="boxes">boxes per image</option>
<option value="key">key</option></select></label>
<button id="prev">&lsaquo;</button><span id="pageinfo"></span><button id="next">&rsaquo;</button></div>
<div id="grid"></div>
<script src="{DATA}"></script>
<script>{_SCRIPT}</script>
</body></html>
"""


def write_gallery(out: Path, items: Sequence[dict[str, Any]], title: str = "glipkit labels", per_page: int = 48,
                  min_score: float = 0.0) -> Path:
    """Write `index.html` and `data.js` for `items` (dicts: key, thumb, width, height, caption, phrases as
    [text, start, end], boxes as [x0, y0, x1, y1, score, phrase index]); thumbnails are the caller's."""
    data = {"items": list(items), "per_page": per_page, "min_score": min_score,
            "palette": [hex_colour(c) for c in PALETTE]}
    write_text_atomic(out / DATA, "window.GALLERY = " + json.dumps(data, ensure_ascii=False) + ";\n")
    return write_text_atomic(out / INDEX, gallery_html(title))
