"""Synthetic grounded image-caption pairs: coloured shapes and simple objects drawn with PIL on backgrounds.

Each sample knows its gold: per object the category, colour, absolute pixel xyxy box (tight to within a
pixel; x1/y1 exclusive) and the character span of the noun phrase that names it in the caption
(`caption[start:end] == "a red circle"`; several boxes share a span for "two blue stars").
`write_demo_shards` writes them as WebDataset shards in img2dataset layout.
"""

from __future__ import annotations

import io
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFilter

from glipkit.data.shards import write_shard

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "blue": (31, 90, 220),
    "green": (44, 160, 44),
    "yellow": (250, 215, 30),
    "orange": (255, 127, 14),
    "purple": (148, 73, 189),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
    "pink": (247, 120, 190),
    "brown": (140, 86, 45),
}
SHAPES = ("circle", "square", "triangle", "star", "diamond")
OBJECTS = ("house", "tree", "car", "kite", "flower", "ball")
CATEGORIES = SHAPES + OBJECTS  # COCO category id = index + 1
PLURALS = {c: c + "s" for c in CATEGORIES}
# Objects drawn in their own colours; the caption names only the category ("a tree", not "a red tree").
NATURAL_COLOURS = {"tree"}

# name -> (preposition, noun phrase, colours that would not stand out against it)
BACKGROUNDS: dict[str, tuple[str, str, frozenset[str]]] = {
    "grass": ("on", "a grassy field", frozenset({"green"})),
    "beach": ("on", "a sandy beach", frozenset({"yellow", "orange", "brown"})),
    "sky": ("in", "the blue sky", frozenset({"blue", "white"})),
    "brick": ("in front of", "a brick wall", frozenset({"red", "brown", "orange"})),
    "wood": ("on", "a wooden table", frozenset({"brown", "orange"})),
    "snow": ("on", "a snowy field", frozenset({"white"})),
    "road": ("on", "an empty road", frozenset({"black"})),
}
COUNT_WORDS = {2: "two", 3: "three"}


@dataclass
class SyntheticObject:
    """One drawn object and the caption phrase naming it."""

    category: str
    color: str
    box: tuple[float, float, float, float]  # absolute pixel x0, y0, x1, y1
    span: tuple[int, int]  # caption[span[0]:span[1]] is the noun phrase, e.g. "a red circle"

    @property
    def category_id(self) -> int:
        return CATEGORIES.index(self.category) + 1

    def as_dict(self, caption: str) -> dict[str, Any]:
        return {
            "category": self.category,
            "category_id": self.category_id,
            "color": self.color,
            "box": [round(v, 2) for v in self.box],
            "span": list(self.span),
            "phrase": caption[self.span[0] : self.span[1]],
        }


@dataclass
class SyntheticSample:
    """A caption, its image size and background, the objects with gold boxes; `image` once rendered."""

    key: str
    width: int
    height: int
    background: str
    caption: str
    objects: list[SyntheticObject] = field(default_factory=list)
    seed: int = 0
    image: Image.Image | None = None

    def render(self) -> Image.Image:
        """Draw (once) and return the RGB image."""
        if self.image is None:
            self.image = render_sample(self)
        return self.image

    def metadata(self, url_prefix: str = "https://example.com/glipkit-demo/") -> dict[str, Any]:
        """img2dataset-style .json content (key, url, caption, width, height, status) plus the gold objects."""
        return {
            "key": self.key,
            "url": f"{url_prefix}{self.key}.jpg",
            "caption": self.caption,
            "width": self.width,
            "height": self.height,
            "original_width": self.width,
            "original_height": self.height,
            "status": "success",
            "error_message": None,
            "objects": [o.as_dict(self.caption) for o in self.objects],
        }

    def to_webdataset(self, jpeg_quality: int = 90) -> dict[str, bytes]:
        """The sample's tar members: {"jpg": ..., "txt": ..., "json": ...}."""
        buffer = io.BytesIO()
        self.render().save(buffer, format="JPEG", quality=jpeg_quality)
        return {
            "jpg": buffer.getvalue(),
            "txt": self.caption.encode("utf-8"),
            "json": json.dumps(self.metadata(), ensure_ascii=False).encode("utf-8"),
        }


# ----------------------------------------------------------------------------------------------------------------
# Layout and caption


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def make_layout(
    rng: random.Random | int,
    key: str = "",
    *,
    min_size: int = 160,
    max_size: int = 320,
    max_objects: int = 3,
) -> SyntheticSample:
    """Sample a background, 1..max_objects object groups with non-overlapping boxes, and a caption naming
    them; nothing is drawn yet (cheap: benchmarks use it for captions alone)."""
    if isinstance(rng, int):
        rng = random.Random(rng)
    seed = rng.randrange(2**31)
    width, height = rng.randint(min_size, max_size), rng.randint(min_size, max_size)
    background = rng.choice(sorted(BACKGROUNDS))
    _, _, clashing = BACKGROUNDS[background]
    colours = [c for c in COLORS if c not in clashing]

    groups: list[tuple[str, str, list[tuple[float, float, float, float]]]] = []
    placed: list[tuple[float, float, float, float]] = []
    used: set[tuple[str, str]] = set()
    for _ in range(rng.randint(1, max_objects)):
        category, colour = rng.choice(CATEGORIES), rng.choice(colours)
        if category in NATURAL_COLOURS:
            colour = "green" if background != "grass" else "brown"
        if (category, colour) in used or any(c == category for c, _, _ in groups):
            continue  # one group per category keeps every phrase unambiguous
        count = 1 if rng.random() < 0.8 else rng.choice((2, 3))
        boxes = []
        for _ in range(count):
            box = _place(rng, width, height, placed, category)
            if box is not None:
                boxes.append(box)
                placed.append(box)
        if boxes:
            used.add((category, colour))
            groups.append((category, colour, boxes))
    if not groups:  # the first object always fits on an empty canvas
        box = _place(rng, width, height, [], "circle")
        groups.append(("circle", colours[0], [box]))  # type: ignore[list-item]

    caption, objects = _caption(rng, groups, background)
    return SyntheticSample(key, width, height, background, caption, objects, seed)


_ASPECT = {"car": 0.55, "tree": 1.4, "kite": 1.3, "flower": 1.6}


def _place(rng: random.Random, width: int, height: int, placed, category: str):
    short = min(width, height)
    aspect = _ASPECT.get(category, 1.0)  # height / width
    for _ in range(30):
        size = rng.uniform(0.22, 0.42) * short
        w, h = (size / aspect, size) if aspect >= 1 else (size, size * aspect)
        if w >= width - 4 or h >= height - 4:
            continue
        x0 = rng.uniform(2, width - w - 2)
        y0 = rng.uniform(2, height - h - 2)
        box = (math.floor(x0), math.floor(y0), math.floor(x0 + w), math.floor(y0 + h))
        if all(_gap(box, other) for other in placed):
            return box
    return None


def _gap(a, b, margin: float = 3) -> bool:
    return a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1]


def _relation(a, b) -> str:
    ax, ay = (a[0] + a[2]) / 2, (a[1] + a[3]) / 2
    bx, by = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
    dx, dy = bx - ax, by - ay
    if abs(dx) >= abs(dy):
        return "to the left of" if dx > 0 else "to the right of"
    return "above" if dy > 0 else "below"


def _caption(rng: random.Random, groups, background: str) -> tuple[str, list[SyntheticObject]]:
    """Assemble the caption piece by piece, recording each group's noun-phrase span."""
    pieces: list[str] = []
    spans: list[tuple[int, int]] = []

    def add(text: str) -> None:
        pieces.append(text)

    def add_group(i: int) -> None:
        category, colour, boxes = groups[i]
        noun = PLURALS[category] if len(boxes) > 1 else category
        words = [] if category in NATURAL_COLOURS else [colour]
        det = COUNT_WORDS[len(boxes)] if len(boxes) > 1 else _article((words or [noun])[0])
        phrase = " ".join([det, *words, noun])
        start = sum(len(p) for p in pieces)
        pieces.append(phrase)
        spans.append((start, start + len(phrase)))

    preposition, place, _ = BACKGROUNDS[background]
    n = len(groups)
    form = rng.random()
    if n == 1:
        add(rng.choice(("", "a photo of ", "close-up of ", "")))
        add_group(0)
        add(f" {preposition} {place}")
    elif n == 2 and form < 0.5:
        add_group(0)
        add(f" {_relation(groups[0][2][0], groups[1][2][0])} ")
        add_group(1)
        add(f" {preposition} {place}")
    elif form < 0.75:
        add(f"{place} with ")
        for i in range(n):
            add_group(i)
            add(", " if i < n - 2 else (" and " if i == n - 2 else ""))
    else:
        for i in range(n):
            add_group(i)
            add(", " if i < n - 2 else (" and " if i == n - 2 else ""))
        add(f" {preposition} {place}")
    caption = "".join(pieces)
    if rng.random() < 0.5:
        caption = caption[0].upper() + caption[1:]
    if rng.random() < 0.3:
        caption += "."
    objects = [
        SyntheticObject(category, colour, tuple(float(v) for v in box), span)  # type: ignore[arg-type]
        for (category, colour, boxes), span in zip(groups, spans)
        for box in boxes
    ]
    return caption, objects


# ----------------------------------------------------------------------------------------------------------------
# Drawing


def render_sample(sample: SyntheticSample) -> Image.Image:
    """Draw the background and every object inside its gold box."""
    rng = random.Random(sample.seed)
    image = _draw_background(rng, sample.background, sample.width, sample.height)
    draw = ImageDraw.Draw(image)
    for obj in sample.objects:
        _draw_object(draw, rng, obj.category, COLORS[obj.color], obj.box)
    return image


def _jitter(rng: random.Random, rgb: tuple[int, int, int], amount: int = 18) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in rgb)  # type: ignore[return-value]


def _draw_background(rng: random.Random, name: str, w: int, h: int) -> Image.Image:
    image = Image.new("RGB", (w, h))
    draw = ImageDraw.Draw(image)

    def gradient(y0: int, y1: int, top, bottom) -> None:
        for y in range(y0, y1):
            t = (y - y0) / max(1, y1 - y0 - 1)
            draw.line([(0, y), (w, y)], fill=tuple(int(a + (b - a) * t) for a, b in zip(top, bottom)))

    horizon = int(h * rng.uniform(0.25, 0.45))
    if name == "grass":
        gradient(0, horizon, (120, 180, 240), (190, 220, 250))
        gradient(horizon, h, (70, 150, 50), (40, 110, 30))
        for _ in range(w * h // 60):
            x, y = rng.randrange(w), rng.randrange(horizon, h)
            draw.line([(x, y), (x + rng.randint(-2, 2), y - rng.randint(2, 5))], fill=_jitter(rng, (50, 130, 40), 25))
    elif name == "beach":
        sea = horizon + int(h * 0.15)
        gradient(0, horizon, (110, 170, 235), (180, 215, 245))
        gradient(horizon, sea, (30, 110, 170), (60, 150, 190))
        gradient(sea, h, (235, 215, 160), (215, 190, 130))
    elif name == "sky":
        gradient(0, h, (60, 130, 225), (170, 210, 250))
        for _ in range(rng.randint(2, 5)):
            cx, cy, r = rng.randrange(w), rng.randrange(h), rng.randint(w // 12, w // 6)
            draw.ellipse([cx - 2 * r, cy - r, cx + 2 * r, cy + r], fill=(240, 244, 250))
    elif name == "brick":
        draw.rectangle([0, 0, w, h], fill=(200, 195, 185))
        bh = max(8, h // 14)
        bw = bh * 2
        for row, y in enumerate(range(0, h, bh)):
            offset = (row % 2) * bw // 2
            for x in range(-offset, w, bw):
                draw.rectangle([x + 1, y + 1, x + bw - 2, y + bh - 2], fill=_jitter(rng, (165, 70, 50), 20))
    elif name == "wood":
        draw.rectangle([0, 0, w, h], fill=(180, 130, 80))
        for _ in range(h // 3):
            y = rng.randrange(h)
            draw.line([(0, y), (w, y + rng.randint(-3, 3))], fill=_jitter(rng, (150, 100, 60), 15))
    elif name == "snow":
        gradient(0, horizon, (150, 190, 230), (210, 225, 240))
        gradient(horizon, h, (235, 238, 245), (215, 220, 232))
    else:  # road
        gradient(0, horizon, (130, 180, 235), (200, 220, 240))
        gradient(horizon, h, (95, 95, 100), (70, 70, 75))
        for x in range(0, w, 30):
            draw.rectangle([x, (horizon + h) // 2 - 2, x + 15, (horizon + h) // 2 + 2], fill=(240, 230, 120))
    return image.filter(ImageFilter.SMOOTH) if name in {"grass", "wood"} else image


def _draw_object(draw: ImageDraw.ImageDraw, rng: random.Random, category: str, rgb, box) -> None:
    # Boxes are exclusive at x1/y1; PIL's shapes include their last pixel, hence the -1.
    x0, y0, x1, y1 = box[0], box[1], box[2] - 1, box[3] - 1
    w, h = x1 - x0, y1 - y0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    outline = tuple(int(c * 0.6) for c in rgb)
    if category == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=rgb, outline=outline, width=2)
    elif category == "ball":
        draw.ellipse([x0, y0, x1, y1], fill=rgb, outline=outline, width=2)
        draw.arc([x0 + w * 0.15, y0, x1 - w * 0.15, y1], 100, 260, fill=(250, 250, 250), width=2)
        draw.arc([x0 + w * 0.15, y0, x1 - w * 0.15, y1], -80, 80, fill=(250, 250, 250), width=2)
    elif category == "square":
        draw.rectangle([x0, y0, x1, y1], fill=rgb, outline=outline, width=2)
    elif category == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=rgb, outline=outline)
    elif category == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=rgb, outline=outline)
    elif category == "star":
        points = []
        for i in range(10):
            angle = -math.pi / 2 + i * math.pi / 5
            r = 1.0 if i % 2 == 0 else 0.45
            points.append((cx + r * w / 2 * math.cos(angle), cy + r * h / 2 * math.sin(angle)))
        # scale the star's points so that they touch all four box edges
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        sx, sy = w / (max(xs) - min(xs)), h / (max(ys) - min(ys))
        points = [(x0 + (px - min(xs)) * sx, y0 + (py - min(ys)) * sy) for px, py in points]
        draw.polygon(points, fill=rgb, outline=outline)
    elif category == "house":
        roof = y0 + h * 0.45
        draw.rectangle([x0 + w * 0.1, roof, x1 - w * 0.1, y1], fill=rgb, outline=outline, width=2)
        draw.polygon([(x0, roof), (cx, y0), (x1, roof)], fill=outline)
        draw.rectangle([cx - w * 0.1, y1 - h * 0.3, cx + w * 0.1, y1], fill=(90, 60, 40))
    elif category == "tree":
        draw.rectangle([cx - w * 0.1, y0 + h * 0.55, cx + w * 0.1, y1], fill=(110, 70, 40))
        draw.ellipse([x0, y0, x1, y0 + h * 0.7], fill=rgb, outline=outline, width=2)
    elif category == "car":
        wheel = h * 0.38
        draw.rectangle([x0, y0 + h * 0.3, x1, y1 - wheel / 2], fill=rgb, outline=outline, width=2)
        draw.polygon([(x0 + w * 0.2, y0 + h * 0.3), (x0 + w * 0.32, y0), (x1 - w * 0.3, y0), (x1 - w * 0.15, y0 + h * 0.3)], fill=rgb)
        draw.rectangle([x0 + w * 0.36, y0 + h * 0.06, x1 - w * 0.34, y0 + h * 0.28], fill=(200, 225, 245))
        for wx in (x0 + w * 0.15, x1 - w * 0.15 - wheel):
            draw.ellipse([wx, y1 - wheel, wx + wheel, y1], fill=(30, 30, 30))
    elif category == "kite":
        top = (cx, y0)
        draw.polygon([top, (x1, y0 + h * 0.35), (cx, y0 + h * 0.75), (x0, y0 + h * 0.35)], fill=rgb, outline=outline)
        draw.line([(cx, y0 + h * 0.75), (cx - w * 0.1, y1)], fill=(60, 60, 60), width=1)
    elif category == "flower":
        stem_top = y0 + w
        draw.line([(cx, stem_top - w * 0.3), (cx, y1)], fill=(40, 130, 40), width=max(2, int(w * 0.06)))
        petal = w / 3
        for dx, dy in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            px, py = cx + dx * petal, y0 + w / 2 + dy * petal
            draw.ellipse([px - petal / 2 - 1, py - petal / 2 - 1, px + petal / 2, py + petal / 2], fill=rgb)
        draw.ellipse([cx - petal / 2, y0 + w / 2 - petal / 2, cx + petal / 2, y0 + w / 2 + petal / 2], fill=(250, 220, 60))
    else:
        raise ValueError(f"unknown category {category!r}")


# ----------------------------------------------------------------------------------------------------------------
# Shards


def make_samples(
    count: int, seed: int = 0, *, shard_index: int = 0, min_size: int = 160, max_size: int = 320, max_objects: int = 3
) -> list[SyntheticSample]:
    """`count` samples with img2dataset keys (5-digit shard index + 4-digit sample index)."""
    rng = random.Random(f"{seed}-{shard_index}")
    return [
        make_layout(rng, f"{shard_index:05d}{i:04d}", min_size=min_size, max_size=max_size, max_objects=max_objects)
        for i in range(count)
    ]


def write_demo_shards(
    out_dir: str | Path,
    num_shards: int = 2,
    samples_per_shard: int = 32,
    seed: int = 0,
    *,
    min_size: int = 160,
    max_size: int = 320,
    jpeg_quality: int = 90,
) -> list[Path]:
    """Write `num_shards` WebDataset shards `00000.tar`, ... in img2dataset layout (.jpg, .txt, .json)."""
    out = Path(out_dir)
    paths = []
    for shard_index in range(num_shards):
        samples = make_samples(samples_per_shard, seed, shard_index=shard_index, min_size=min_size, max_size=max_size)
        members = ((s.key, s.to_webdataset(jpeg_quality)) for s in samples)
        paths.append(write_shard(out / f"{shard_index:05d}.tar", members))
    return paths

