"""Self-training that pays? A teacher on a small gold split, students on gold + its pseudo-labels, on a CPU.

    python examples/self_training.py --out demo/self_training

1. synthetic data: a small gold train split, an unlabelled pool of shards several times larger, a held-out val split;
2. `glipkit train-student`: the teacher, from scratch on the gold split;
3. `glipkit pseudo-label`: the teacher labels the pool (class prompt, every box >= 0.05 kept);
4. `glipkit train-student`: students, each from the teacher's weights for the same steps: gold only, pseudo only,
   gold + pseudo (`--mix`), and gold + pseudo with each recipe of train-student and all of them;
5. `glipkit models average`: the best recipe's student averaged with the gold-only one (weight-space ensembling);
6. `glipkit eval coco`: every model on the held-out val split.

Every step is the real command line (examples/teacher_student.py runs them); OUT/summary.json holds the numbers,
keyed by what each model trained on.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from teacher_student import STUDENT_PRESET, evaluate, glipkit, make_data, model_options

# Recipes of train-student, by the name their rows carry (student_gold+pseudo+<name>).
RECIPES = {
    "no-box-loss": ["--pseudo-box-loss", "0"],
    "score-weights": ["--pseudo-score-weights"],
    "pseudo-negatives": ["--pseudo-negatives"],
}
RECIPES["all"] = [flag for flags in RECIPES.values() for flag in flags]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo/self_training", help="working directory")
    parser.add_argument("--train-images", type=int, default=300, help="gold train images (the teacher's)")
    parser.add_argument("--val-images", type=int, default=80, help="held-out gold val images")
    parser.add_argument("--shards", type=int, default=4, help="unlabelled shards")
    parser.add_argument("--per-shard", type=int, default=300, help="images per unlabelled shard")
    parser.add_argument("--teacher-steps", type=int, default=600)
    parser.add_argument("--student-steps", type=int, default=300, help="steps of every student (from the teacher)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--lang-lr", type=float, default=1e-4)
    parser.add_argument("--mix", default="gold=1,pseudo=1", help="sampling ratios of the gold + pseudo students")
    parser.add_argument("--pseudo-min-score", type=float, default=0.3, help="load-time filter of pseudo boxes")
    parser.add_argument("--pseudo-agnostic-nms", type=float, default=0.5)
    parser.add_argument("--recipes", default=",".join(RECIPES),
                        help=f"recipes run one by one on gold + pseudo (of {', '.join(RECIPES)}; '' for none)")
    parser.add_argument("--average", default="all",
                        help="recipe whose student is averaged with the gold-only one ('' for none)")
    parser.add_argument("--alpha", type=float, default=0.5, help="weight of the recipe student in the average")
    parser.add_argument("--image-size", type=int, default=96, help="short side for training and evaluation")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per command (OMP_NUM_THREADS)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def train(out: Path, model: str, steps: int, args: argparse.Namespace, paths: dict[str, Path], *data: str,
          env: dict[str, str]) -> float:
    """One `train-student` run (the teacher's recipe) on `data`; returns its seconds."""
    return glipkit(
        "train-student", "--out", str(out), "--model", model, "--tokenizer", str(paths["vocab"]),
        *model_options(args), "--steps", str(steps), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
        "--lang-lr", str(args.lang_lr), "--warmup", str(max(1, steps // 20)), "--seed", str(args.seed),
        "--log-every", "20", "--save-every", "0", "--workers", str(args.workers), "--device", "cpu",
        "--no-progress", *data, env=env)


def run(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    paths = make_data(out, args)
    gold = ["--gold", str(paths["train"]), "--gold-images", str(paths["train"].parent / "images")]
    pseudo_dir = out / "pseudo"
    pseudo = ["--pseudo", str(pseudo_dir), "--pseudo-min-score", str(args.pseudo_min_score),
              "--pseudo-agnostic-nms", str(args.pseudo_agnostic_nms)]
    seconds: dict[str, float] = {"data": time.perf_counter() - start}
    models = {"untrained": STUDENT_PRESET}

    seconds["teacher"] = train(out / "teacher", STUDENT_PRESET, args.teacher_steps, args, paths, *gold, env=env)
    teacher = str(out / "teacher" / "model.safetensors")
    models["teacher"] = teacher
    seconds["pseudo-label"] = glipkit(
        "pseudo-label", "--shards", str(paths["shards"]), "--out", str(pseudo_dir), "--model", teacher,
        "--tokenizer", str(paths["vocab"]), "--prompt-mode", "classes", "--classes", str(paths["train"]),
        "--preset", "none", "--batch-size", "8", "--workers", "0", "--device", "cpu", "--no-progress", env=env)

    students = {"student_gold": gold, "student_pseudo": pseudo, "student_gold+pseudo": [*gold, *pseudo, "--mix",
                                                                                          args.mix]}
    for recipe in filter(None, args.recipes.split(",")):
        students[f"student_gold+pseudo+{recipe}"] = [*students["student_gold+pseudo"], *RECIPES[recipe]]
    for name, data in students.items():
        seconds[name] = train(out / name, teacher, args.student_steps, args, paths, *data, env=env)
        models[name] = str(out / name / "model.safetensors")
    if args.average:
        name = f"average(student_gold+pseudo+{args.average},student_gold)"
        averaged = out / "average.safetensors"
        seconds[name] = glipkit("models", "average", models[f"student_gold+pseudo+{args.average}"],
                                models["student_gold"], "--alpha", str(args.alpha), "--out", str(averaged), env=env)
        models[name] = str(averaged)

    metrics = {}
    for name, model in models.items():
        begin = time.perf_counter()
        metrics[name] = evaluate(name, model, paths, out, env)
        seconds[f"eval {name}"] = time.perf_counter() - begin
    seconds["total"] = time.perf_counter() - start
    teacher_ap50 = max(metrics["teacher"]["AP50"], 1e-9)
    gold_ap50 = max(metrics["student_gold"]["AP50"], 1e-9)
    rows = {name: {**values, "seconds": round(seconds.get(name, 0.0), 1),
                   "AP50_over_teacher": round(values["AP50"] / teacher_ap50, 3),
                   "AP50_over_gold_only": round(values["AP50"] / gold_ap50, 3)} for name, values in metrics.items()}
    stats = json.loads((pseudo_dir / "_stats.json").read_text())
    summary = {"metrics": rows, "seconds": {k: round(v, 1) for k, v in seconds.items()},
               "pseudo_label_totals": stats.get("totals", {}), "settings": vars(args)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print()
    print(f"{'model':<50} {'AP':>6} {'AP50':>6} {'AP75':>6} {'/teacher':>9} {'/gold':>6}")
    for name, values in rows.items():
        print(f"{name:<50} {values['AP']:6.3f} {values['AP50']:6.3f} {values['AP75']:6.3f} "
              f"{values['AP50_over_teacher']:9.2f} {values['AP50_over_gold_only']:6.2f}")
    print(f"total {seconds['total'] / 60:.1f} min")
    return summary


if __name__ == "__main__":
    run(parse_args())
