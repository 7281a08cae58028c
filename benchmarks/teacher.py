"""Images/s of the pseudo-label teacher: an official-style loop vs glipkit's batched engine, same model, same process.

    python benchmarks/teacher.py                                   # CPU, glip-small, generated demo shards
    python benchmarks/teacher.py --config glip-t --device cuda     # GPU: GLIP-T, bf16, prints model FLOP utilisation

Both paths label the same generated WebDataset shards (synthetic shapes with captions; phrases = the captions' gold
noun-phrase spans, joined from phrase tables, so no spaCy time is measured) with the same random-weight GLIP:

  baseline  official-style: one image at a time in this process (decode, resize, normalise), batch 1, fp32, every
            prompt padded to 256 tokens (GLIP_SPEC.md §4.2), official post-processing, then the 0.5 box threshold.
  engine    glipkit's `run_pseudo_label` with its defaults: DataLoader workers decoding and bucketing by aspect
            ratio, text padded to the batch's longest prompt, batches of 8 and bf16 on GPU / batch 1 and fp32 on
            CPU, the glip preset; including writing the Parquet tables and stats. Also the other batch size.
  data      the data path alone (read, decode, resize, bucket, collate; no model), with the engine's workers and
            in this process, to show that it outruns the model.

Timings are over all images after a warm-up, best of --repeat interleaved runs: wall-clock images/s, and CPU seconds
per image (this process and its DataLoader workers; steadier than wall time on a shared machine). The model
FLOPs are counted on one engine batch with torch.utils.flop_counter (deformable convs added by formula); model FLOP
utilisation = FLOPs/image x images/s / the device's peak (bf16 dense tensor-core peak; --peak-tflops to override).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# bf16 dense tensor-core peaks (TFLOP/s) by device-name fragment; SXM parts (H100 PCIe is lower: 756).
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100 PCIe": 756.0, "H100": 989.4, "A100": 312.0, "L40S": 362.0, "L4": 121.0,
                    "A10": 125.0, "V100": 125.0}


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def official_loop(model, shards, phrases_dir: Path, device, limit: int | None = None) -> int:
    """The official way: each image decoded, preprocessed and run alone, fp32, prompts padded to 256 tokens."""
    import io

    import torch
    from PIL import Image

    from glipkit.data.shards import iter_samples
    from glipkit.data.tables import read_table
    from glipkit.engine.labelling.teacher_data import phrases_path
    from glipkit.model.boxes import rescale_boxes
    from glipkit.model.prompts import PromptChunk
    from glipkit.model.transforms import batch_images, preprocess_image

    count = 0
    for shard in shards:
        table = read_table(phrases_path(phrases_dir, shard)).to_pydict()
        phrases = dict(zip(table["key"], zip(table["caption"], table["phrases"])))
        for sample in iter_samples(shard):
            caption, spans = phrases[sample.key]
            image = Image.open(io.BytesIO(sample.files["jpg"])).convert("RGB")
            tensor = preprocess_image(image, model.config.input)
            pixels, sizes = batch_images([tensor], model.config.input.size_divisibility)
            chunk = PromptChunk.for_captions([caption], [[(p["start"], p["end"]) for p in spans]])
            with torch.inference_mode():
                detections, _ = model.ground_batch(pixels.to(device), sizes, [chunk], pad_text_to_max_length=True)
            det = detections[0]
            keep = det.scores >= 0.5
            rescale_boxes(det.boxes[keep], sizes[0], (image.height, image.width)).cpu()
            count += 1
            if limit is not None and count >= limit:
                return count
    return count


def engine_run(model, shards, phrases_dir: Path, out: Path, workers: int | None, batch_size: int | None = None,
               **options) -> int:
    """Images labelled by `run_pseudo_label`; `options` are further PseudoLabelSettings (precision, speed, ...)."""
    from glipkit.engine.labelling.pseudo_label import PseudoLabelSettings, run_pseudo_label

    settings = PseudoLabelSettings(phrases_dir=phrases_dir, workers=workers, batch_size=batch_size, overwrite=True,
                                   stats_interval_s=1e9, **options)
    report = run_pseudo_label(shards, out, model, settings)
    return report.read


def data_only(model, shards, phrases_dir: Path, workers: int, batch_size: int) -> tuple[int, float]:
    """Images through the data path alone, and the padding fraction of its batches."""
    from torch.utils.data import DataLoader

    from glipkit.engine.labelling.teacher_data import ImageBatch, LoaderSettings, TeacherDataset

    cfg = model.config.input
    settings = LoaderSettings(phrases_dir=phrases_dir, min_size=cfg.min_size, max_size=cfg.max_size,
                              size_divisibility=cfg.size_divisibility, batch_size=batch_size)
    loader = DataLoader(TeacherDataset(shards, settings), batch_size=None, num_workers=workers,
                        prefetch_factor=4 if workers else None)
    images, image_px, batch_px = 0, 0, 0
    for item in loader:
        if isinstance(item, ImageBatch):
            images += len(item.records)
            image_px += sum(h * w for h, w in item.sizes)
            batch_px += item.images.shape[0] * item.images.shape[2] * item.images.shape[3]
    return images, 1 - image_px / batch_px


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (DataLoader workers) so far."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Timing:
    """Best wall time and best CPU time of a path over its runs, and what its last run returned."""

    def __init__(self, name: str, fn):
        self.name, self.fn = name, fn
        self.wall = self.cpu = float("inf")
        self.images, self.extra = 0, None

    def run(self, device) -> None:
        synchronize(device)
        wall, cpu = time.perf_counter(), cpu_seconds()
        result = self.fn()
        synchronize(device)
        self.wall = min(self.wall, time.perf_counter() - wall)
        self.cpu = min(self.cpu, cpu_seconds() - cpu)
        self.images, self.extra = result if isinstance(result, tuple) else (result, None)


def flops_per_image(model, shards, phrases_dir: Path, device, precision: str, batch_size: int,
                    pad_text_to_max_length: bool = False, images: int = 8) -> float:
    """FLOPs of the forward (image encoder, text encoder, fusion and head) per image, averaged over the first
    `images` images of the first shard batched as the engine batches them (padding included)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from glipkit.engine.labelling.teacher_data import ImageBatch, LoaderSettings, TeacherDataset
    from glipkit.engine.predictor import Predictor, PredictorSettings
    from glipkit.engine.runtime import autocast
    from glipkit.model.prompts import PromptChunk, encode_prompts

    def deform_conv_flops(input_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
        # 2 x output elements x (input channels per group x kernel area) multiply-adds, as for a dense conv.
        return 2 * int(torch.Size(out_shape).numel()) * int(torch.Size(weight_shape[1:]).numel())

    cfg = model.config.input
    dataset = TeacherDataset(shards[:1], LoaderSettings(phrases_dir=phrases_dir, min_size=cfg.min_size,
                                                        max_size=cfg.max_size, batch_size=batch_size))
    predictor = Predictor(model, PredictorSettings(precision=precision))
    total, counted = 0, 0
    for batch in dataset:
        if not isinstance(batch, ImageBatch) or counted >= images:
            continue
        pixels = predictor.normalize(batch.images, batch.sizes)
        chunk = PromptChunk.for_captions([r.caption for r in batch.records],
                                         [[(p["start"], p["end"]) for p in r.phrases] for r in batch.records])
        encoded = encode_prompts(model.tokenizer, chunk.prompts, chunk.spans,
                                 pad_to_max_length=pad_text_to_max_length)
        counter = FlopCounterMode(display=False,
                                  custom_mapping={torch.ops.torchvision.deform_conv2d: deform_conv_flops})
        with torch.inference_mode(), counter, autocast(predictor.device, predictor.precision):
            model(pixels, encoded.input_ids.to(device), encoded.attention_mask.to(device))
        total += counter.get_total_flops()
        counted += len(batch.records)
    return total / counted


def peak_tflops(device, override: float | None) -> float | None:
    import torch

    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, peak in PEAK_BF16_TFLOPS.items():
        if fragment in name:
            return peak
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="model preset (default: glip-small on CPU, glip-t on CUDA)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--shards", type=int, default=None, help="shards to generate (default: 2 CPU, 8 CUDA)")
    parser.add_argument("--samples", type=int, default=None, help="samples per shard (default: 16 CPU, 96 CUDA)")
    parser.add_argument("--baseline-images", type=int, default=None,
                        help="images the slow baseline labels (default: all on CPU, 128 on CUDA)")
    parser.add_argument("--workers", type=int, default=None, help="engine DataLoader workers (default: engine's)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per path; the best counts")
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory (default: a generated vocab)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for model FLOP utilisation")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of this process (default: torch's)")
    parser.add_argument("--image-size", default=None, metavar="SHORT,MAX",
                        help="resize (default: the config's, e.g. 256,416 for glip-small, 800,1333 for glip-t)")
    args = parser.parse_args()

    import torch

    from glipkit.demo.gold import write_gold_phrases
    from glipkit.demo.samples import write_demo_shards
    from glipkit.demo.vocab import write_vocab
    from glipkit.engine.distributed import DistributedContext
    from glipkit.engine.labelling.pseudo_label import default_batch_size, default_workers
    from glipkit.engine.runtime import resolve_precision
    from glipkit.model.config import preset
    from glipkit.model.glip import GLIP
    from glipkit.model.hub import load_tokenizer

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    config_name = args.config or ("glip-t" if cuda else "glip-small")
    n_shards = args.shards or (8 if cuda else 2)
    samples = args.samples or (96 if cuda else 16)
    if args.threads:
        torch.set_num_threads(args.threads)
    if cuda:  # the engine allows TF32; allow it for the baseline's fp32 as well, so only the engine's design differs
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    baseline_limit = args.baseline_images or (128 if cuda else None)
    workers = args.workers if args.workers is not None else default_workers(DistributedContext())
    precision = resolve_precision("auto", device)

    with tempfile.TemporaryDirectory(prefix="glipkit-teacher-bench-") as tmp:
        tmp = Path(tmp)
        shards = write_demo_shards(tmp / "shards", num_shards=n_shards, samples_per_shard=samples, seed=0)
        write_gold_phrases(shards, tmp / "phrases")
        tokenizer = load_tokenizer(args.tokenizer or str(write_vocab(tmp / "tokenizer")))
        torch.manual_seed(0)
        config = preset(config_name)
        if args.image_size:
            config.input.min_size, config.input.max_size = (int(v) for v in args.image_size.split(","))
        model = GLIP(config, tokenizer=tokenizer).eval().to(device)
        # Random weights with the prior bias zeroed give scores around 0.5 everywhere: the most candidates,
        # i.e. the heaviest post-processing, for both paths.
        model.head.bias0.data.fill_(0.0)
        phrases = tmp / "phrases"
        total = n_shards * samples
        cores = torch.get_num_threads()
        print(f"# {config_name} on {torch.cuda.get_device_name(device) if cuda else 'CPU'} ({cores} threads), "
              f"{total} images in {n_shards} shards (demo images 160-320 px, resized to "
              f"{model.config.input.min_size}/{model.config.input.max_size}), engine: batch "
              f"{default_batch_size(device)}, {precision}, {workers} workers", flush=True)

        # Warm-up (allocator, thread pools, cuDNN autotuning) on one shard for each path.
        official_loop(model, shards[:1], phrases, device, limit=4)
        engine_run(model, shards[:1], phrases, tmp / "warm", workers)

        baseline = Timing("official-style baseline (batch 1, fp32, text 256, serial decode)",
                          lambda: official_loop(model, shards, phrases, device, baseline_limit))
        default_batch = default_batch_size(device)
        other_batch = 1 if default_batch > 1 else 8
        engine = Timing(f"engine defaults (batch {default_batch}, text padded to longest, {precision}, "
                        f"{workers} workers, bucketing)",
                        lambda: engine_run(model, shards, phrases, tmp / "out", workers))
        engine_other = Timing(f"engine, batch {other_batch}",
                              lambda: engine_run(model, shards, phrases, tmp / "other", workers, other_batch))
        data = Timing(f"data path alone, {workers} workers",
                      lambda: data_only(model, shards, phrases, workers, default_batch))
        data_main = Timing("data path alone, in this process",
                           lambda: data_only(model, shards, phrases, 0, default_batch))
        for _ in range(args.repeat):  # interleaved, so that load from other jobs hits every path alike
            for timing in (baseline, engine, engine_other):
                timing.run(device)
        for timing in (data, data_main):
            timing.run(device)
        data.name += f" (padding {data.extra:.0%})"

        base_rate = baseline.images / baseline.wall
        base_cpu = baseline.cpu / baseline.images
        print("\n| path | images | images/s | vs baseline | CPU s/image | vs baseline (CPU) |")
        print("|---|---:|---:|---:|---:|---:|")
        for t in (baseline, engine, engine_other, data, data_main):
            rate, cpu = t.images / t.wall, t.cpu / t.images
            print(f"| {t.name} | {t.images} | {rate:.2f} | {rate / base_rate:.2f}x | {cpu:.3f} | "
                  f"{base_cpu / cpu:.2f}x |")
        eng_rate = engine.images / engine.wall
        print(f"\nengine / baseline: {eng_rate / base_rate:.2f}x images/s, "
              f"{base_cpu / (engine.cpu / engine.images):.2f}x per CPU-second")

        flops = flops_per_image(model, shards, phrases, device, precision, default_batch)
        base_flops = flops_per_image(model, shards, phrases, device, "fp32", 1, pad_text_to_max_length=True)
        achieved = flops * eng_rate / 1e12
        print(f"model forward per image: baseline {base_flops / 1e9:.1f} GFLOP, engine {flops / 1e9:.1f} GFLOP "
              f"({base_flops / flops:.2f}x fewer: the speed-up if time followed FLOPs)")
        line = f"engine achieves {achieved:.3f} TFLOP/s"
        peak = peak_tflops(device, args.peak_tflops)
        if peak:
            line += f"; model FLOP utilisation {achieved / peak:.1%} of {peak:.0f} TFLOP/s"
        elif cuda:
            line += "; unknown peak for this GPU (pass --peak-tflops for utilisation)"
        print(line)


if __name__ == "__main__":
    sys.exit(main())
