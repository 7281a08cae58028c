"""Write demo WebDataset shards (img2dataset layout) of synthetic image-caption pairs.

    python examples/make_demo_shards.py --out demo/shards --shards 4 --samples 64

Each sample is `<key>.jpg` (coloured shapes and objects on a background), `<key>.txt` (the caption naming
them) and `<key>.json` (key, url, caption, width, height, status and the gold boxes with caption spans).
"""

from __future__ import annotations

import argparse

from glipkit.demo.gold import write_gold_coco
from glipkit.demo.samples import write_demo_shards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo/shards", help="output directory (default: demo/shards)")
    parser.add_argument("--shards", type=int, default=4, help="number of shards (default: 4)")
    parser.add_argument("--samples", type=int, default=64, help="samples per shard (default: 64)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--min-size", type=int, default=160, help="smallest image side in pixels (default: 160)")
    parser.add_argument("--max-size", type=int, default=320, help="largest image side in pixels (default: 320)")
    parser.add_argument("--gold", help="also write the gold boxes as COCO json here (for glipkit report --gold)")
    args = parser.parse_args()
    paths = write_demo_shards(
        args.out, args.shards, args.samples, args.seed, min_size=args.min_size, max_size=args.max_size
    )
    for path in paths:
        print(path)
    if args.gold:
        print(write_gold_coco(paths, args.gold))


if __name__ == "__main__":
    main()
