"""ODinW: the 13 datasets GLIP evaluates on (configs/odinw_13), found under a root directory, and averaging.

Each dataset is a COCO-format split: an annotation file and an image directory, relative to the root
(GLIP's `DATASET/` folder, laid out by its odinw download script). The split is the one GLIP tests on
(`DATASETS.TEST`: "val", "minival" for EgoHands and VehiclesOpenImages). GLIP's zero-shot command sets
`USE_OVERRIDE_CATEGORY` (prompt with the config's category names instead of the file's) and
`USE_CAPTION_PROMPT` (per-class prefix/name/suffix where the config has one); both are recorded here.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from glipkit.text.prompt_file import ClassPrompt, PromptTable, load_prompt_file, parse_prompts, read_json_or_yaml


@dataclass(frozen=True)
class OdinwDataset:
    """One evaluation split: where it lives (relative to a root) and how GLIP prompts for it."""

    name: str
    ann_file: str
    img_dir: str
    category_names: Mapping[int, str] | None = None  # GLIP OVERRIDE_CATEGORY: json category id -> prompt name
    prompts: PromptTable | None = None  # GLIP CAPTION_PROMPT or a user prompt file


def _prompt_list(entries: Sequence[tuple[str, str, str]]) -> PromptTable:
    return PromptTable(by_name=None, by_position=tuple(ClassPrompt(*e) for e in entries), source="GLIP config")


def _names(*names: str) -> dict[int, str]:
    return {i: n for i, n in enumerate(names, start=1)}


# Paths, test splits and category names from GLIP's configs/odinw_13/*.yaml (REGISTER / TEST /
# OVERRIDE_CATEGORY). Caption prompts for Aquarium, Packages and pothole are from configs/odinw_35, whose
# registered paths are the same.
ODINW_13: tuple[OdinwDataset, ...] = (
    OdinwDataset(
        "AerialMaritimeDrone_large",
        "odinw/AerialMaritimeDrone/large/valid/annotations_without_background.json",
        "odinw/AerialMaritimeDrone/large/valid",
        _names("boat", "car", "dock", "jetski", "lift"),
    ),
    OdinwDataset(
        "Aquarium",
        "odinw/Aquarium/Aquarium Combined.v2-raw-1024.coco/valid/annotations_without_background.json",
        "odinw/Aquarium/Aquarium Combined.v2-raw-1024.coco/valid",
        _names("fish", "jellyfish", "penguin", "puffin", "shark", "starfish", "stingray"),
        _prompt_list(
            [
                (" ", "fish", ""),  # the official prompt really starts with a space
                ("", "jellyfish", ""),
                ("", "penguin", " , which is black and white"),
                ("", "puffin", " with orange beaks "),
                ("", "shark", ""),
                ("", "starfish", ""),
                ("", "stingray", " which is flat and round"),
            ]
        ),
    ),
    OdinwDataset(
        "CottontailRabbits",
        "odinw/CottontailRabbits/valid/annotations_without_background.json",
        "odinw/CottontailRabbits/valid",
        _names("Cottontail-Rabbit"),
    ),
    OdinwDataset(
        "EgoHands_generic",
        "odinw/EgoHands/generic/mini_val/annotations_without_background.json",
        "odinw/EgoHands/generic/mini_val",
        _names("hand"),
    ),
    OdinwDataset(
        "NorthAmericaMushrooms",
        "odinw/NorthAmericaMushrooms/North American Mushrooms.v1-416x416.coco/valid/annotations_without_background.json",
        "odinw/NorthAmericaMushrooms/North American Mushrooms.v1-416x416.coco/valid",
        _names("flat mushroom", "yellow mushroom"),
    ),
    OdinwDataset(
        "Packages",
        "odinw/Packages/Raw/valid/annotations_without_background.json",
        "odinw/Packages/Raw/valid",
        _names("package"),
        _prompt_list([("there is a ", "package", " on the porch")]),
    ),
    OdinwDataset(
        "PascalVOC",
        "odinw/PascalVOC/valid/annotations_without_background.json",
        "odinw/PascalVOC/valid",
        _names(
            "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
            "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
        ),
    ),
    OdinwDataset(
        "pistols",
        "odinw/pistols/export/val_annotations_without_background.json",
        "odinw/pistols/export",
        _names("pistol"),
    ),
    OdinwDataset(
        "pothole",
        "odinw/pothole/valid/annotations_without_background.json",
        "odinw/pothole/valid",
        _names("pothole"),
        _prompt_list([("there are some ", "holes", " on the road")]),
    ),
    OdinwDataset(
        "Raccoon",
        "odinw/Raccoon/Raccoon.v2-raw.coco/valid/annotations_without_background.json",
        "odinw/Raccoon/Raccoon.v2-raw.coco/valid",
        _names("raccoon"),
    ),
    OdinwDataset(
        "ShellfishOpenImages",
        "odinw/ShellfishOpenImages/raw/valid/annotations_without_background.json",
        "odinw/ShellfishOpenImages/raw/valid",
        _names("Crab", "Lobster", "Shrimp"),
    ),
    OdinwDataset(
        "thermalDogsAndPeople",
        "odinw/thermalDogsAndPeople/valid/annotations_without_background.json",
        "odinw/thermalDogsAndPeople/valid",
        _names("dog", "person"),
    ),
    OdinwDataset(
        "VehiclesOpenImages",
        "odinw/VehiclesOpenImages/416x416/mini_val/annotations_without_background.json",
        "odinw/VehiclesOpenImages/416x416/mini_val",
        _names("Ambulance", "Bus", "Car", "Motorcycle", "Truck"),
    ),
)


@dataclass(frozen=True)
class ResolvedDataset:
    """A dataset whose annotation file and image directory exist under the root."""

    spec: OdinwDataset
    ann_file: Path
    img_dir: Path

    @property
    def name(self) -> str:
        return self.spec.name


def select_datasets(names: Sequence[str] | None, datasets: Sequence[OdinwDataset] = ODINW_13) -> list[OdinwDataset]:
    """The named datasets (case-insensitive), in the given order; all of them when `names` is None."""
    if names is None:
        return list(datasets)
    by_name = {d.name.lower(): d for d in datasets}
    unknown = [n for n in names if n.lower() not in by_name]
    if unknown:
        raise ValueError(f"unknown ODinW dataset(s) {unknown}; known: {', '.join(d.name for d in datasets)}")
    return [by_name[n.lower()] for n in names]


def resolve_datasets(root: str | Path, datasets: Sequence[OdinwDataset] = ODINW_13) -> list[ResolvedDataset]:
    """Join each dataset's paths to `root` and check they exist; one error lists every missing path."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"ODinW root directory not found: {root}")
    resolved, missing = [], []
    for d in datasets:
        ann, img = root / d.ann_file, root / d.img_dir
        if not ann.is_file():
            missing.append(f"{d.name}: annotation file {ann}")
        if not img.is_dir():
            missing.append(f"{d.name}: image directory {img}")
        resolved.append(ResolvedDataset(d, ann, img))
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} ODinW path(s) missing under {root} (GLIP's odinw/download_datasets.py lays them out):\n  "
            + "\n  ".join(missing)
        )
    return resolved


def class_prompts(
    dataset: OdinwDataset,
    categories: Sequence[Mapping[str, Any]],
    use_override_names: bool = True,
    use_prompts: bool = True,
) -> list[tuple[int, ClassPrompt]]:
    """(json category id, ClassPrompt) per category sorted by id: what the detection prompt is built from.

    Names come from the annotation file, replaced by the dataset's GLIP names when `use_override_names`;
    per-class prefix/suffix (and name) come from its prompt table when `use_prompts`.
    """
    cats = sorted(categories, key=lambda c: int(c["id"]))
    names = []
    for c in cats:
        name = str(c["name"])
        if use_override_names and dataset.category_names:
            name = dataset.category_names.get(int(c["id"]), name)
        names.append(name)
    if use_prompts and dataset.prompts is not None:
        prompts = dataset.prompts.for_classes(names)
    else:
        prompts = [ClassPrompt("", n, "") for n in names]
    return [(int(c["id"]), p) for c, p in zip(cats, prompts)]


def load_dataset_list(path: str | Path) -> list[OdinwDataset]:
    """Read a user dataset list (json, or yaml with PyYAML): a list of objects with `name`, `ann_file`,
    `img_dir` (relative to the root), and optionally `prompt_file` (relative to the list) or inline `prompts`.
    """
    path = Path(path)
    data = read_json_or_yaml(path, "dataset list")
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of datasets")
    out = []
    for i, entry in enumerate(data):
        if not isinstance(entry, Mapping):
            raise ValueError(f"{path}: entry #{i} is not an object")
        missing = [k for k in ("name", "ann_file", "img_dir") if k not in entry]
        if missing:
            raise ValueError(f"{path}: entry #{i} lacks {', '.join(missing)}")
        prompts = None
        if "prompt_file" in entry:
            prompts = load_prompt_file(path.parent / entry["prompt_file"])
        elif "prompts" in entry:
            prompts = parse_prompts(entry["prompts"], f"{path}: {entry['name']}")
        out.append(OdinwDataset(str(entry["name"]), str(entry["ann_file"]), str(entry["img_dir"]), None, prompts))
    return out


def average_ap(per_dataset_ap: Mapping[str, float]) -> float:
    """Mean AP over datasets, the ODinW summary number.

    Datasets whose AP is undefined (-1, NaN or None: no ground truth, or a failed run) are left out with a
    warning naming them; -1 when none is defined.
    """
    defined = {n: ap for n, ap in per_dataset_ap.items() if ap is not None and not math.isnan(ap) and ap >= 0}
    left_out = [n for n in per_dataset_ap if n not in defined]
    if left_out:
        warnings.warn(f"ODinW average leaves out {left_out}: their AP is undefined", stacklevel=2)
    if not defined:
        return -1.0
    return sum(defined.values()) / len(defined)
