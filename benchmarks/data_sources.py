"""Samples/s of the shard reader from local disk vs loopback HTTP vs S3 (moto), with and without decode + resize.

    python benchmarks/data_sources.py                          # 4 shards x 64 img2dataset-like 256 px JPEGs
    python benchmarks/data_sources.py --shards 8 --samples 128 --min-size 800 --max-size 1333

The same shards (written with webdataset's TarWriter, img2dataset's layout: jpg + txt + json) are read from a
local folder, from `python -m http.server` and from `moto_server` (S3 through s3fs), each server in its own process
on 127.0.0.1. Two measures per source, best of --repeat interleaved runs, printed as ratios against local disk:

  read       data/shards.iter_samples: the tar stream grouped into samples (all members read)
  prepared   engine/labelling/teacher_data.TeacherDataset in classes mode: read + decode + resize to the teacher's
             input size + aspect-ratio bucketing + collation, i.e. the data path of `pseudo-label` without the model
             (one worker; `pseudo-label` runs several)

Loopback has no network latency or bandwidth limit, so this measures the cost of each access path in this process
(HTTP client, S3 signing and range requests), not of a real network.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def write_shards(folder: Path, shards: int, samples: int, size: int) -> list[Path]:
    import numpy as np
    import webdataset as wds
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(shards):
        path = folder / f"{s:05d}.tar"
        with wds.TarWriter(str(path), encoder=False) as writer:
            for i in range(samples):
                h, w = (size, int(size * 4 / 3)) if i % 2 else (int(size * 4 / 3), size)
                # Smooth noise compresses like a photo (a few tens of kB at 256 px), unlike white noise.
                small = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)
                image = Image.fromarray(small).resize((w, h), Image.BILINEAR)
                buffer = io.BytesIO()
                image.save(buffer, "JPEG", quality=90)
                key = f"{s:05d}{i:04d}"
                meta = {"url": f"https://example.com/{key}.jpg", "key": key, "caption": f"sample {key}",
                        "status": "success", "width": w, "height": h}
                writer.write({"__key__": key, "jpg": buffer.getvalue(), "txt": meta["caption"].encode(),
                              "json": json.dumps(meta).encode()})
        paths.append(path)
    return paths


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


def count_read(shards: list[str]) -> int:
    from glipkit.data.shards import iter_samples

    return sum(1 for shard in shards for _ in iter_samples(shard))


def count_prepared(shards: list[str], min_size: int, max_size: int) -> int:
    from glipkit.engine.labelling.teacher_data import CLASSES, ImageBatch, LoaderSettings, TeacherDataset

    settings = LoaderSettings(prompt_mode=CLASSES, min_size=min_size, max_size=max_size, batch_size=8)
    return sum(len(item.records) for item in TeacherDataset(shards, settings) if isinstance(item, ImageBatch))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--samples", type=int, default=64, help="samples per shard")
    parser.add_argument("--image-size", type=int, default=256, help="shorter side of the stored JPEGs")
    parser.add_argument("--min-size", type=int, default=800, help="teacher input: shorter side")
    parser.add_argument("--max-size", type=int, default=1333, help="teacher input: longer side at most")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="glipkit-sources-"))
    processes: list[subprocess.Popen] = []
    try:
        local = write_shards(work / "shards", args.shards, args.samples, args.image_size)
        megabytes = sum(p.stat().st_size for p in local) / 1e6

        http_port, s3_port = free_port(), free_port()
        processes.append(subprocess.Popen([sys.executable, "-m", "http.server", str(http_port), "--bind",
                                           "127.0.0.1", "--directory", str(work)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        moto = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
        processes.append(subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(s3_port)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_for(http_port)
        wait_for(s3_port)
        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
        import fsspec

        fsspec.config.conf["s3"] = {"endpoint_url": f"http://127.0.0.1:{s3_port}"}
        fs = fsspec.filesystem("s3")
        fs.mkdir("bench")
        fs.put(str(work / "shards") + "/", "bench/shards/", recursive=True)

        sources = {
            "local disk": [str(p) for p in local],
            "HTTP (loopback)": [f"http://127.0.0.1:{http_port}/shards/{p.name}" for p in local],
            "S3 (moto, loopback)": [f"s3://bench/shards/{p.name}" for p in local],
        }
        total = args.shards * args.samples
        best: dict[tuple[str, str], float] = {}
        for _ in range(args.repeat):
            for name, shards in sources.items():
                for measure, run in [("read", lambda s=shards: count_read(s)),
                                     ("prepared", lambda s=shards: count_prepared(s, args.min_size, args.max_size))]:
                    started = time.perf_counter()
                    n = run()
                    seconds = time.perf_counter() - started
                    assert n == total, (name, measure, n, total)
                    best[name, measure] = min(best.get((name, measure), float("inf")), seconds)

        print(f"{args.shards} shards x {args.samples} samples ({megabytes:.1f} MB of {args.image_size} px JPEGs), "
              f"resized to {args.min_size}/{args.max_size}, best of {args.repeat}, 1 thread")
        print("| source | read samples/s | read MB/s | vs local | read + decode + resize samples/s | vs local |")
        print("|---|---:|---:|---:|---:|---:|")
        base_read, base_prep = best["local disk", "read"], best["local disk", "prepared"]
        for name in sources:
            read, prep = best[name, "read"], best[name, "prepared"]
            print(f"| {name} | {total / read:.0f} | {megabytes / read:.0f} | {base_read / read:.2f}x | "
                  f"{total / prep:.0f} | {base_prep / prep:.2f}x |")
    finally:
        for process in processes:
            process.terminate()
            process.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
