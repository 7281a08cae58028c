"""GLIP image preprocessing: resize, RGB->BGR*255, mean/std, zero padding to a multiple of 32 (GLIP_SPEC.md §1)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from glipkit.model.config import InputConfig


def resized_size(width: int, height: int, min_size: int, max_size: int) -> tuple[int, int]:
    """(width, height) after GLIP's test resize: short side `min_size`, long side <= `max_size`, int truncation (§1.1.2)."""
    size = min_size
    short, long = min(width, height), max(width, height)
    if long / short * size > max_size:
        size = int(round(max_size * short / long))
    if (width <= height and width == size) or (height <= width and height == size):
        return width, height
    if width < height:
        return size, int(size * height / width)
    return int(size * width / height), size


def resize_image(image: Image.Image, min_size: int, max_size: int) -> Image.Image:
    """Resize a PIL image per §1.1.2 with PIL bilinear (what torchvision's resize does on PIL images)."""
    width, height = resized_size(image.width, image.height, min_size, max_size)
    if (width, height) == image.size:
        return image
    return image.resize((width, height), Image.BILINEAR)


def to_uint8_tensor(image: Image.Image) -> Tensor:
    """An RGB PIL image as a (3, H, W) uint8 tensor (the form images travel in before normalisation on device)."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def normalize_image(image: Image.Image | np.ndarray | Tensor, cfg: InputConfig) -> Tensor:
    """RGB uint8 image -> (3, H, W) float tensor in GLIP's input space: BGR, x255, minus mean, over std (§1.1.5)."""
    if isinstance(image, Image.Image):
        array = np.asarray(image.convert("RGB"))
        tensor = torch.from_numpy(array.copy()).permute(2, 0, 1)
    elif isinstance(image, np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    else:
        tensor = image
    # ToTensor (/255) followed by the x255 of 'bgr255' is the identity up to float rounding; keep both steps so
    # values match the official pipeline bit for bit.
    tensor = tensor.float().div(255.0).flip(0).mul(255.0)
    mean = torch.tensor(cfg.pixel_mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(cfg.pixel_std, dtype=torch.float32).view(3, 1, 1)
    return (tensor - mean) / std


def preprocess_image(image: Image.Image, cfg: InputConfig, min_size: int | None = None) -> Tensor:
    """Resize (test sizes of `cfg`, or `min_size`) and normalise one PIL image; returns (3, H, W)."""
    resized = resize_image(image.convert("RGB"), min_size or cfg.min_size, cfg.max_size)
    return normalize_image(resized, cfg)


def batch_images(images: Sequence[Tensor], size_divisibility: int = 32) -> tuple[Tensor, list[tuple[int, int]]]:
    """Zero-pad images (normalised, or uint8 to be normalised on device) bottom/right to a common size rounded up to `size_divisibility` (§1.1.6).

    Returns the batch (B, 3, H, W) and each image's unpadded (h, w).
    """
    sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
    height = max(h for h, _ in sizes)
    width = max(w for _, w in sizes)
    if size_divisibility > 0:
        height = int(math.ceil(height / size_divisibility) * size_divisibility)
        width = int(math.ceil(width / size_divisibility) * size_divisibility)
    batch = images[0].new_zeros((len(images), images[0].shape[0], height, width))
    for i, img in enumerate(images):
        batch[i, :, : img.shape[-2], : img.shape[-1]] = img
    return batch, sizes
