"""Self-training that pays: a teacher on a tiny gold split, students on gold + its pseudo-labels, on a CPU.

    python examples/self_training.py --out demo/self_training

1. synthetic data: a tiny gold train split, an unlabelled pool of captioned images 40x larger, a held-out val split;
2. `glipkit train-student`: the teacher, from scratch on the gold split, to its plateau;
3. `glipkit pseudo-label`: the teacher grounds the pool's captions (every box kept); `glipkit report --gold` judges
   the labels against the pool's hidden boxes (no student sees them);
4. `glipkit train-student`: students, each from the teacher's weights for the same steps: gold only, pseudo only,
   gold + pseudo (`--mix`), and gold + pseudo with each recipe of train-student and all of them;
5. round 2: a gold + pseudo student labels the pool again, and a new student (same start, same steps) learns it;
6. `glipkit models average`: a gold + pseudo student averaged with the gold-only one (weight-space ensembling);
7. `glipkit eval coco`: every model on the held-out val split.

Every step is the real command line (examples/teacher_student.py runs them); OUT/summary.json holds the numbers,
keyed by what each model trained on. examples/README.md has the results and why the gold split is this small.
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

from glipkit.demo.gold import write_gold_coco

# Recipes of train-student, by the name their rows carry (student_gold+pseudo+<name>).
RECIPES = {
    "no-box-loss": ["--pseudo-box-loss", "0"],
    "score-weights": ["--pseudo-score-weights"],
    "pseudo-negatives": ["--pseudo-negatives"],
    "pack-negative-captions": ["--pack-negative-captions"],
}
RECIPES["all"] = [flag for flags in RECIPES.values() for flag in flags]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo/self_training", help="working directory")
    parser.add_argument("--train-images", type=int, default=30, help="gold train images (the teacher's)")
    parser.add_argument("--val-images", type=int, default=80, help="held-out gold val images")
    parser.add_argument("--shards", type=int, default=4, help="unlabelled shards")
    parser.add_argument("--per-shard", type=int, default=300, help="images per unlabelled shard")
    parser.add_argument("--teacher-steps", type=int, default=2000)
    parser.add_argument("--teacher-schedule", default="constant",
                        help="LR schedule of the teacher (constant: trained to its plateau on the gold split)")
    parser.add_argument("--student-steps", type=int, default=800, help="steps of every student (from the teacher)")
    parser.add_argument("--student-schedule", default="step", help="LR schedule of the students (GLIP's step)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--lang-lr", type=float, default=1e-4)
    parser.add_argument("--mix", default="gold=1,pseudo=1", help="sampling ratios of the gold + pseudo students")
    parser.add_argument("--prompt-mode", default="caption",
                        help="pseudo-label's prompts: caption (each image's caption: its noun phrases are grounded) "
                             "or classes (the gold split's class names)")
    parser.add_argument("--pseudo-min-score", type=float, default=0.3, help="load-time filter of pseudo boxes")
    parser.add_argument("--pseudo-agnostic-nms", type=float, default=None,
                        help="load-time NMS across phrases (default off; 0.5 in the classes-prompt run)")
    parser.add_argument("--students", default="gold,pseudo,gold+pseudo",
                        help="students trained on each of these without recipes (of gold, pseudo, gold+pseudo)")
    parser.add_argument("--recipes", default=",".join(RECIPES),
                        help=f"recipes run one by one on gold + pseudo (of {', '.join(RECIPES)}; '' for none)")
    parser.add_argument("--average", default="student_gold+pseudo",
                        help="student averaged with the gold-only one ('' for none)")
    parser.add_argument("--alpha", type=float, default=0.5, help="weight of the --average student in the average")
    parser.add_argument("--round2", default="student_gold+pseudo",
                        help="gold + pseudo student that labels the pool again for a round-2 student ('' for none)")
    parser.add_argument("--image-size", type=int, default=96, help="short side for training and evaluation")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per command (OMP_NUM_THREADS)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    trained = {f"student_{data}" for data in filter(None, args.students.split(","))}
    trained |= {f"student_gold+pseudo+{recipe}" for recipe in filter(None, args.recipes.split(","))}
    for option, name in (("--average", args.average), ("--round2", args.round2)):
        if name and name not in trained:
            parser.error(f"{option} {name}: no such student is trained (see --students and --recipes)")
    if args.average and "student_gold" not in trained:
        parser.error("--average needs student_gold (--students gold,...)")
    return args


def train(out: Path, model: str, steps: int, schedule: str, args: argparse.Namespace, paths: dict[str, Path],
          *data: str, env: dict[str, str]) -> float:
    """One `train-student` run (the teacher's recipe) on `data`; returns its seconds."""
    return glipkit(
        "train-student", "--out", str(out), "--model", model, "--tokenizer", str(paths["vocab"]),
        *model_options(args), "--steps", str(steps), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
        "--lang-lr", str(args.lang_lr), "--schedule", schedule, "--warmup", str(max(1, steps // 20)),
        "--seed", str(args.seed), "--log-every", "20", "--save-every", "0", "--workers", str(args.workers),
        "--device", "cpu", "--no-progress", *data, env=env)


def label(model: str, out: Path, args: argparse.Namespace, paths: dict[str, Path], env: dict[str, str]) -> float:
    """`pseudo-label` of the unlabelled pool by `model` (every post-processed box kept); returns its seconds."""
    prompts = ["--prompt-mode", args.prompt_mode]
    if args.prompt_mode == "classes":
        prompts += ["--classes", str(paths["train"])]
    return glipkit(
        "pseudo-label", "--shards", str(paths["shards"]), "--out", str(out), "--model", model,
        "--tokenizer", str(paths["vocab"]), *prompts, "--preset", "none", "--batch-size", "8", "--workers", "0",
        "--device", "cpu", "--no-progress", env=env)


def judge(labels: Path, gold: Path, args: argparse.Namespace, env: dict[str, str]) -> dict[str, float]:
    """`glipkit report --gold` of pseudo-labels against the pool's hidden gold, at the students' score filter."""
    glipkit("report", str(labels), "--gold", str(gold), "--out", str(labels.parent / f"report_{labels.name}"),
            env=env)
    report = json.loads((labels.parent / f"report_{labels.name}" / "report.json").read_text())["gold"]
    named, boxes = (min(report[curve], key=lambda r: abs(r["threshold"] - args.pseudo_min_score))
                    for curve in ("curve", "any_name_curve"))
    return {"threshold": named["threshold"], "precision": named["precision"], "recall": named["recall"],
            "precision_any_name": boxes["precision"], "recall_any_name": boxes["recall"], "AP50": report["AP50"]}


def run(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    paths = make_data(out, args)
    gold = ["--gold", str(paths["train"]), "--gold-images", str(paths["train"].parent / "images")]
    pseudo_dir = out / "pseudo"
    pseudo_filters = ["--pseudo-min-score", str(args.pseudo_min_score)]
    if args.pseudo_agnostic_nms is not None:
        pseudo_filters += ["--pseudo-agnostic-nms", str(args.pseudo_agnostic_nms)]
    pseudo = ["--pseudo", str(pseudo_dir), *pseudo_filters]
    seconds: dict[str, float] = {"data": time.perf_counter() - start}
    models = {"untrained": STUDENT_PRESET}

    seconds["teacher"] = train(out / "teacher", STUDENT_PRESET, args.teacher_steps, args.teacher_schedule, args, paths,
                               *gold, env=env)
    teacher = str(out / "teacher" / "model.safetensors")
    models["teacher"] = teacher
    seconds["pseudo-label"] = label(teacher, pseudo_dir, args, paths, env)
    # The pool's hidden gold (the demo shards' json), for judging the pseudo-labels only: no student sees it.
    pool_gold = write_gold_coco(sorted(paths["shards"].glob("*.tar")), out / "pool_gold.json")
    quality = {"teacher": judge(pseudo_dir, pool_gold, args, env)}

    base = {"gold": gold, "pseudo": pseudo, "gold+pseudo": [*gold, *pseudo, "--mix", args.mix]}
    students = {f"student_{data}": base[data] for data in filter(None, args.students.split(","))}
    for recipe in filter(None, args.recipes.split(",")):
        students[f"student_gold+pseudo+{recipe}"] = [*base["gold+pseudo"], *RECIPES[recipe]]
    for name, data in students.items():
        seconds[name] = train(out / name, teacher, args.student_steps, args.student_schedule, args, paths, *data,
                              env=env)
        models[name] = str(out / name / "model.safetensors")
    if args.round2:
        # Round 2: a round-1 student is the next teacher; its student starts where every student starts (the
        # teacher's weights) and trains as many steps with the same data options, so the row compares labels.
        pseudo2_dir = out / "pseudo_round2"
        seconds["pseudo-label round 2"] = label(models[args.round2], pseudo2_dir, args, paths, env)
        quality[args.round2] = judge(pseudo2_dir, pool_gold, args, env)
        name = f"round2({args.round2})"
        data = [arg if arg != str(pseudo_dir) else str(pseudo2_dir) for arg in students[args.round2]]
        seconds[name] = train(out / "round2", teacher, args.student_steps, args.student_schedule, args, paths, *data,
                              env=env)
        models[name] = str(out / "round2" / "model.safetensors")
    if args.average:
        name = f"average({args.average},student_gold)"
        averaged = out / "average.safetensors"
        seconds[name] = glipkit("models", "average", models[args.average], models["student_gold"],
                                "--alpha", str(args.alpha), "--out", str(averaged), env=env)
        models[name] = str(averaged)

    metrics = {}
    for name, model in models.items():
        begin = time.perf_counter()
        metrics[name] = evaluate(name, model, paths, out, env)
        seconds[f"eval {name}"] = time.perf_counter() - begin
    seconds["total"] = time.perf_counter() - start
    teacher_ap50 = max(metrics["teacher"]["AP50"], 1e-9)
    gold_ap50 = max(metrics["student_gold"]["AP50"], 1e-9) if "student_gold" in metrics else None
    rows = {name: {**values, "seconds": round(seconds.get(name, 0.0), 1),
                   "AP50_over_teacher": round(values["AP50"] / teacher_ap50, 3),
                   "AP50_over_gold_only": round(values["AP50"] / gold_ap50, 3) if gold_ap50 else None}
            for name, values in metrics.items()}
    stats = json.loads((pseudo_dir / "_stats.json").read_text())
    summary = {"metrics": rows, "seconds": {k: round(v, 1) for k, v in seconds.items()},
               "pseudo_label_totals": stats.get("totals", {}), "pseudo_label_quality": quality,
               "settings": vars(args)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print()
    print(f"{'model':<50} {'AP':>6} {'AP50':>6} {'AP75':>6} {'/teacher':>9} {'/gold':>6}")
    for name, values in rows.items():
        print(f"{name:<50} {values['AP']:6.3f} {values['AP50']:6.3f} {values['AP75']:6.3f} "
              f"{values['AP50_over_teacher']:9.2f} {values['AP50_over_gold_only'] or float('nan'):6.2f}")
    for labeller, values in quality.items():
        print(f"pseudo-labels of {labeller} at score >= {values['threshold']:.2f}: "
              f"precision {values['precision']:.3f}, recall {values['recall']:.3f} (boxes whatever they name: "
              f"{values['precision_any_name']:.3f}, {values['recall_any_name']:.3f})")
    print(f"total {seconds['total'] / 60:.1f} min")
    return summary


if __name__ == "__main__":
    run(parse_args())
