"""Decoding untrusted image bytes (web shards) into 8-bit RGB PIL images, with a deliberate pixel limit.

Every failure is an ImageDecodeError with a short, stable `reason` (counted in `_stats.json`) and a detail.
The pixel limit is checked on the header, before any pixel is decoded, so a decompression bomb (a small file
declaring 20000x20000 pixels) costs nothing; PIL's own guard (`Image.MAX_IMAGE_PIXELS`) is set to the same
limit as a second line of defence.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

# 100 megapixels: a 12000x8000 camera photo still decodes (~300 MB as RGB); a 20000x20000 bomb does not.
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm")

# Stable reasons for _stats.json.
EMPTY_IMAGE = "empty image file"
NOT_AN_IMAGE = "not a decodable image"
CORRUPT_IMAGE = "corrupt or truncated image"
TOO_LARGE = "image too large"
NO_IMAGE = "no image"
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class ImageDecodeError(ValueError):
    """Image bytes that cannot be turned into an RGB image; `reason` is one of the module constants."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


def set_pil_pixel_limit(max_pixels: int) -> None:
    """Make PIL refuse images over `max_pixels` (0: no limit) in this process; called in each DataLoader worker."""
    # PIL warns above MAX_IMAGE_PIXELS and raises above twice that; decode_image raises at the limit itself.
    Image.MAX_IMAGE_PIXELS = max_pixels if max_pixels > 0 else None
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)


def find_image_member(files: dict[str, bytes]) -> tuple[str, bytes] | None:
    """The (extension, bytes) of a sample's image member (jpg, png, webp, ...), or None. As webdataset's
    decoder does, a member is an image by its last extension (`input.jpg`, `001.png`), plain extensions first."""
    for ext in IMAGE_EXTENSIONS:
        if ext in files:
            return ext, files[ext]
    for ext in sorted(files):
        if ext.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS:
            return ext, files[ext]
    return None


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode image bytes to an 8-bit RGB PIL image; raises ImageDecodeError.

    CMYK, palette, grey and alpha images are converted with PIL's `convert("RGB")` (what the official loader
    does); 16-bit grey images are scaled to 8 bits (PIL would clip them to 255). The first frame of an animation
    is used. EXIF orientation is not applied (the official GLIP loader does not), so boxes index stored pixels.
    """
    if not data:
        raise ImageDecodeError(EMPTY_IMAGE, "0 bytes")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageDecodeError(NOT_AN_IMAGE, f"unknown format ({len(data)} bytes, starts {data[:8]!r})") from None
    except Image.DecompressionBombError as e:  # PIL's own guard (twice its MAX_IMAGE_PIXELS) fired first
        raise ImageDecodeError(TOO_LARGE, f"{e} (limit {max_pixels:,} pixels, --max-image-pixels)") from None
    except Exception as e:  # PIL raises many types on malformed headers
        raise ImageDecodeError(NOT_AN_IMAGE, f"{type(e).__name__}: {e}") from None
    width, height = image.size
    if max_pixels > 0 and width * height > max_pixels:
        raise ImageDecodeError(
            TOO_LARGE, f"{width}x{height} = {width * height:,} pixels > limit {max_pixels:,} (--max-image-pixels)"
        )
    if width < 1 or height < 1:
        raise ImageDecodeError(NOT_AN_IMAGE, f"size {width}x{height}")
    try:
        image.load()
        return to_rgb8(image)
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(TOO_LARGE, f"{e} (limit {max_pixels:,} pixels, --max-image-pixels)") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:
        raise ImageDecodeError(CORRUPT_IMAGE, f"{type(e).__name__}: {e}") from None


def to_rgb8(image: Image.Image) -> Image.Image:
    """An 8-bit RGB version of a loaded PIL image (16-bit grey scaled, palettes with transparency expanded)."""
    if image.mode in _SIXTEEN_BIT_MODES:
        array = np.asarray(image)
        if image.mode == "I" and array.max(initial=0) <= 255:
            grey = array.astype(np.uint8)  # an 8-bit image stored as 32-bit integers
        else:
            # 16-bit range -> 8 bits by rounding v / 257 (65535 -> 255, 32896 -> 128).
            grey = ((np.clip(array, 0, 65535).astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if image.mode == "F":
        array = np.nan_to_num(np.asarray(image, dtype=np.float32))
        return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image if image.mode == "RGB" else image.convert("RGB")
