"""Drawing detections on images."""

from __future__ import annotations

from typing import Sequence

from PIL import Image, ImageDraw

_PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
            (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128)]


def draw_detections(image: Image.Image, boxes: Sequence[Sequence[float]], scores: Sequence[float],
                    labels: Sequence[int], names: Sequence[str]) -> Image.Image:
    """A copy of `image` with each box outlined and captioned `name score`, one colour per label."""
    canvas = image.convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    for box, score, label in zip(boxes, scores, labels):
        colour = _PALETTE[int(label) % len(_PALETTE)]
        x0, y0, x1, y1 = (float(v) for v in box)
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=max(1, round(min(canvas.size) / 200)))
        text = f"{names[int(label)] if int(label) < len(names) else label} {float(score):.2f}"
        left, top, right, bottom = draw.textbbox((x0, y0), text)
        draw.rectangle([left, top, right, bottom], fill=colour)
        draw.text((x0, y0), text, fill=(255, 255, 255))
    return canvas
