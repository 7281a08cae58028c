"""Captions/s of glipkit extract-phrases vs a plain full spaCy pipeline, on the same captions and cores.

    python benchmarks/extract_phrases.py [--captions 20000] [--files 8] [--workers CORES]

Baseline: `spacy.load(model)` (full pipeline: tok2vec, tagger, parser, attribute_ruler, lemmatizer, ner) and
`nlp.pipe(captions)` reading `doc.noun_chunks`, in one process (plain) and with `n_process=cores`. glipkit: the
engine function behind the CLI (`run_extract_phrases`) on the same captions split into caption files, reading
them and writing Parquet. Every timing includes loading spaCy (and starting worker processes). Besides wall-clock captions/s the table
gives captions per CPU-second (this process and its children), which other jobs on a shared machine disturb less.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path


def make_captions(n: int, seed: int = 0) -> list[str]:
    """Synthetic image-caption pairs' captions, with some web-style prefixes/suffixes for length variety."""
    from glipkit.data.synthetic import make_layout

    rng = random.Random(seed)
    prefixes = ["", "", "", "Stock photo: ", "A close-up photograph of ", "Vintage illustration of "]
    suffixes = ["", "", "", " at sunset", ", high resolution", " in the early morning light, with soft shadows"]
    return [rng.choice(prefixes) + make_layout(rng).caption + rng.choice(suffixes) for _ in range(n)]


def cpu_seconds() -> float:
    """CPU time of this process and its finished children so far."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(fn, *args) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of fn(*args)."""
    cpu, wall = cpu_seconds(), time.perf_counter()
    fn(*args)
    return time.perf_counter() - wall, cpu_seconds() - cpu


def baseline(model: str, captions: list[str], n_process: int) -> None:
    import spacy

    nlp = spacy.load(model)
    count = 0
    for doc in nlp.pipe(captions, n_process=n_process, batch_size=256):
        count += sum(1 for _ in ((c.text, c.start_char, c.end_char) for c in doc.noun_chunks))
    assert count > 0


def glipkit_run(files: list[Path], out: Path, extractor: str, workers: int) -> None:
    from glipkit.engine.extract_phrases import ExtractPhrasesSettings, run_extract_phrases

    report = run_extract_phrases(
        files, out, ExtractPhrasesSettings(extractor=extractor, overwrite=True), workers=workers
    )
    assert not report.failed and report.captions_written == sum(1 for f in files for _ in open(f)), report.results


def main() -> None:
    from glipkit.engine.extract_phrases import default_workers
    from glipkit.text.spacy_models import resolve_spacy_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=20000)
    parser.add_argument("--files", type=int, default=8, help="caption files the captions are split into")
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--spacy-model", default="en_core_web_sm")
    parser.add_argument("--all-extractors", action="store_true", help="also time glip-regex and ngrams")
    args = parser.parse_args()

    model = resolve_spacy_model(args.spacy_model)
    captions = make_captions(args.captions)
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        per_file = (len(captions) + args.files - 1) // args.files
        for i in range(args.files):
            path = Path(tmp) / f"captions-{i:03d}.jsonl"
            with open(path, "w", encoding="utf-8") as f:
                for j, caption in enumerate(captions[i * per_file : (i + 1) * per_file]):
                    f.write(json.dumps({"key": f"{i:05d}{j:05d}", "caption": caption}) + "\n")
            files.append(path)

        rows = [("spaCy full pipeline, nlp.pipe (plain)", timed(baseline, model, captions, 1))]
        if args.workers > 1:
            rows.append((f"spaCy full pipeline, nlp.pipe(n_process={args.workers})", timed(baseline, model, captions, args.workers)))
        rows.append((f"glipkit extract-phrases spacy, {args.workers} workers", timed(glipkit_run, files, Path(tmp) / "out", "spacy", args.workers)))
        if args.all_extractors:
            for extractor in ("glip-regex", "ngrams"):
                rows.append((f"glipkit extract-phrases {extractor}, {args.workers} workers", timed(glipkit_run, files, Path(tmp) / f"out-{extractor}", extractor, args.workers)))

    n = len(captions)
    base_wall, base_cpu = rows[0][1]
    load = os.getloadavg()[0]
    print(f"\n{n} captions, {args.workers} workers, model {model}, Python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs, load average {load:.1f} at the end\n")
    print(f"| {'method':<52} | {'wall s':>7} | {'captions/s':>10} | {'ratio':>6} | {'captions/CPU-s':>14} | {'ratio':>6} |")
    print(f"|{'-' * 54}|{'-' * 9}|{'-' * 12}|{'-' * 8}|{'-' * 16}|{'-' * 8}|")
    for name, (wall, cpu) in rows:
        print(f"| {name:<52} | {wall:7.1f} | {n / wall:10.0f} | {base_wall / wall:5.2f}x | {n / cpu:14.0f} | {base_cpu / cpu:5.2f}x |")


if __name__ == "__main__":
    main()
