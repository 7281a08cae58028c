"""Captions/s of glipkit extract-phrases vs a plain full spaCy pipeline, on the same captions and cores.

    python benchmarks/extract_phrases.py [--captions 20000] [--files 8] [--workers CORES] [--repeats 1]

Baseline: `spacy.load(model)` (full pipeline: tok2vec, tagger, parser, attribute_ruler, lemmatizer, ner) and
`nlp.pipe(captions)` reading `doc.noun_chunks`, in one process (plain) and with `n_process=cores`. glipkit: the
engine function behind the CLI (`run_extract_phrases`), writing Parquet. Both read the same caption files
(.jsonl). Each measurement is a fresh Python process timed from outside, so every row pays its imports, model
loading and worker start-up, as a user's run does. Methods run round-robin (`--repeats`), so that a change in
the load of a shared machine hits all alike; the table gives the median and the load average, and for the
one-process methods captions per CPU-second, which other jobs on a shared machine disturb much less.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = ("spacy-plain", "glipkit-spacy", "spacy-n-process", "glipkit-spacy-1", "glipkit-glip-regex", "glipkit-ngrams")
SINGLE_PROCESS = {"spacy-plain", "glipkit-spacy-1"}
LABELS = {
    "spacy-plain": "spaCy full pipeline, nlp.pipe (plain)",
    "spacy-n-process": "spaCy full pipeline, nlp.pipe(n_process={w})",
    "glipkit-spacy": "glipkit extract-phrases spacy, {w} workers",
    "glipkit-spacy-1": "glipkit extract-phrases spacy, 1 worker",
    "glipkit-glip-regex": "glipkit extract-phrases glip-regex, {w} workers",
    "glipkit-ngrams": "glipkit extract-phrases ngrams, {w} workers",
}


def make_captions(n: int, seed: int = 0) -> list[str]:
    """Synthetic image-caption pairs' captions, with some web-style prefixes/suffixes for length variety."""
    from glipkit.demo.samples import make_layout

    rng = random.Random(seed)
    prefixes = ["", "", "", "Stock photo: ", "A close-up photograph of ", "Vintage illustration of "]
    suffixes = ["", "", "", " at sunset", ", high resolution", " in the early morning light, with soft shadows"]
    return [rng.choice(prefixes) + make_layout(rng).caption + rng.choice(suffixes) for _ in range(n)]


def run_one(method: str, files: list[Path], out: Path, workers: int, model: str) -> int:
    """Run one method in this process; returns the number of captions processed."""
    if method.startswith("spacy-"):
        import spacy

        captions = [json.loads(line)["caption"] for f in files for line in open(f, encoding="utf-8")]
        nlp = spacy.load(model)
        n_process = 1 if method == "spacy-plain" else workers
        chunks = 0
        for doc in nlp.pipe(captions, n_process=n_process, batch_size=256):
            chunks += sum(1 for _ in ((c.text, c.start_char, c.end_char) for c in doc.noun_chunks))
        assert chunks > 0
        return len(captions)
    from glipkit.engine.labelling.extract_phrases import ExtractPhrasesSettings, run_extract_phrases

    extractor = method.removeprefix("glipkit-").removesuffix("-1")
    settings = ExtractPhrasesSettings(extractor=extractor, spacy_model=model, overwrite=True)
    report = run_extract_phrases(files, out / method, settings, workers=1 if method.endswith("-1") else workers)
    assert not report.failed, report.results
    return report.written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=20000)
    parser.add_argument("--files", type=int, default=8, help="caption files the captions are split into")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: CPU cores)")
    parser.add_argument("--spacy-model", default="en_core_web_sm")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each method, round-robin; median reported")
    parser.add_argument("--methods", default=",".join(METHODS[:4]), help=f"comma list of {', '.join(METHODS)}")
    parser.add_argument("--run-one", help=argparse.SUPPRESS)  # internal: one measurement in a fresh process
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()

    from glipkit.engine.runtime import available_cores
    from glipkit.text.spacy_models import resolve_spacy_model

    workers = args.workers or available_cores()
    model = resolve_spacy_model(args.spacy_model)
    if args.run_one:
        data = Path(args.data)
        n = run_one(args.run_one, sorted(data.glob("*.jsonl")), data / "out", workers, model)
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
        print(n, cpu)
        return

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}")
    captions = make_captions(args.captions)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        per_file = (len(captions) + args.files - 1) // args.files
        for i in range(args.files):
            with open(Path(tmp) / f"captions-{i:03d}.jsonl", "w", encoding="utf-8") as f:
                for j, caption in enumerate(captions[i * per_file : (i + 1) * per_file]):
                    f.write(json.dumps({"key": f"{i:05d}{j:05d}", "caption": caption}) + "\n")
        times: dict[str, list[float]] = {m: [] for m in methods}
        cpu: dict[str, list[float]] = {m: [] for m in methods}
        for _ in range(args.repeats):
            for method in methods:
                command = [sys.executable, __file__, "--run-one", method, "--data", tmp, "--workers", str(workers),
                           "--spacy-model", args.spacy_model]
                started = time.perf_counter()
                done = subprocess.run(command, check=True, capture_output=True, text=True)
                times[method].append(time.perf_counter() - started)
                count, cpu_seconds = done.stdout.split()[-2:]
                assert int(count) == len(captions), done.stdout
                cpu[method].append(float(cpu_seconds))

    n = len(captions)
    base = statistics.median(times[methods[0]])
    print(f"\n{n} captions in {args.files} files, {workers} workers, median of {args.repeats} run(s), model {model}, "
          f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
          f"load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after\n")
    print(f"| {'method':<52} | {'seconds':>7} | {'captions/s':>10} | {'vs ' + methods[0]:>16} | {'captions/CPU-s':>14} |")
    print(f"|{'-' * 54}|{'-' * 9}|{'-' * 12}|{'-' * 18}|{'-' * 16}|")
    for method in methods:
        seconds = statistics.median(times[method])
        label = LABELS[method].format(w=workers)
        # CPU time is complete only for one-process methods (forkserver workers are not our children).
        per_cpu = f"{n / statistics.median(cpu[method]):14.0f}" if method in SINGLE_PROCESS else f"{'-':>14}"
        print(f"| {label:<52} | {seconds:7.1f} | {n / seconds:10.0f} | {base / seconds:15.2f}x | {per_cpu} |")


if __name__ == "__main__":
    main()
