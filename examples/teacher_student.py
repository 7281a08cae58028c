"""Teacher -> pseudo-labels -> student, end to end on synthetic data, on a CPU in about 15 minutes.

    python examples/teacher_student.py --out demo/teacher_student

1. synthetic data: gold COCO json train split, a held-out val split, unlabelled WebDataset shards, a vocabulary;
2. `glipkit train-student`: a small GLIP teacher from scratch on the gold train split;
3. `glipkit pseudo-label`: the teacher labels the unlabelled shards (class prompt, every box >= 0.05 kept);
4. `glipkit train-student`: a student from scratch on the pseudo-labels only (filtered at load time);
5. `glipkit eval coco`: an untrained model, the teacher and the student on the held-out val split.

Every step is the real command line, run as a subprocess; OUT/summary.json holds the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# A GLIP small enough to train from scratch on a CPU in minutes (every code path of GLIP-T, tiny widths).
# FPN DropBlock (GLIP's default) is off: it slows these short from-scratch schedules down.
STUDENT_PRESET = "preset:glip-tiny-test"
MODEL_OPTIONS = ["head.fpn_drop_block=false"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo/teacher_student", help="working directory")
    parser.add_argument("--train-images", type=int, default=2400, help="gold train images")
    parser.add_argument("--val-images", type=int, default=100, help="held-out gold val images")
    parser.add_argument("--shards", type=int, default=4, help="unlabelled shards")
    parser.add_argument("--per-shard", type=int, default=200, help="images per unlabelled shard")
    parser.add_argument("--teacher-steps", type=int, default=1500)
    parser.add_argument("--student-steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--lang-lr", type=float, default=1e-4)
    parser.add_argument("--pseudo-min-score", type=float, default=0.3, help="load-time filter of pseudo boxes")
    parser.add_argument("--pseudo-agnostic-nms", type=float, default=0.5,
                        help="load-time NMS across classes: one pseudo label per object")
    parser.add_argument("--workers", type=int, default=1, help="data workers of train-student")
    parser.add_argument("--schedule", default="step", help="step (GLIP: x0.1 at 67%% and 89%%), cosine, constant")
    parser.add_argument("--image-size", type=int, default=None,
                        help="short side for training (and S-32, S-16) and evaluation (default: the preset's 128)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per command (OMP_NUM_THREADS)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def glipkit(*args: str, env: dict[str, str]) -> float:
    """Run `python -m glipkit ARGS`, failing loudly; returns the seconds it took."""
    command = [sys.executable, "-m", "glipkit", *args]
    print("$", " ".join(command[1:]), flush=True)
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True)
    return time.perf_counter() - start


def make_data(out: Path, args: argparse.Namespace) -> dict[str, Path]:
    from glipkit.demo.gold import write_coco_split
    from glipkit.demo.samples import write_demo_shards
    from glipkit.demo.vocab import write_vocab

    paths = {"vocab": write_vocab(out / "vocab"),
             "train": write_coco_split(out / "train", args.train_images, seed=args.seed + 1),
             "val": write_coco_split(out / "val", args.val_images, seed=args.seed + 2)}
    write_demo_shards(out / "unlabelled", args.shards, args.per_shard, seed=args.seed + 3)
    paths["shards"] = out / "unlabelled"
    return paths


def model_options(args: argparse.Namespace) -> list[str]:
    options = list(MODEL_OPTIONS)
    if args.image_size:
        size = args.image_size
        options += [f"input.min_size={size}", f"input.train_min_sizes=[{size - 32},{size - 16},{size}]"]
    return [item for option in options for item in ("--model-option", option)]


def train_args(out: Path, args: argparse.Namespace, steps: int, vocab: Path) -> list[str]:
    options = model_options(args)
    return ["train-student", "--out", str(out), "--model", STUDENT_PRESET, "--tokenizer", str(vocab), *options,
            "--steps", str(steps), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
            "--lang-lr", str(args.lang_lr), "--schedule", args.schedule, "--warmup", str(max(1, steps // 20)),
            "--seed", str(args.seed), "--log-every", "20", "--save-every", str(max(1, steps // 3)),
            "--workers", str(args.workers), "--device", "cpu", "--no-progress"]


def evaluate(name: str, model: str, paths: dict[str, Path], out: Path, env: dict[str, str]) -> dict[str, float]:
    glipkit("eval", "coco", "--ann", str(paths["val"]), "--images", str(paths["val"].parent / "images"),
            "--model", model, "--tokenizer", str(paths["vocab"]), "--device", "cpu", "--workers", "0",
            "--out", str(out / f"eval_{name}"), "--no-per-category", env=env)
    report = json.loads((out / f"eval_{name}" / "metrics.json").read_text())
    metrics = report.get("metrics", report)
    return {k: float(metrics[k]) for k in ("AP", "AP50", "AP75")}


def run(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    paths = make_data(out, args)
    seconds["data"] = time.perf_counter() - start

    teacher = out / "teacher"
    seconds["teacher"] = glipkit(
        *train_args(teacher, args, args.teacher_steps, paths["vocab"]),
        "--gold", str(paths["train"]), "--gold-images", str(paths["train"].parent / "images"), env=env)

    pseudo = out / "pseudo"
    seconds["pseudo-label"] = glipkit(
        "pseudo-label", "--shards", str(paths["shards"]), "--out", str(pseudo),
        "--model", str(teacher / "model.safetensors"), "--tokenizer", str(paths["vocab"]),
        "--prompt-mode", "classes", "--classes", str(paths["train"]), "--preset", "none",
        "--batch-size", "8", "--workers", "0", "--device", "cpu", "--no-progress", env=env)

    student = out / "student"
    seconds["student"] = glipkit(
        *train_args(student, args, args.student_steps, paths["vocab"]),
        "--pseudo", str(pseudo), "--pseudo-min-score", str(args.pseudo_min_score),
        "--pseudo-agnostic-nms", str(args.pseudo_agnostic_nms), env=env)

    metrics = {}
    for name, model in (("untrained", STUDENT_PRESET), ("teacher", str(teacher / "model.safetensors")),
                        ("student", str(student / "model.safetensors"))):
        begin = time.perf_counter()
        metrics[name] = evaluate(name, model, paths, out, env)
        seconds[f"eval {name}"] = time.perf_counter() - begin
    seconds["total"] = time.perf_counter() - start
    stats = json.loads((pseudo / "_stats.json").read_text())
    summary = {"metrics": metrics, "seconds": {k: round(v, 1) for k, v in seconds.items()},
               "student_over_teacher_AP50": metrics["student"]["AP50"] / max(metrics["teacher"]["AP50"], 1e-9),
               "pseudo_label_totals": stats.get("totals", {}), "settings": vars(args)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print()
    print(f"{'model':<10} {'AP':>6} {'AP50':>6} {'AP75':>6}")
    for name, values in metrics.items():
        print(f"{name:<10} {values['AP']:6.3f} {values['AP50']:6.3f} {values['AP75']:6.3f}")
    print(f"student / teacher AP50: {summary['student_over_teacher_AP50']:.2f}; "
          f"total {seconds['total'] / 60:.1f} min")
    return summary


if __name__ == "__main__":
    run(parse_args())
