"""Drawing detections on images (`predict --draw`): outlines and `name score` tags that scale with the image
and never cover each other."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from glipkit.viz.palette import colour, text_colour


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # PIL without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _overlaps(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def draw_detections(image: Image.Image, boxes: Sequence[Sequence[float]], scores: Sequence[float],
                    labels: Sequence[int], names: Sequence[str]) -> Image.Image:
    """A copy of `image` with each box outlined and tagged `name score`, one colour per label.

    Tags are sized to the image (about 1/40 of its short side) and placed above the box, inside it, or moved
    down until they cover no tag already drawn; higher scores are placed first.
    """
    canvas = image.convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    short = min(canvas.size)
    font = _font(max(10, round(short / 40)))
    width = max(1, round(short / 250))
    placed: list[tuple[float, float, float, float]] = []
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    for i in order:
        rgb = colour(int(labels[i]))
        x0, y0, x1, y1 = (float(v) for v in boxes[i])
        draw.rectangle([x0, y0, x1, y1], outline=rgb, width=width)
    for i in order:
        rgb = colour(int(labels[i]))
        x0, y0, x1, y1 = (float(v) for v in boxes[i])
        label = int(labels[i])
        text = f"{names[label] if 0 <= label < len(names) else label} {float(scores[i]):.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        w, h = right - left + 2 * width, bottom - top + 2 * width
        x = min(max(0.0, x0), max(0.0, canvas.width - w))
        y = y0 - h if y0 - h >= 0 else y0
        while any(_overlaps((x, y, x + w, y + h), p) for p in placed) and y + h < canvas.height:
            y = max(p[3] for p in placed if _overlaps((x, y, x + w, y + h), p))
        placed.append((x, y, x + w, y + h))
        draw.rectangle([x, y, x + w, y + h], fill=rgb)
        draw.text((x + width - left, y + width - top), text, fill=text_colour(rgb), font=font)
    return canvas


def drawn_names(paths: Sequence[str | Path], suffix: str = "_glip.jpg") -> dict[str, str]:
    """Output file names for drawn copies of `paths`, distinct even when inputs share a name (`a/x.jpg` and
    `b/x.jpg` become `a_x_glip.jpg` and `b_x_glip.jpg`)."""
    stems = Counter(Path(p).stem for p in paths)
    names: dict[str, str] = {}
    taken: set[str] = set()
    for p in paths:
        path = Path(p)
        base = path.stem if stems[path.stem] == 1 or not path.parent.name else f"{path.parent.name}_{path.stem}"
        name, n = base + suffix, 1
        while name in taken:
            n += 1
            name = f"{base}_{n}{suffix}"
        taken.add(name)
        names[str(p)] = name
    return names
