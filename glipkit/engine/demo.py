"""`glipkit demo`: the whole labelling job on built-in data, so a new user sees it work end to end.

Writes synthetic demo shards (glipkit/demo), extracts their noun phrases, pseudo-labels them with a teacher
(GLIP-T by default, downloaded on first use) and a gallery and a quality report of the labels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from glipkit.engine.progress import ProgressCallback
from glipkit.errors import GlipkitUsageError

SMOKE_MODEL = "preset:glip-tiny-test"


@dataclass
class DemoReport:
    """What the demo wrote: each step's output and its counts."""

    shards: list[Path]
    phrases_dir: Path
    labels_dir: Path
    rows: int
    boxes: int
    not_done: list[str]  # inputs of either step that were not read to the end or not written (exit code 1)
    views: dict[str, Path] = field(default_factory=dict)  # "gallery" / "report" -> the file to open


def _check_model(model: str, tokenizer: str | None) -> None:
    """Fetch the tokenizer, then the named model's weights, before any work: offline, one line offering a smoke
    run."""
    from glipkit.engine.runtime import model_source
    from glipkit.model.hub import NAMED_MODELS, WeightsUnavailableError, download_named_model, load_tokenizer

    try:  # the tokenizer first, as every command resolves it
        load_tokenizer(tokenizer)
        if model_source(model).spec in NAMED_MODELS:
            download_named_model(model)
    except WeightsUnavailableError as error:
        raise GlipkitUsageError(f"{error}. For a smoke run with random weights and no download: glipkit demo "
                                f"--model {SMOKE_MODEL}") from None


def run_demo(out: str | os.PathLike, model: str = "glip-t", tokenizer: str | None = None, device: str = "auto",
             num_shards: int = 2, samples_per_shard: int = 16, progress: ProgressCallback | None = None) -> DemoReport:
    """Write OUT/shards, OUT/phrases and OUT/labels and OUT/gallery, OUT/report.

    A `preset:` model without `tokenizer` uses the demo vocabulary (OUT/tokenizer), so a smoke run needs no
    network."""
    from glipkit.demo.samples import write_demo_shards
    from glipkit.demo.vocab import write_vocab
    from glipkit.engine.labelling.extract_phrases import ExtractPhrasesSettings, run_extract_phrases
    from glipkit.engine.labelling.pseudo_label import PseudoLabelSettings, pseudo_label
    from glipkit.engine.runtime import model_source

    out = Path(out)
    if tokenizer is None and model_source(model).preset is not None:
        tokenizer = str(write_vocab(out / "tokenizer"))
    _check_model(model, tokenizer)
    shards = write_demo_shards(out / "shards", num_shards, samples_per_shard)
    extraction = ExtractPhrasesSettings()
    phrases = run_extract_phrases([str(s) for s in shards], out / "phrases", extraction, workers=1,
                                  progress=progress)
    settings = PseudoLabelSettings(phrases_dir=out / "phrases", extraction=extraction, workers=0)
    job = pseudo_label([str(s) for s in shards], out / "labels", model, tokenizer, device, settings,
                       progress=progress)
    not_done = [f"{r.status}: {r.input}: {r.error}" for r in phrases.not_done + job.not_done]
    report = DemoReport(shards, out / "phrases", out / "labels", job.written, job.total("boxes"), not_done)
    report.views = _views(out)
    return report


def _views(out: Path) -> dict[str, Path]:
    """The gallery (`glipkit show`) and the quality report (`glipkit report`) of the demo's label tables."""
    from glipkit.engine.labels.gallery import GallerySettings, make_gallery
    from glipkit.engine.labels.report import ReportSettings, make_report

    views = {"gallery": Path(make_gallery(out / "labels", out / "gallery", GallerySettings()).path)}
    paths = [Path(p) for p in make_report(out / "labels", out / "report", ReportSettings()).paths]
    views["report"] = next((p for p in paths if p.suffix == ".html"), paths[0] if paths else out / "report")
    return views
