"""Run a GLIP on image files: what `glipkit predict` does."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from glipkit.data.images import DEFAULT_MAX_IMAGE_PIXELS, ImageDecodeError, decode_image
from glipkit.engine.predictor import Predictor


@dataclass
class FilePrediction:
    """Detections of one image file, boxes in its pixels (xyxy)."""

    path: Path
    boxes: list[list[float]]
    scores: list[float]
    labels: list[int]
    phrases: list[str]
    drawn: Path | None = None


def read_image_file(path: Path, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS):
    """An image file decoded as every command decodes images (data/images.decode_image); ValueError naming it."""
    try:
        return decode_image(Path(path).read_bytes(), max_pixels)
    except OSError as error:
        raise ValueError(f"cannot read image {path}: {error.strerror or error}") from None
    except ImageDecodeError as error:
        raise ValueError(f"cannot read image {path}: {error}") from None


def predict_files(predictor: Predictor, paths: Sequence[Path], prompt: str | None = None,
                  classes: Sequence[str] | None = None, box_threshold: float = 0.5,
                  draw_dir: Path | None = None) -> list[FilePrediction]:
    """Ground `classes` or the '.'-separated phrases of `prompt` in each image; optionally save drawn copies."""
    from glipkit.viz import draw_detections

    results = []
    for path in paths:
        image = read_image_file(path)
        prediction = predictor.predict(image, prompts=prompt, classes=classes, box_threshold=box_threshold)[0]
        drawn = None
        if draw_dir is not None:
            draw_dir.mkdir(parents=True, exist_ok=True)
            drawn = draw_dir / f"{Path(path).stem}_glip.jpg"
            draw_detections(image, prediction.boxes.tolist(), prediction.scores.tolist(),
                            prediction.labels.tolist(), prediction.phrases).save(drawn, quality=92)
        results.append(FilePrediction(Path(path), prediction.boxes.tolist(), prediction.scores.tolist(),
                                      prediction.labels.tolist(), prediction.phrases, drawn))
    return results
