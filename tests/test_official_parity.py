"""Numerical parity with the official GLIP code, on fixtures it produced (../shared/fixtures, glip_small_ref.md).

Every `out.*` tensor of `<prefix>_io.safetensors` is compared with the matching glipkit intermediate. Run on another
fixture of the same format with `pytest tests/test_official_parity.py --glip-fixture PREFIX`.
`capture`, `intermediate_failures` and `detection_problems` also serve benchmarks/gpu_first_light.py on a GPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from glipkit.model.config import from_official_config
from glipkit.model.glip import GLIP

ABS_TOL = 1e-4  # features and logits: absolute, or relative to the tensor's largest magnitude
REL_TOL = 1e-4
BOX_TOL = 1e-3  # detections: pixels
SCORE_TOL = 1e-5
LEVELS = ("p3", "p4", "p5", "p6", "p7")


def _files(prefix: Path) -> tuple[Path, Path, Path]:
    files = (Path(f"{prefix}.safetensors"), Path(f"{prefix}_io.safetensors"), Path(f"{prefix}_config.json"))
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        pytest.fail(f"parity fixture files missing: {missing}")
    return files


def _to_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if dataclasses.is_dataclass(value):
        return type(value)(**{f.name: _to_cpu(getattr(value, f.name)) for f in dataclasses.fields(value)})
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    return value


def capture(prefix: Path, device: str | torch.device = "cpu", precision: str = "fp32", speed=None) -> dict:
    """Load the fixture model through the official-checkpoint loader, run it once on `device` (`bf16`: under
    autocast; `speed`: a SpeedConfig), capture every intermediate; all returned on the CPU."""
    device = torch.device(device)
    weights, io_file, config_file = _files(prefix)
    config = from_official_config(json.loads(config_file.read_text()))
    if speed is not None:
        config.speed = speed
    model = GLIP.from_pretrained(weights, config=config, load_tokenizer_now=False, device=device)
    io = load_file(str(io_file))

    captured: dict[str, torch.Tensor] = {}
    hooks = []

    def keep(name):
        def hook(module, inputs, output):
            captured[name] = output

        return hook

    hooks.append(model.language_backbone.bert.embeddings.register_forward_hook(keep("bert_embeddings")))
    hooks.append(model.head.token_projection.register_forward_pre_hook(
        lambda module, inputs: captured.__setitem__("proj_tokens_input", inputs[0])))
    for i, layer in enumerate(model.head.tower):
        for part in ("fusion", "language_layer", "dyconv"):
            if getattr(layer, part, None) is not None:
                hooks.append(getattr(layer, part).register_forward_hook(keep(f"layer{i}.{part}")))

    images = io["input.images"].to(device)
    image_sizes = [tuple(int(v) for v in hw) for hw in io["input.image_sizes"]]
    autocast = contextlib.nullcontext() if precision == "fp32" else torch.autocast(device.type, torch.bfloat16)
    with torch.no_grad(), autocast:
        stages = model.backbone(images)
        features = model.fpn(stages[1:])
        language = model.encode_text(io["input.input_ids"].to(device), io["input.attention_mask"].to(device))
        outputs = model.fuse_and_predict(features, language)
        cls_logits = [model.head.cls_logits(f) for f in outputs.tower_features]
        positive_maps = [io[f"input.positive_map.img{b}"] for b in range(images.shape[0])]
        detections = model.detect(outputs, features, positive_maps, image_sizes, return_candidates=True)
        anchors = model.anchors(features)
    for hook in hooks:
        hook.remove()
    return _to_cpu(dict(io=io, stages=stages, features=features, language=language, outputs=outputs,
                        cls_logits=cls_logits, detections=detections, anchors=anchors, captured=captured))


@pytest.fixture(scope="module")
def run(glip_fixture_prefix: Path):
    return capture(glip_fixture_prefix)


def _tensor_for(name: str, r: dict) -> torch.Tensor:
    """The glipkit tensor that corresponds to fixture tensor `name`."""
    cap, out = r["captured"], r["outputs"]
    if name == "out.lang.bert_embeddings":
        return cap["bert_embeddings"]
    if name == "out.lang.hidden":
        return r["language"].hidden
    if name == "out.lang.embedded":
        return r["language"].embedded
    if m := re.fullmatch(r"out\.backbone\.stage([2-5])", name):
        return r["stages"][int(m.group(1)) - 2]
    if m := re.fullmatch(r"out\.fpn\.(p[3-7])", name):
        return r["features"][LEVELS.index(m.group(1))]
    if m := re.fullmatch(r"out\.dyhead\.layer(\d+)\.fusion\.visual\.(p[3-7])", name):
        return cap[f"layer{m.group(1)}.fusion"][0][LEVELS.index(m.group(2))]
    if m := re.fullmatch(r"out\.dyhead\.layer(\d+)\.fusion\.lang", name):
        return cap[f"layer{m.group(1)}.fusion"][1]
    if m := re.fullmatch(r"out\.dyhead\.layer(\d+)\.bert\.lang", name):
        return cap[f"layer{m.group(1)}.language_layer"]
    if m := re.fullmatch(r"out\.dyhead\.layer(\d+)\.dyconv\.visual\.(p[3-7])", name):
        return cap[f"layer{m.group(1)}.dyconv"][LEVELS.index(m.group(2))]
    if name == "out.head.proj_tokens_input":
        return cap["proj_tokens_input"]
    if name == "out.head.proj_tokens":
        return out.proj_tokens
    if name == "out.head.proj_tokens_bias":
        return out.proj_tokens_bias
    if m := re.fullmatch(r"out\.head\.(bbox_reg|centerness|dot_product_logits|cls_logits)\.(p[3-7])", name):
        level = LEVELS.index(m.group(2))
        if m.group(1) == "cls_logits":
            return r["cls_logits"][level]
        return getattr(out, m.group(1))[level]
    if m := re.fullmatch(r"out\.anchors\.(p[3-7])", name):
        return r["anchors"][LEVELS.index(m.group(1))]
    raise KeyError(name)


def _detection_names(io: dict) -> list[str]:
    return sorted({n.rsplit(".", 1)[0] for n in io if re.match(r"out\.(det|prenms)\.img\d+\.", n)})


def test_every_tensor_of_the_fixture_has_a_glipkit_counterpart(run):
    detection_prefixes = tuple(n + "." for n in _detection_names(run["io"]))
    unmapped = []
    for name in run["io"]:
        if not name.startswith("out.") or name.startswith(detection_prefixes):
            continue
        try:
            _tensor_for(name, run)
        except KeyError:
            unmapped.append(name)
    assert not unmapped, f"fixture tensors with no glipkit counterpart: {unmapped}"


def intermediate_failures(run: dict) -> tuple[list[str], int]:
    """The fixture tensors that `run` does not match within the tolerances, and how many were compared."""
    io = run["io"]
    detection_prefixes = tuple(n + "." for n in _detection_names(io))
    failures, compared = [], 0
    for name in sorted(io):
        if not name.startswith("out.") or name.startswith(detection_prefixes):
            continue
        reference = io[name].float()
        ours = _tensor_for(name, run).detach().float()
        if ours.shape != reference.shape:
            failures.append(f"{name}: shape {tuple(ours.shape)} vs official {tuple(reference.shape)}")
            continue
        error = (ours - reference).abs().max().item()
        scale = reference.abs().max().item()
        if not (error <= ABS_TOL or error <= REL_TOL * scale):
            failures.append(f"{name}: max abs error {error:.3g} (official max |x| {scale:.3g})")
        compared += 1
    return failures, compared


def test_intermediate_tensors_match_official(run):
    failures, compared = intermediate_failures(run)
    assert compared > 0
    assert not failures, "tensors differing from the official code:\n" + "\n".join(failures)


def _match_sets(name: str, boxes, scores, labels, ref_boxes, ref_scores, ref_labels) -> list[str]:
    """Match detections to the reference one-to-one: same label, score and box within tolerance."""
    problems = []
    if len(scores) != len(ref_scores):
        problems.append(f"{name}: {len(scores)} detections vs official {len(ref_scores)}")
    used = torch.zeros(len(scores), dtype=torch.bool)
    unmatched = 0
    for box, score, label in zip(ref_boxes, ref_scores, ref_labels):
        close = (~used) & (labels == label) & ((scores - score).abs() <= SCORE_TOL)
        close &= (boxes - box).abs().max(dim=1).values <= BOX_TOL
        index = torch.nonzero(close).flatten()
        if len(index) == 0:
            unmatched += 1
            continue
        best = index[(scores[index] - score).abs().argmin()]
        used[best] = True
    if unmatched:
        problems.append(f"{name}: {unmatched} of {len(ref_scores)} official detections have no match")
    return problems


def detection_problems(run: dict) -> list[str]:
    """How `run`'s detections and NMS candidates differ from the fixture's, as sets within the tolerances."""
    io = run["io"]
    problems = []
    for name in _detection_names(io):
        kind, image = name.split(".")[1], int(name.split(".")[2][3:])
        det = run["detections"][image]
        ours = det if kind == "det" else det.candidates
        # glipkit labels are 0-based phrase indices; the official ones are 1-based.
        problems += _match_sets(name, ours.boxes, ours.scores, ours.labels + 1,
                                io[f"{name}.boxes"], io[f"{name}.scores"], io[f"{name}.labels"])
    return problems


def test_detections_and_candidates_match_official_as_sets(run):
    assert _detection_names(run["io"]), "fixture has no out.det / out.prenms tensors"
    problems = detection_problems(run)
    assert not problems, "\n".join(problems)
