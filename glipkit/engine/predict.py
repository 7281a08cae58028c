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
    error: str | None = None  # why the file could not be read; its lists are then empty


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
                  draw_dir: Path | None = None, batch_size: int = 1) -> list[FilePrediction]:
    """Ground `classes` or the '.'-separated phrases of `prompt` in each image, `batch_size` images per model
    pass; optionally save drawn copies. A file that cannot be read gets a result with its `error`."""
    from glipkit.viz import drawn_names

    names = drawn_names(paths)
    results = []
    for start in range(0, len(paths), max(1, batch_size)):
        readable = []
        for path in paths[start: start + batch_size]:
            try:
                readable.append((path, read_image_file(path)))
            except ValueError as error:  # one bad file must not lose the others' results
                results.append(FilePrediction(Path(path), [], [], [], [], error=str(error)))
        if not readable:
            continue
        predictions = predictor.predict([image for _, image in readable], prompts=prompt, classes=classes,
                                        box_threshold=box_threshold, batch_size=batch_size)
        results += [_file_result(path, image, prediction, draw_dir and draw_dir / names[str(path)])
                    for (path, image), prediction in zip(readable, predictions)]
    order = {str(path): i for i, path in enumerate(paths)}
    return sorted(results, key=lambda r: order[str(r.path)])


def _file_result(path, image, prediction, drawn: Path | None) -> FilePrediction:
    """One image's FilePrediction, its drawn copy saved as `drawn` when given."""
    from glipkit.viz import draw_detections

    if drawn is not None:
        drawn.parent.mkdir(parents=True, exist_ok=True)
        draw_detections(image, prediction.boxes.tolist(), prediction.scores.tolist(),
                        prediction.labels.tolist(), prediction.phrases).save(drawn, quality=92)
    return FilePrediction(Path(path), prediction.boxes.tolist(), prediction.scores.tolist(),
                          prediction.labels.tolist(), prediction.phrases, drawn)


def write_predictions_table(results: Sequence[FilePrediction], path: str | Path, prompt: str) -> Path:
    """Predictions as a label table (LABELS_SCHEMA, `shard` = the image file) that `show`, `report` and `export`
    read like pseudo-label's; the prompt is each row's caption, phrases are spans of it when found there."""
    from glipkit.data.tables import LABELS_SCHEMA, write_table
    from glipkit.viz import drawn_names

    results = [r for r in results if r.error is None]
    keys = drawn_names([r.path for r in results], suffix="")
    rows = []
    for result in results:
        phrases, at = [], 0
        for text in result.phrases:
            start = prompt.find(text, at)
            phrases.append({"text": text, "start": start, "end": start + len(text) if start >= 0 else -1})
            at = start + len(text) if start >= 0 else at
        image = read_image_file(result.path)
        rows.append({"key": keys[str(result.path)], "caption": prompt, "phrases": phrases,
                     "shard": str(result.path.resolve()), "width": image.width, "height": image.height,
                     "boxes": [{"x0": b[0], "y0": b[1], "x1": b[2], "y1": b[3], "score": s, "phrase": p}
                               for b, s, p in zip(result.boxes, result.scores, result.labels)]})
    return write_table(path, rows, LABELS_SCHEMA, "predict", {"prompt": prompt})
