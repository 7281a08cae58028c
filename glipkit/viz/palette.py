"""The box colours: Okabe & Ito's palette, told apart with every common colour-vision deficiency."""

from __future__ import annotations

PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 159, 0),  # orange
    (86, 180, 233),  # sky blue
    (0, 158, 115),  # bluish green
    (240, 228, 66),  # yellow
    (0, 114, 178),  # blue
    (213, 94, 0),  # vermillion
    (204, 121, 167),  # reddish purple
    (0, 0, 0),  # black
)


def colour(index: int) -> tuple[int, int, int]:
    """The colour of label `index` (the palette repeats after 8)."""
    return PALETTE[int(index) % len(PALETTE)]


def text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on `background`."""
    r, g, b = background
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def hex_colour(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)
