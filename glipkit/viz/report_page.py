"""The report as a page people look at (HTML with inline SVG charts, no script, no network) and as markdown."""

from __future__ import annotations

import html
from typing import Any, Mapping, Sequence

from glipkit.viz.palette import PALETTE, hex_colour

_BAR = hex_colour(PALETTE[4])
_LINES = [hex_colour(PALETTE[i]) for i in (4, 5, 2)]


def bar_chart(title: str, counts: Mapping[str, int], width: int = 420, height: int = 150) -> str:
    """An SVG bar chart of {label: count}."""
    labels, values = list(counts), list(counts.values())
    top = max(values, default=0) or 1
    step = (width - 40) / max(len(values), 1)
    bars = []
    for i, (label, value) in enumerate(zip(labels, values)):
        h = (height - 40) * value / top
        x = 30 + i * step
        bars.append(f'<rect x="{x:.1f}" y="{height - 25 - h:.1f}" width="{max(step - 2, 1):.1f}" height="{h:.1f}" '
                    f'fill="{_BAR}"><title>{html.escape(label)}: {value}</title></rect>')
    ticks = [f'<text x="{30 + i * step:.1f}" y="{height - 10}" font-size="9">{html.escape(labels[i])}</text>'
             for i in range(0, len(labels), max(1, len(labels) // 5))]
    return (f'<figure><figcaption>{html.escape(title)}</figcaption><svg width="{width}" height="{height}" '
            f'role="img">{"".join(bars)}{"".join(ticks)}<text x="2" y="12" font-size="9">{top}</text></svg></figure>')


def line_chart(title: str, xs: Sequence[float], series: Mapping[str, Sequence[float]], width: int = 420,
               height: int = 170) -> str:
    """An SVG chart of y in [0, 1] against x in [0, 1], one line per series."""
    plot_w, plot_h = width - 40, height - 45
    lines, legend = [], []
    for i, (name, ys) in enumerate(series.items()):
        points = " ".join(f"{30 + x * plot_w:.1f},{10 + (1 - y) * plot_h:.1f}" for x, y in zip(xs, ys))
        lines.append(f'<polyline points="{points}" fill="none" stroke="{_LINES[i % 3]}" stroke-width="2"/>')
        legend.append(f'<text x="{40 + i * 110}" y="{height - 5}" font-size="10" fill="{_LINES[i % 3]}">'
                      f'{html.escape(name)}</text>')
    axes = (f'<line x1="30" y1="{10 + plot_h}" x2="{30 + plot_w}" y2="{10 + plot_h}" stroke="#999"/>'
            f'<line x1="30" y1="10" x2="30" y2="{10 + plot_h}" stroke="#999"/>'
            f'<text x="30" y="{plot_h + 24}" font-size="9">score threshold 0</text>'
            f'<text x="{plot_w - 10}" y="{plot_h + 24}" font-size="9">1</text>')
    return (f'<figure><figcaption>{html.escape(title)}</figcaption><svg width="{width}" height="{height}" '
            f'role="img">{axes}{"".join(lines)}{"".join(legend)}</svg></figure>')


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _stats_section(title: str, stats: Mapping[str, Any]) -> str:
    kept = stats["kept_at_threshold"]
    parts = [f"<h2>{html.escape(title)}</h2>",
             f"<p>{stats['images']} images, {stats['boxes']} boxes, {stats['boxes_per_image']} boxes per image.</p>"]
    parts += [f'<p class="warn">{html.escape(w)}</p>' for w in stats["warnings"]]
    parts.append('<div class="charts">' + "".join([
        bar_chart("scores", stats["score_hist"]), bar_chart("boxes per image", stats["boxes_per_image_hist"]),
        bar_chart("phrases per image", stats["phrases_per_image_hist"]),
        bar_chart("box size (sqrt of area share)", stats["box_size_hist"]),
        line_chart("kept at each threshold", [r["threshold"] for r in kept],
                   {"boxes": [r["box_fraction"] for r in kept], "images with boxes": [r["image_fraction"]
                                                                                      for r in kept]}),
    ]) + "</div>")
    parts.append(_table(["phrase", "boxes", "mean score"],
                        [(p["phrase"], p["boxes"], p["mean_score"]) for p in stats["top_phrases"]]))
    if stats["flags"]:
        parts.append(_table(["flag", "images"], list(stats["flags"].items())))
    return "".join(parts)


def _gold_section(gold: Mapping[str, Any]) -> str:
    curve, best = gold["curve"], gold["best"]
    parts = [f"<h2>Against gold ({gold['images']} images, IoU {gold['iou']})</h2>",
             f"<p>Best F1 {best['f1']} at score &ge; {best['threshold']}: precision {best['precision']}, recall "
             f"{best['recall']}. COCO AP {gold['AP']:.3f}, AP50 {gold['AP50']:.3f}. "
             f"{gold['boxes_without_gold_category']} boxes name no gold category.</p>",
             line_chart("precision / recall / F1 by score threshold", [r["threshold"] for r in curve],
                        {k: [r[k] for r in curve] for k in ("precision", "recall", "f1")})]
    parts.append(_table(["category", "gold boxes", "best threshold", "precision", "recall", "F1", "AP"], [
        (name, c["gold_boxes"], c["best"]["threshold"], c["best"]["precision"], c["best"]["recall"], c["best"]["f1"],
         round(gold["per_category_AP"].get(name, -1.0), 4))
        for name, c in gold["per_category"].items()]))
    parts.append(_table(["threshold", "tp", "fp", "fn", "precision", "recall", "F1", "precision, any name",
                         "recall, any name"],
                        [(r["threshold"], r["tp"], r["fp"], r["fn"], r["precision"], r["recall"], r["f1"],
                          a["precision"], a["recall"]) for r, a in zip(curve, gold["any_name_curve"])]))
    return "".join(parts)


def report_html(data: Mapping[str, Any]) -> str:
    """The whole report as one self-contained HTML page."""
    sections = [_stats_section("Run", data["run"])]
    if "gold" in data:
        sections.append(_gold_section(data["gold"]))
    sections += [_stats_section(f"Shard {name}", stats) for name, stats in data["shards"].items()]
    style = ("body{font-family:sans-serif;margin:1.5em;max-width:1400px}.charts{display:flex;flex-wrap:wrap;gap:1em}"
             "figure{margin:0}figcaption{font-size:.85em;color:#444}table{border-collapse:collapse;margin:.5em 0}"
             "td,th{border:1px solid #ccc;padding:2px 6px;font-size:.85em}.warn{color:#a33}")
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>glipkit label report</title>'
            f"<style>{style}</style></head><body><h1>Label report</h1>{''.join(sections)}</body></html>\n")


def report_markdown(data: Mapping[str, Any]) -> str:
    """The headline numbers as markdown: run totals, warnings, kept fractions, top phrases, gold quality."""
    run = data["run"]
    lines = ["# Label report", "", f"{run['images']} images, {run['boxes']} boxes, {run['boxes_per_image']} per "
             f"image, {len(data['shards'])} shards.", ""]
    lines += [f"- warning: {w}" for w in run["warnings"]] + ([""] if run["warnings"] else [])
    lines += ["| score >= | boxes kept | images with a box |", "|---|---|---|"]
    lines += [f"| {r['threshold']:.2f} | {r['box_fraction']:.1%} | {r['image_fraction']:.1%} |"
              for r in run["kept_at_threshold"]]
    lines += ["", "| phrase | boxes | mean score |", "|---|---|---|"]
    lines += [f"| {p['phrase']} | {p['boxes']} | {p['mean_score']:.3f} |" for p in run["top_phrases"]]
    if run["flags"]:
        lines += ["", "| flag | images |", "|---|---|"] + [f"| {k} | {v} |" for k, v in run["flags"].items()]
    if "gold" in data:
        gold, best = data["gold"], data["gold"]["best"]
        lines += ["", f"## Against gold ({gold['images']} images, IoU {gold['iou']})", "",
                  f"Best F1 {best['f1']:.3f} at score >= {best['threshold']:.2f} (precision {best['precision']:.3f}, "
                  f"recall {best['recall']:.3f}); COCO AP {gold['AP']:.3f}, AP50 {gold['AP50']:.3f}.", "",
                  "Any name: the same boxes matched to gold boxes of any category (found, whatever the name).", "",
                  "| score >= | precision | recall | F1 | precision, any name | recall, any name |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['threshold']:.2f} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | "
                  f"{a['precision']:.3f} | {a['recall']:.3f} |" for r, a in zip(gold["curve"], gold["any_name_curve"])]
    return "\n".join(lines) + "\n"
