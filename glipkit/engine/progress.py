"""The one shape in which every job reports progress to whoever shows it (the CLI's display, a log, a test)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass
class ProgressEvent:
    """Where a job stands: `done` of `total` `unit`s, running counts (shown with their rates) and a note.

    `message` is a one-off line to log (a checkpoint written, an evaluation's AP) rather than a state update.
    """

    task: str  # "pseudo-label", "extract-phrases", "train", "coco", ...
    done: int
    total: int | None
    unit: str  # what `done` counts: "shards", "images", "steps"
    elapsed_s: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)  # e.g. {"images": 1200, "boxes": 5000}
    note: str = ""  # e.g. "loss=0.53 lr=1.0e-04"
    message: str = ""
    eta_s: float | None = None  # the job's own estimate of the time left, when `done`/`total` cannot give one


def eta_seconds(event: ProgressEvent) -> float | None:
    """The time left: the job's estimate when it made one, else elapsed x (total / done - 1)."""
    if event.eta_s is not None:
        return max(0.0, event.eta_s)
    if event.total and 0 < event.done < event.total:
        return event.elapsed_s * (event.total / event.done - 1)
    return None


ProgressCallback = Callable[[ProgressEvent], None]
