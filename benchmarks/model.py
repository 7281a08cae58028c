"""Model-level speed: text padding (256 vs longest) and image-feature caching across prompt chunks.

(a) one image, 12-token caption prompts: forward with the text padded to 256 (official) vs to the longest prompt.
(b) one image against an LVIS-style vocabulary split into 8 chunks: Swin+FPN once vs recomputed per chunk.
Random GLIP-T-sized weights; prints a table of times, FLOPs and ratios measured in the same run.

    python benchmarks/model.py                      # CPU, 512 px
    python benchmarks/model.py --device cuda --size 800 --precision bf16
"""

from __future__ import annotations

import argparse
import statistics
import string
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from glipkit.demo.vocab import write_vocab
from glipkit.engine.runtime import autocast
from glipkit.model.config import preset
from glipkit.model.glip import GLIP
from glipkit.model.prompts import PromptChunk, encode_prompts, vocabulary_chunks


def made_up_tokenizer(directory: str):
    """A WordPiece tokenizer over 400 made-up words (the real bert-base-uncased cannot be downloaded here)."""
    from transformers import BertTokenizerFast

    words = ["".join(a + b + c) for a in string.ascii_lowercase for b in "aeiou" for c in "nrst"][:400]
    return BertTokenizerFast.from_pretrained(str(write_vocab(directory, words))), words


def timed(fn, repeats: int, device: torch.device) -> float:
    """Median wall time of `fn` over `repeats` runs (after a warm-up run on GPUs)."""
    if device.type == "cuda":
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def flops(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="glip-t")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (square)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    tokenizer, words = made_up_tokenizer("/tmp/glipkit_bench_vocab")
    model = GLIP(preset(args.config), tokenizer=tokenizer).eval().to(device)
    pixels = torch.randn(1, 3, args.size, args.size, device=device)
    sizes = [(args.size, args.size)]

    # (a) caption prompts of 12 tokens ([CLS] + 10 words + [SEP]), padded to 256 vs to the longest.
    caption = " ".join(words[:10])
    spans = [[(0, len(words[0])), (len(caption) - len(words[9]), len(caption))]]

    def forward(pad: bool):
        def run():
            enc = encode_prompts(tokenizer, [caption], spans, pad_to_max_length=pad)
            with torch.no_grad(), autocast(device, args.precision):
                model(pixels, enc.input_ids.to(device), enc.attention_mask.to(device))
        return run

    # (b) an LVIS-like vocabulary of 8 chunks of 40 two-word class names.
    names = [f"{words[(2 * i) % len(words)]} {words[(2 * i + 1) % len(words)]}" for i in range(320)]
    chunks = PromptChunk.for_vocabulary(vocabulary_chunks(tokenizer, names, chunk_size=40), batch_size=1)

    def cached():
        with torch.no_grad(), autocast(device, args.precision):
            model.ground_batch(pixels, sizes, chunks)

    def recomputed():
        with torch.no_grad(), autocast(device, args.precision):
            for chunk in chunks:
                model.ground_batch(pixels, sizes, [chunk])

    # FLOPs per phase, counted once each; the cases' FLOPs follow from them.
    with torch.no_grad():
        image_flops = flops(lambda: model.encode_image(pixels))
        features = model.encode_image(pixels)

        def text_and_head(enc):
            ids, mask = enc.input_ids.to(device), enc.attention_mask.to(device)
            language = model.encode_text(ids, mask)
            return flops(lambda: model.encode_text(ids, mask)) + flops(lambda: model.fuse_and_predict(features, language))

        caption_flops = {pad: text_and_head(encode_prompts(tokenizer, [caption], spans, pad_to_max_length=pad))
                         for pad in (True, False)}
        chunk_flops = sum(text_and_head(encode_prompts(tokenizer, c.prompts, c.spans)) for c in chunks)
    flop_rows = [(image_flops + caption_flops[True], image_flops + caption_flops[False]),
                 (8 * image_flops + chunk_flops, image_flops + chunk_flops)]

    rows = []
    cases = [("(a) text padded to 256 vs longest (12 tokens)", forward(True), forward(False)),
             ("(b) 8 prompt chunks: image encoded per chunk vs once", recomputed, cached)]
    for (label, baseline, ours), (f_base, f_ours) in zip(cases, flop_rows):
        t_base, t_ours = timed(baseline, args.repeats, device), timed(ours, args.repeats, device)
        rows.append((label, t_base, t_ours, f_base / 1e9, f_ours / 1e9))

    print(f"\nGLIP model benchmark: {args.config}, random weights, {args.size}x{args.size} image, {args.device}, "
          f"{args.precision}, {torch.get_num_threads()} threads, median of {args.repeats}\n")
    print("| case | baseline s | glipkit s | speed-up | baseline GFLOP | glipkit GFLOP | FLOP ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, t_base, t_ours, f_base, f_ours in rows:
        print(f"| {label} | {t_base:.2f} | {t_ours:.2f} | {t_base / t_ours:.2f}x | {f_base:.0f} | {f_ours:.0f} | "
              f"{f_base / f_ours:.2f}x |")
    print(f"\nGFLOP of one pass: encode_image {image_flops / 1e9:.0f}; encode_text + fuse_and_predict: "
          f"{caption_flops[True] / 1e9:.0f} (256 tokens), {caption_flops[False] / 1e9:.0f} (12 tokens), "
          f"{chunk_flops / 8e9:.0f} (one 40-class chunk)")


if __name__ == "__main__":
    main()
