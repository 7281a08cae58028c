"""One training example of every data source: an image, a prompt, and boxes tied to character spans of the prompt."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from glipkit.data.images import DEFAULT_MAX_IMAGE_PIXELS, ImageDecodeError, decode_image
from glipkit.model.prompts import Span
UNDECODABLE = "undecodable image"  # the BadSample reason of every image decoding failure


class BadSample(Exception):
    """A sample that cannot be trained on (undecodable image, no usable boxes, ...); `reason` groups the counts."""

    def __init__(self, reason: str, key: str = "", detail: str = "") -> None:
        self.reason = reason
        self.key = key
        super().__init__(f"{key}: {reason}" + (f" ({detail})" if detail else ""))


@dataclass
class GroundingExample:
    """A prompt and the boxes it grounds in one image.

    boxes: (G, 4) float32 absolute pixel xyxy in the image's frame with GLIP's +1 convention (x2/y2 are the
    last covered pixel, GLIP_SPEC.md §6.4); box_spans[g] lists the character spans of `prompt` naming box g
    (its positive tokens are the union of their tokens, §4.4).
    """

    key: str
    image: Image.Image
    prompt: str
    boxes: np.ndarray
    box_spans: list[list[Span]]
    source: str = ""
    # Counts of what happened to annotated boxes while building the example (clipped, dropped and why).
    box_events: dict[str, int] = field(default_factory=dict)
    # Optional per-box loss weights (G,), None = 1 (model/loss.GroundingTargets): token loss, box loss.
    token_weights: np.ndarray | None = None
    box_weights: np.ndarray | None = None


def decode_example_image(data: bytes, key: str = "", max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode image bytes with data/images.decode_image, the decoder pseudo-label uses (16-bit scaling, pixel limit);
    its failures become BadSample("undecodable image") with the decoder's reason as detail."""
    try:
        return decode_image(data, max_pixels)
    except ImageDecodeError as error:
        raise BadSample(UNDECODABLE, key, str(error)) from None


def open_image(path, key: str = "", max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Read an image file and decode it with `decode_example_image`; BadSample when it is missing or undecodable."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise BadSample("unreadable image file", key, f"{path}: {error.strerror or error}") from None
    return decode_example_image(data, key, max_pixels)


def clean_boxes(
    boxes: np.ndarray, width: int, height: int, policy: str = "clip"
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Keep boxes usable in an image of (width, height): returns (boxes, kept index, event counts).

    policy "clip" clips to the image as GLIP's `clip_to_image(remove_empty=True)` does (x in [0, w-1], +1
    convention, §6.4) and drops boxes left empty; "skip" drops every box not fully inside the image.
    Non-finite boxes are always dropped.
    """
    if policy not in ("clip", "skip"):
        raise ValueError(f"box policy must be 'clip' or 'skip', not {policy!r}")
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    dropped: dict[str, int] = {}
    finite = np.isfinite(boxes).all(axis=1)
    if (~finite).any():
        dropped["non-finite box"] = int((~finite).sum())
    outside = finite & (
        (boxes[:, 0] < 0) | (boxes[:, 1] < 0) | (boxes[:, 2] > width - 1) | (boxes[:, 3] > height - 1)
    )
    if policy == "skip":
        keep = finite & ~outside
        if outside.any():
            dropped["box outside image"] = int(outside.sum())
        out = boxes
    else:
        out = boxes.copy()
        out[:, [0, 2]] = out[:, [0, 2]].clip(0, width - 1)
        out[:, [1, 3]] = out[:, [1, 3]].clip(0, height - 1)
        if outside.any():
            dropped["box clipped to image"] = int(outside.sum())
        keep = finite.copy()
    empty = keep & ~((out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1]))
    if empty.any():
        dropped["empty box"] = int(empty.sum())
    keep &= ~empty
    index = np.nonzero(keep)[0]
    return out[index].astype(np.float32), index, dropped


def xywh_to_xyxy(bbox) -> list[float]:
    """COCO [x, y, w, h] -> xyxy with the +1 convention of GLIP's BoxList: x2 = x + w - 1 (§6.4, §7.4)."""
    x, y, w, h = (float(v) for v in bbox)
    return [x, y, x + w - 1, y + h - 1]
