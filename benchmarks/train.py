"""Training step throughput: glipkit's text padding (batch's longest + 1) vs the official 256-token padding.

    python benchmarks/train.py --config glip-tiny-test --steps 20
    python benchmarks/train.py --config glip-t --device cuda --precision bf16 --batch-size 4 --size 800

Both arms run the same model, optimiser and batches (synthetic detection prompts over the 11 synthetic classes,
GLIP's §4.5 sampling) in the same process, alternating, and report images/s of forward + loss + backward + step.
The only difference is the prompt length the language backbone, the fusion and the alignment head see.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="glip-tiny-test")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--size", type=int, default=None, help="short side (default: the preset's test size)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per arm")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import BertTokenizerFast

    from glipkit.data.augment import TrainTransform
    from glipkit.data.collate import GroundingCollator
    from glipkit.data.coco_detection import CocoDetectionSource
    from glipkit.demo.gold import write_coco_split
    from glipkit.demo.vocab import write_vocab
    from glipkit.engine.runtime import autocast, resolve_precision
    from glipkit.engine.training.optimization import OptimizerSettings, build_optimizer
    from glipkit.engine.training.tuning import apply_tuning
    from glipkit.model.config import preset
    from glipkit.model.glip import GLIP
    from glipkit.model.loss import GroundingLoss

    work = tempfile.mkdtemp(prefix="glipkit-train-bench-")
    tokenizer = BertTokenizerFast.from_pretrained(str(write_vocab(f"{work}/vocab")))
    data = write_coco_split(f"{work}/gold", args.batch_size * 4, seed=1)
    config = preset(args.config)
    config.language.vocab_size = max(config.language.vocab_size, len(tokenizer))
    size = args.size or config.input.min_size
    device = torch.device(args.device)
    precision = resolve_precision(args.precision, device)
    torch.manual_seed(0)
    model = GLIP(config, tokenizer).to(device)
    apply_tuning(model, "full")
    model.train()
    optimizer = build_optimizer(model, OptimizerSettings())
    loss_fn = GroundingLoss()
    source = CocoDetectionSource(data, data.parent / "images", tokenizer)
    transform = TrainTransform(config.input, (size,), config.input.max_size, 0.5)
    batches = []
    for b in range(4):
        examples = [transform(source.load(i, random.Random(i)), random.Random(i))
                    for i in range(b * args.batch_size, (b + 1) * args.batch_size)]
        batches.append(examples)
    arms = {"official (256 tokens)": GroundingCollator(tokenizer, 256, 32),
            "glipkit (longest + 1)": GroundingCollator(tokenizer, 256, 32)}

    def collate(name, examples):
        batch = arms[name](examples)
        if name.startswith("official"):
            pad = 256 - batch.input_ids.shape[1]
            batch.input_ids = torch.nn.functional.pad(batch.input_ids, (0, pad))
            batch.attention_mask = torch.nn.functional.pad(batch.attention_mask, (0, pad))
            for t in batch.targets:
                t.positive_map = torch.nn.functional.pad(t.positive_map, (0, pad))
        return batch.to(device)

    def step(batch) -> None:
        with autocast(device, precision):
            outputs = model(batch.images, batch.input_ids, batch.attention_mask)
        losses = loss_fn(outputs, model.anchors(outputs.tower_features), batch.targets, batch.attention_mask)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    prepared = {name: [collate(name, b) for b in batches] for name in arms}
    for name in arms:  # warm-up
        step(prepared[name][0])
    seconds = {name: 0.0 for name in arms}
    for i in range(args.steps):
        for name in arms:
            batch = prepared[name][i % len(batches)]
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            step(batch)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds[name] += time.perf_counter() - start
    tokens = {name: prepared[name][0].input_ids.shape[1] for name in arms}
    baseline = args.steps * args.batch_size / seconds["official (256 tokens)"]
    print(f"{args.config}, {args.device}, {args.precision}, batch {args.batch_size}, short side {size}, "
          f"{args.steps} steps per arm")
    print(f"{'arm':<24} {'tokens':>6} {'images/s':>9} {'ratio':>6}")
    for name in arms:
        rate = args.steps * args.batch_size / seconds[name]
        print(f"{name:<24} {tokens[name]:>6} {rate:9.2f} {rate / baseline:6.2f}x")


if __name__ == "__main__":
    main()
