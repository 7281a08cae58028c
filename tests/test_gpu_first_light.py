"""benchmarks/gpu_first_light.py runs end to end on a CPU (`--device cpu --quick`), so the GPU script cannot rot."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_first_light import row_names  # noqa: E402


def test_quick_cpu_run_writes_every_row(tmp_path: Path) -> None:
    out = tmp_path / "first_light.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_first_light.py"), "--device", "cpu",
                           "--quick", "--out", str(out)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["config"] == "glip-tiny-test" and report["quick"] is True
    rows = {(r["section"], r["name"]): r for r in report["rows"]}
    assert list(rows) == row_names(report["compile_backend"])
    assert not [name for name, r in rows.items() if r["status"] != "ok"], [r for r in report["rows"]
                                                                           if r["status"] != "ok"]
    # The official fixture through the script's path is within the parity test's tolerances on this device.
    within, compared = re.match(r"(\d+)/(\d+) tensors", rows["correctness", "fixture fp32: intermediates"]["note"]).groups()
    assert within == compared and int(compared) > 0
    bf16 = rows["correctness", "fixture bf16 vs fp32: detections"]
    # bf16 (8-bit mantissa) moves scores and boxes a little; on this CPU 198/200 fp32 detections keep their label
    # at IoU >= 0.5 and scores move by 0.11 at most.
    matched, total = (int(v) for v in re.match(r"(\d+)/(\d+) fp32 detections matched", bf16["note"]).groups())
    assert total > 0 and matched >= 0.95 * total and bf16["max_score_diff"] < 0.2
    for (section, _), r in rows.items():
        if section in ("teacher", "levers", "pipeline"):
            assert r["images"] > 0 and r["images_per_s"] > 0
        if section == "teacher":
            assert r["gflop_per_image"] > 0 and r["vs_baseline"] > 0
    # Every lever keeps the detections of the levers-off run on a CPU in fp32 (tolerances: test_speed_levers.py).
    for name, r in rows.items():
        if name[0] == "levers" and name[1] != "levers off":
            assert r["max_box_diff"] <= 1e-3 and r["max_score_diff"] <= 1e-4, r
    table = done.stdout
    assert "| correctness | fixture fp32: intermediates | ok |" in table
