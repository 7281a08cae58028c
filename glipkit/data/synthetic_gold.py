"""Synthetic gold for training from scratch: COCO / MDETR-style annotation splits and a WordPiece vocabulary.

Built on the shapes-and-objects generator of `glipkit.data.synthetic`; used by examples/teacher_student.py and the
training tests.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from glipkit.data.synthetic import _COUNT_WORDS, BACKGROUNDS, CATEGORIES, COLORS, PLURALS, SHAPES, make_samples


def write_coco_split(
    out_dir: str | Path,
    count: int,
    seed: int = 0,
    *,
    min_size: int = 160,
    max_size: int = 320,
    max_objects: int = 3,
    jpeg_quality: int = 90,
    shard_index: int = 0,
) -> Path:
    """Write `count` samples as `<out_dir>/images/<key>.jpg` and `<out_dir>/instances.json`; returns the json.

    The json is COCO detection (categories = CATEGORIES, ids 1..11; bbox = [x0, y0, x1 - x0, y1 - y0] of the
    exclusive gold box) and MDETR-style grounding at once: each image has its `caption`, each annotation the
    `tokens_positive` span of its noun phrase. Different seeds (or shard indices) give independent draws (train vs held-out val).
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    samples = make_samples(count, seed, shard_index=shard_index, min_size=min_size, max_size=max_size,
                           max_objects=max_objects)
    images, annotations = [], []
    for image_id, sample in enumerate(samples, start=1):
        file_name = f"{sample.key}.jpg"
        sample.render().save(out / "images" / file_name, format="JPEG", quality=jpeg_quality)
        sample.image = None  # keep memory flat for large splits
        images.append({"id": image_id, "file_name": file_name, "width": sample.width, "height": sample.height,
                       "caption": sample.caption})
        for obj in sample.objects:
            x0, y0, x1, y1 = obj.box
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": obj.category_id,
                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0,
                "tokens_positive": [list(obj.span)], "phrase": sample.caption[obj.span[0] : obj.span[1]],
            })
    data = {
        "info": {"description": f"glipkit synthetic shapes, seed {seed}, shard {shard_index}"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name, "supercategory": "shape" if name in SHAPES else "object"}
                       for i, name in enumerate(CATEGORIES)],
    }
    path = out / "instances.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def vocabulary_words() -> list[str]:
    """Every word the synthetic captions and class names use, lower-cased, in a fixed order."""
    texts = list(COLORS) + list(CATEGORIES) + list(PLURALS.values()) + list(_COUNT_WORDS.values())
    texts += [f"{prep} {place}" for prep, place, _ in BACKGROUNDS.values()]
    texts += ["a an the photo of close-up with and to left right above below front in on"]
    words: list[str] = []
    for text in texts:
        for word in re.findall(r"[a-z]+", text.lower()):
            if word not in words:
                words.append(word)
    return words


def write_vocab(directory: str | Path) -> Path:
    """Write a small WordPiece `vocab.txt` covering the synthetic captions into `directory`; returns the directory.

    Load it with `BertTokenizerFast.from_pretrained(directory)` (or `--tokenizer DIR`): special tokens, ASCII
    punctuation, letters and digits (also as `##` pieces, so any word still tokenizes) and the caption words.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokens = ["[PAD]"] + [f"[unused{i}]" for i in range(5)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += list(".,;:!?'\"-()/&%$#@*+=<>[]{}_")
    characters = "abcdefghijklmnopqrstuvwxyz0123456789"
    tokens += list(characters) + ["##" + c for c in characters]
    tokens += [w for w in vocabulary_words() if w not in tokens]
    (directory / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return directory
