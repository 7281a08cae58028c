"""GPU first light: GLIP proven correct on the device, the teacher's real speed, and what each speed lever buys.

    python benchmarks/gpu_first_light.py --out first_light.json                  # one GPU, under 8 minutes
    python benchmarks/gpu_first_light.py --device cpu --quick --out quick.json   # every row on a CPU, tiny model

One table (printed as markdown) and the same rows as JSON (`--out`), in four sections:

  correctness  the official fixture (tests/test_official_parity.py's loader and tolerances) through the model in
               fp32 on the device, TF32 off; and its detections in bf16 vs fp32 (max box and score differences)
  teacher      GLIP-T at 800/1333 with random weights (--quick: glip-tiny-test): the official-style loop (batch 1,
               fp32, text padded to 256) vs the engine's Predictor on pre-decoded batches of 1, 8, 16 and 32, bf16
               and fp32 (TF32): images/s, model FLOP utilisation (of the bf16 dense peak), peak GPU memory
  levers       each SpeedConfig lever (model/config.py) alone, all but compile, and compile, at one batch size:
               images/s and the largest box and score change against the levers off, on the same batches
  pipeline     the whole pseudo-label job with its defaults (pinned batches, and with pin_memory off), and the
               data path alone with the default workers

A row that fails (e.g. out of memory) records its error and the run goes on; rows that would start after
--budget-s are recorded as skipped, so the script always ends with a whole table.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from teacher import data_only, engine_run, flops_per_image, official_loop, peak_tflops, synchronize  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FIXTURE = ROOT.parent / "shared" / "fixtures" / "glip_small_ref"
BATCH_SIZES = (1, 8, 16, 32)
PRECISIONS = ("bf16", "fp32")
MATCH_IOU = 0.5
LEVERS_ON_FIXTURE = "fixture fp32, all levers but compile"

# Each lever alone (SpeedConfig fields), then together; compile last (it spends its warm-up compiling).
LEVERS = {
    "levers off": {},
    "bert_attention=sdpa": {"bert_attention": "sdpa"},
    "swin_sdpa": {"swin_sdpa": True},
    "fusion_sdpa": {"fusion_sdpa": True},
    "channels_last": {"channels_last": True},
    "all but compile": {"bert_attention": "sdpa", "swin_sdpa": True, "fusion_sdpa": True, "channels_last": True},
    "compile_fusion": {"compile_fusion": "COMPILE_BACKEND"},
}


@dataclasses.dataclass
class Row:
    """One line of the table (None: not applicable)."""

    section: str
    name: str
    status: str = "ok"  # ok, fail (a check did not hold), error (it raised), skipped (budget, no fixture)
    images: int | None = None
    images_per_s: float | None = None
    vs_baseline: float | None = None
    gflop_per_image: float | None = None
    mfu: float | None = None
    peak_gib: float | None = None
    max_box_diff: float | None = None
    max_score_diff: float | None = None
    note: str = ""


def row_names(compile_backend: str) -> list[tuple[str, str]]:
    """Every (section, name) the run writes, in order."""
    names = [("correctness", "fixture fp32: intermediates"), ("correctness", "fixture fp32: detections"),
             ("correctness", "fixture bf16 vs fp32: detections"), ("correctness", LEVERS_ON_FIXTURE),
             ("teacher", "official-style (batch 1, fp32, text 256)")]
    names += [("teacher", f"predictor batch {b}, {p}") for p in PRECISIONS for b in BATCH_SIZES]
    names += [("levers", lever_name(name, compile_backend)) for name in LEVERS]
    names += [("pipeline", "pseudo-label job, defaults (pinned)"), ("pipeline", "pseudo-label job, pin_memory off"),
              ("pipeline", "data path alone, default workers")]
    return names


def lever_name(name: str, compile_backend: str) -> str:
    return f"compile_fusion={compile_backend}" if name == "compile_fusion" else name


def parity_module():
    """tests/test_official_parity.py: the fixture loader, comparisons and tolerances of the parity test."""
    spec = importlib.util.spec_from_file_location("official_parity", ROOT / "tests" / "test_official_parity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def max_differences(reference, other) -> tuple[float, float, int, int]:
    """Largest |box| and |score| change of each reference detection to its nearest same-label box in `other` (per
    image lists of objects with boxes, scores, labels), over those matched (IoU >= 0.5, or within 0.5 px: clipped
    boxes can have no area), and (matched, total)."""
    import torch
    from torchvision.ops import box_iou

    box, score, matched, total = 0.0, 0.0, 0, 0
    for ref, new in zip(reference, other):
        total += len(ref.scores)
        if len(ref.scores) == 0 or len(new.scores) == 0:
            continue
        distance = (ref.boxes.float()[:, None, :] - new.boxes.float()[None, :, :]).abs().amax(dim=-1)
        distance[ref.labels[:, None] != new.labels[None, :]] = float("inf")
        nearest, index = distance.min(dim=1)
        iou = box_iou(ref.boxes.float(), new.boxes.float()).gather(1, index[:, None]).squeeze(1)
        hit = torch.isfinite(nearest) & ((iou >= MATCH_IOU) | (nearest <= 0.5))
        matched += int(hit.sum())
        if hit.any():
            box = max(box, float(nearest[hit].max()))
            score = max(score, float((ref.scores[hit] - new.scores[index[hit]]).abs().max()))
    return box, score, matched, total


class Run:
    """The rows so far, the device, and the time budget."""

    def __init__(self, device, budget_s: float):
        self.device, self.budget_s = device, budget_s
        self.started = time.perf_counter()
        self.rows: list[Row] = []

    def row(self, section: str, name: str, fn: Callable[[Row], None]) -> Row:
        import torch

        row = Row(section, name)
        elapsed = time.perf_counter() - self.started
        if elapsed > self.budget_s:
            row.status, row.note = "skipped", f"time budget spent ({elapsed:.0f} s of {self.budget_s:.0f} s)"
        else:
            cuda = self.device.type == "cuda"
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(self.device)
            try:
                fn(row)
            except Exception as error:  # noqa: BLE001 - one failing row (e.g. out of memory) must not end the run
                row.status, row.note = "error", f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
            if cuda:
                row.peak_gib = round(torch.cuda.max_memory_allocated(self.device) / 2**30, 2)
        self.rows.append(row)
        print(f"  [{time.perf_counter() - self.started:5.0f} s] {section} | {name}: {row.status} {row.note}", flush=True)
        return row


def correctness(run: Run, fixture: Path) -> None:
    """The official fixture through the model on the device: fp32 within the parity tolerances, bf16 vs fp32."""
    from glipkit.engine.runtime import set_tf32

    files = [Path(f"{fixture}{suffix}") for suffix in (".safetensors", "_io.safetensors", "_config.json")]
    missing = [str(f) for f in files if not f.is_file()]
    results: dict[str, Any] = {}

    def fp32_intermediates(row: Row) -> None:
        if missing:
            row.status, row.note = "skipped", f"fixture files missing: {missing}"
            return
        parity = results["parity"] = parity_module()
        set_tf32(False)  # the parity tolerances are fp32's
        try:
            results["fp32"] = parity.capture(fixture, run.device, "fp32")
        finally:
            set_tf32(True)
        failures, compared = parity.intermediate_failures(results["fp32"])
        row.status = "ok" if compared and not failures else "fail"
        row.note = f"{compared - len(failures)}/{compared} tensors within abs {parity.ABS_TOL:g} or rel " \
                   f"{parity.REL_TOL:g}" + (f"; first: {failures[0]}" if failures else "")

    def fp32_detections(row: Row) -> None:
        if "fp32" not in results:
            row.status, row.note = "skipped", "no fp32 run"
            return
        problems = results["parity"].detection_problems(results["fp32"])
        row.status = "fail" if problems else "ok"
        row.note = "; ".join(problems[:2]) if problems else "detections and NMS candidates match as sets"

    def bf16_vs_fp32(row: Row) -> None:
        if "fp32" not in results:
            row.status, row.note = "skipped", "no fp32 run"
            return
        bf16 = results["parity"].capture(fixture, run.device, "bf16")
        box, score, matched, total = max_differences(results["fp32"]["detections"], bf16["detections"])
        row.max_box_diff, row.max_score_diff = round(box, 4), round(score, 5)
        row.note = f"{matched}/{total} fp32 detections matched (same label, IoU >= {MATCH_IOU})"

    run.row("correctness", "fixture fp32: intermediates", fp32_intermediates)
    run.row("correctness", "fixture fp32: detections", fp32_detections)
    def levers_on(row: Row) -> None:
        if "fp32" not in results:
            row.status, row.note = "skipped", "no fp32 run"
            return
        from glipkit.model.config import SpeedConfig

        parity = results["parity"]
        set_tf32(False)
        try:
            levers = parity.capture(fixture, run.device, "fp32", SpeedConfig(**LEVERS["all but compile"]))
        finally:
            set_tf32(True)
        failures, compared = parity.intermediate_failures(levers)
        problems = parity.detection_problems(levers)
        row.status = "ok" if compared and not failures and not problems else "fail"
        box, score, _, _ = max_differences(results["fp32"]["detections"], levers["detections"])
        row.max_box_diff, row.max_score_diff = round(box, 5), round(score, 6)
        row.note = f"{compared - len(failures)}/{compared} tensors within the parity tolerances, " \
                   f"{'detections match' if not problems else problems[0]}; diffs vs levers off"

    run.row("correctness", "fixture bf16 vs fp32: detections", bf16_vs_fp32)
    run.row("correctness", LEVERS_ON_FIXTURE, levers_on)


def load_batches(model, shards, phrases: Path, batch_size: int, pin: bool) -> list:
    """The data path's padded uint8 batches of `shards`, decoded once, in this process (pinned on CUDA)."""
    from glipkit.engine.labelling.teacher_data import ImageBatch, LoaderSettings, TeacherDataset

    cfg = model.config.input
    settings = LoaderSettings(phrases_dir=phrases, min_size=cfg.min_size, max_size=cfg.max_size,
                              size_divisibility=cfg.size_divisibility, batch_size=batch_size)
    batches = [b for b in TeacherDataset(shards, settings) if isinstance(b, ImageBatch)]
    return [b.pin_memory() for b in batches] if pin else batches


def ground_all(predictor, batches) -> list:
    """Every batch through the predictor; the groundings of all images, in order."""
    from glipkit.model.prompts import PromptChunk

    out = []
    for batch in batches:
        chunk = PromptChunk.for_captions([r.caption for r in batch.records],
                                         [[(p["start"], p["end"]) for p in r.phrases] for r in batch.records])
        out += predictor.ground(batch.images, batch.sizes, batch.original_sizes, [chunk])
    return out


def timed(device, fn: Callable[[], Any]) -> tuple[Any, float]:
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return result, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny model, a few images: the rows without the wait")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    parser.add_argument("--fixture", type=Path, default=DEFAULT_FIXTURE, help="official parity fixture prefix")
    parser.add_argument("--images", type=int, default=None, help="demo images (default 256; --quick 2)")
    parser.add_argument("--baseline-images", type=int, default=None, help="default 48; --quick 2")
    parser.add_argument("--lever-batch", type=int, default=16, help="batch size of the lever rows")
    parser.add_argument("--compile-backend", default=None,
                        help="torch.compile backend of the compile row (default inductor; --quick on CPU aot_eager)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="rows that would start later are skipped")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device bf16 peak for utilisation")
    args = parser.parse_args(argv)

    import torch

    from glipkit.demo.gold import write_gold_phrases
    from glipkit.demo.samples import write_demo_shards
    from glipkit.demo.vocab import write_vocab
    from glipkit.engine.distributed import DistributedContext
    from glipkit.engine.labelling.pseudo_label import default_batch_size, default_workers
    from glipkit.engine.predictor import Predictor, PredictorSettings
    from glipkit.engine.runtime import resolve_precision, set_tf32
    from glipkit.model.config import SpeedConfig, preset
    from glipkit.model.glip import GLIP
    from glipkit.model.hub import load_tokenizer

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)
    set_tf32(True)  # the engine's default; the official-style fp32 baseline gets it too, so only the design differs
    config_name = "glip-tiny-test" if args.quick else "glip-t"
    total_images = args.images or (2 if args.quick else 256)
    samples = min(total_images, 32)
    baseline_images = args.baseline_images or (1 if args.quick else 48)
    # --quick on a CPU: dynamo's capture without code generation (inductor compiles C++ for about a minute).
    compile_backend = args.compile_backend or ("eager" if args.quick and not cuda else "inductor")
    warm_up = not args.quick
    workers = default_workers(DistributedContext())
    lever_precision = resolve_precision("auto", device)
    peak = peak_tflops(device, args.peak_tflops)
    run = Run(device, args.budget_s)
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    print(f"# GPU first light: {config_name} on {name}, {total_images} demo images, {workers} workers", flush=True)

    correctness(run, args.fixture)

    with tempfile.TemporaryDirectory(prefix="glipkit-first-light-") as tmp:
        tmp = Path(tmp)
        shards = write_demo_shards(tmp / "shards", num_shards=max(1, total_images // samples),
                                   samples_per_shard=samples, seed=0)
        phrases = tmp / "phrases"
        write_gold_phrases(shards, phrases)
        tokenizer = load_tokenizer(str(write_vocab(tmp / "tokenizer")))
        torch.manual_seed(0)
        model = GLIP(preset(config_name), tokenizer=tokenizer).eval().to(device)
        model.head.bias0.data.fill_(0.0)  # scores around 0.5: the most candidates, the heaviest post-processing
        flops: dict[tuple[int, bool], float] = {}

        def gflop(batch_size: int, pad: bool = False) -> float:
            """FLOPs per image of the forward at this batch size (padding included); --quick: of batch 1."""
            batch_size = 1 if args.quick else batch_size
            if (batch_size, pad) not in flops:
                flops[batch_size, pad] = flops_per_image(model, shards, phrases, device, "fp32", batch_size, pad,
                                                         images=1 if args.quick else 8)
            return flops[batch_size, pad] / 1e9

        def utilisation(row: Row, gflop_per_image: float) -> None:
            row.gflop_per_image = round(gflop_per_image, 1)
            if peak and row.images_per_s:
                row.mfu = round(gflop_per_image * row.images_per_s / 1e3 / peak, 4)

        baseline_rate: list[float] = []

        def baseline(row: Row) -> None:
            if warm_up:
                official_loop(model, shards[:1], phrases, device, limit=1)
            row.images, seconds = timed(device, lambda: official_loop(model, shards, phrases, device,
                                                                      baseline_images))
            row.images_per_s = round(row.images / seconds, 3)
            row.vs_baseline = 1.0
            baseline_rate.append(row.images_per_s)
            utilisation(row, gflop(1, pad=True))

        run.row("teacher", "official-style (batch 1, fp32, text 256)", baseline)

        def predictor_rate(row: Row, batches, predictor, warm_up: bool = warm_up) -> list:
            if warm_up:  # allocator, cuDNN autotuning
                ground_all(predictor, batches[:1])
            groundings, seconds = timed(device, lambda: ground_all(predictor, batches))
            row.images = len(groundings)
            row.images_per_s = round(row.images / seconds, 3)
            if baseline_rate:
                row.vs_baseline = round(row.images_per_s / baseline_rate[0], 2)
            return groundings

        for precision in PRECISIONS:
            for batch_size in BATCH_SIZES:
                def predictor_row(row: Row, precision=precision, batch_size=batch_size) -> None:
                    batches = load_batches(model, shards, phrases, batch_size, cuda)
                    settings = PredictorSettings(precision=precision, speed=SpeedConfig())
                    predictor_rate(row, batches, Predictor(model, settings, device))
                    utilisation(row, gflop(batch_size))

                run.row("teacher", f"predictor batch {batch_size}, {precision}", predictor_row)

        lever_batches = load_batches(model, shards, phrases, args.lever_batch, cuda)
        reference: list = []
        for lever, values in LEVERS.items():
            values = {k: compile_backend if v == "COMPILE_BACKEND" else v for k, v in values.items()}

            def lever_row(row: Row, values=values, lever=lever) -> None:
                settings = PredictorSettings(precision=lever_precision, speed=SpeedConfig(**values))
                predictor = Predictor(model, settings, device)
                note, compiling = "", "compile_fusion" in values
                if compiling:  # compile for every batch shape first, outside the timing
                    _, seconds = timed(device, lambda: ground_all(predictor, lever_batches))
                    note = f"compile + first pass {seconds:.0f} s; "
                try:
                    groundings = predictor_rate(row, lever_batches, predictor, warm_up=warm_up and not compiling)
                finally:
                    model.set_speed(SpeedConfig())
                utilisation(row, gflop(args.lever_batch))
                if not values:
                    reference.extend(groundings)
                    row.note = f"batch {args.lever_batch}, {lever_precision}; the reference of this section"
                    return
                off = next(r for r in run.rows if r.section == "levers" and r.name == "levers off")
                if off.images_per_s:
                    note += f"{row.images_per_s / off.images_per_s:.2f}x levers off; "
                if reference:
                    box, score, matched, total = max_differences(reference, groundings)
                    row.max_box_diff, row.max_score_diff = round(box, 4), round(score, 5)
                    note += f"{matched}/{total} detections matched"
                row.note = note.rstrip("; ")

            run.row("levers", lever_name(lever, compile_backend), lever_row)

        for label, pin in (("defaults (pinned)", True), ("pin_memory off", False)):
            def job_row(row: Row, pin=pin) -> None:
                if warm_up:  # worker start-up, allocator
                    engine_run(model, shards[:1], phrases, tmp / "warm", workers)
                row.images, seconds = timed(device, lambda: engine_run(model, shards, phrases, tmp / "job", workers,
                                                                       pin_memory=pin))
                row.images_per_s = round(row.images / seconds, 3)
                if baseline_rate:
                    row.vs_baseline = round(row.images_per_s / baseline_rate[0], 2)
                row.note = f"batch {default_batch_size(device)}, {resolve_precision('auto', device)}, " \
                           f"{workers} workers, Parquet and stats written"

            run.row("pipeline", f"pseudo-label job, {label}", job_row)

        def data_row(row: Row) -> None:
            (row.images, padding), seconds = timed(device, lambda: data_only(model, shards, phrases, workers,
                                                                             default_batch_size(device)))
            row.images_per_s = round(row.images / seconds, 3)
            row.note = f"{workers} workers, padding {padding:.0%} (no model)"

        run.row("pipeline", "data path alone, default workers", data_row)

    report = {"device": name, "config": config_name, "quick": args.quick, "images": total_images,
              "peak_bf16_tflops": peak, "compile_backend": compile_backend,
              "seconds": round(time.perf_counter() - run.started, 1), "torch": torch.__version__,
              "rows": [dataclasses.asdict(r) for r in run.rows]}
    print_table(run.rows)
    print(f"\n{report['seconds']:.0f} s in all")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    return 0


def print_table(rows: list[Row]) -> None:
    def cell(value, fmt: str = "{}") -> str:
        return "" if value is None else fmt.format(value)

    print("\n| section | row | status | images | images/s | vs official | GFLOP/img | MFU | peak GiB | "
          "max box diff | max score diff | note |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r.section} | {r.name} | {r.status} | {cell(r.images)} | {cell(r.images_per_s, '{:.2f}')} | "
              f"{cell(r.vs_baseline, '{:.2f}x')} | {cell(r.gflop_per_image)} | {cell(r.mfu, '{:.1%}')} | "
              f"{cell(r.peak_gib)} | {cell(r.max_box_diff)} | {cell(r.max_score_diff)} | {r.note} |")


if __name__ == "__main__":
    sys.exit(main())
