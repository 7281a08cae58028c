"""Regenerate lvis_fixed_ap_reference.json: fixed-AP numbers from the official `lvis` package (0.5.3).

Not run by the tests. It needs the package without its heavy dependencies, for example
`pip install --no-deps --target /tmp/lvis_pkg lvis==0.5.3`, then
`LVIS_PKG=/tmp/lvis_pkg python tests/data/make_lvis_fixed_ap_reference.py`.
The package imports OpenCV/matplotlib for visualisation and uses `np.float` (gone in NumPy 2); both are
patched around below. The cap follows the fixed-AP reference script: per category, the top-k records by
score (stable), then LVISResults(max_dets=-1) and LVISEval with params.max_dets = -1.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import types
from collections import defaultdict
from pathlib import Path

import numpy as np

OUT = Path(__file__).with_name("lvis_fixed_ap_reference.json")
METRICS = {"AP": "AP", "AP50": "AP50", "AP75": "AP75", "APs": "APs", "APm": "APm", "APl": "APl", "APr": "APr",
           "APc": "APc", "APf": "APf", "AR@-1": "AR", "ARs@-1": "ARs", "ARm@-1": "ARm", "ARl@-1": "ARl"}


def make_case(seed: int, num_images: int = 16, num_categories: int = 6) -> tuple[dict, list[dict]]:
    """Random LVIS-style ground truth (federated lists, area field) and noisy detections with tied scores."""
    rng = np.random.default_rng(seed)
    cats = [{"id": c + 1, "name": f"class{c}", "frequency": "rcf"[c % 3]} for c in range(num_categories)]
    images, anns = [], []
    for i in range(num_images):
        img_id = 100 + i
        present = set(rng.choice(num_categories, size=rng.integers(0, 3), replace=False).tolist())
        absent = [c + 1 for c in range(num_categories) if c not in present and rng.random() < 0.4]
        not_exhaustive = [c + 1 for c in present if rng.random() < 0.3]
        images.append({"id": img_id, "width": 640, "height": 480, "neg_category_ids": absent,
                       "not_exhaustive_category_ids": not_exhaustive})
        for c in present:
            for _ in range(rng.integers(1, 4)):
                w, h = (round(v, 1) for v in rng.uniform(5, 200, 2))
                x, y = round(rng.uniform(0, 400), 1), round(rng.uniform(0, 300), 1)
                anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": c + 1, "bbox": [x, y, w, h],
                             "area": round(w * h * rng.uniform(0.6, 1.0), 1)})
    dets = []
    for a in anns:
        for _ in range(rng.integers(0, 4)):
            x, y, w, h = a["bbox"]
            j = rng.normal(0, 0.1, 4) * np.array([w, h, w, h])
            cat = a["category_id"] if rng.random() < 0.8 else int(rng.integers(1, num_categories + 1))
            dets.append({"image_id": a["image_id"], "category_id": cat,
                         "bbox": [round(x + j[0], 1), round(y + j[1], 1), round(max(1, w + j[2]), 1),
                                  round(max(1, h + j[3]), 1)],
                         "score": round(float(rng.random()), 2)})
    for _ in range(num_images * 4):
        w, h = (round(v, 1) for v in rng.uniform(5, 200, 2))
        dets.append({"image_id": 100 + int(rng.integers(num_images)),
                     "category_id": int(rng.integers(1, num_categories + 1)),
                     "bbox": [round(rng.uniform(0, 400), 1), round(rng.uniform(0, 300), 1), w, h],
                     "score": round(float(rng.random()), 2)})
    return {"images": images, "annotations": anns, "categories": cats}, dets


def reference_metrics(gt: dict, dets: list[dict], topk: int) -> dict[str, float]:
    np.float = float  # type: ignore[attr-defined]
    sys.path.insert(0, os.environ["LVIS_PKG"])
    sys.modules["lvis.vis"] = types.SimpleNamespace(LVISVis=None)
    from lvis.eval import LVISEval
    from lvis.lvis import LVIS
    from lvis.results import LVISResults

    logging.disable(logging.CRITICAL)
    by_cat = defaultdict(list)
    for d in dets:
        by_cat[d["category_id"]].append(d)
    kept = []
    for cat_dets in by_cat.values():
        kept.extend(sorted(cat_dets, key=lambda d: d["score"], reverse=True)[:topk])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gt.json"
        path.write_text(json.dumps(gt))
        lvis_gt = LVIS(str(path))
        results = LVISResults(lvis_gt, [dict(d) for d in kept], max_dets=-1)
        evaluator = LVISEval(lvis_gt, results, "bbox")
        evaluator.params.max_dets = -1
        evaluator.run()
    return {ours: float(evaluator.results[theirs]) for theirs, ours in METRICS.items()}


def main() -> None:
    cases = []
    for seed, topk in ((3, 10_000), (5, 10_000), (7, 6)):
        gt, dets = make_case(seed)
        cases.append({"seed": seed, "topk_per_category": topk, "ground_truth": gt, "detections": dets,
                      "expected": reference_metrics(gt, dets, topk)})
    OUT.write_text(json.dumps({"source": "lvis==0.5.3 LVISEval, fixed AP (see make_lvis_fixed_ap_reference.py)",
                               "cases": cases}))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
