"""Real GLIP files load on every route; bad files, unknown names and a missing network fail fast, in one line."""

from __future__ import annotations

import collections
import io
import json
import os
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from conftest import FIXTURES_DIR
from glipkit.engine.runtime import load_model
from glipkit.model import weights as weights_io
from glipkit.model.config import from_official_config, glip_t
from glipkit.model.glip import GLIP
from glipkit.model.hub import WeightsUnavailableError
from test_model_api import _official_keys

SMALL_REF = FIXTURES_DIR / "glip_small_ref.safetensors"  # official key names, made by the official code


# ---------------------------------------------------------------------------------------------------- helpers


def _official_relative_position_index(window: int) -> torch.Tensor:
    """Swin's index as the official swint.py computes it (independent of timm)."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    relative[:, :, 0] += window - 1
    relative[:, :, 1] += window - 1
    relative[:, :, 0] *= 2 * window - 1
    return relative.sum(-1)


def _official_cell_anchor(stride: int) -> torch.Tensor:
    """GLIP_SPEC §6.1: side 8 * stride, centred at ((s-1)/2, (s-1)/2), +1 convention; [-28, -28, 35, 35] for 8."""
    center, half = (stride - 1) / 2, (8 * stride - 1) / 2
    return torch.tensor([[center - half, center - half, center + half, center + half]])


def _training_checkpoint(model: dict[str, torch.Tensor], **extra) -> dict:
    """The layout the official trainer saves: DDP-prefixed weights, EMA, AdamW state, scheduler, numpy eval result."""
    params = [v for k, v in model.items() if v.is_floating_point() and "cell_anchors" not in k]
    return {
        "model": {"module." + k: v for k, v in model.items()},
        "model_ema": dict(model),
        "optimizer": {"state": {i: {"step": torch.tensor(300.0), "exp_avg": p, "exp_avg_sq": p}
                                for i, p in enumerate(params)},
                      "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.05,
                                        "amsgrad": False, "params": list(range(len(params)))}]},
        "scheduler": {"milestones": collections.Counter([67500, 80000]), "gamma": 0.1, "warmup_factor": 0.001,
                      "base_lrs": [1e-4], "last_epoch": 300, "_step_count": 301},
        "iteration": 300,
        "eval_result": np.float64(0.466),
        **extra,
    }


def _numpy1_names(path: Path) -> None:
    """Rewrite a torch zip so its pickle names numpy's module as numpy 1.x did (numpy.core.*)."""
    with zipfile.ZipFile(path) as source:
        entries = [(info.filename, source.read(info.filename)) for info in source.infolist()]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as target:
        for name, data in entries:
            target.writestr(name, data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
                            if name.endswith("data.pkl") else data)
    path.write_bytes(buffer.getvalue())


@pytest.fixture(scope="module")
def glip_t_file(tmp_path_factory) -> Path:
    """GLIP-T in the official training layout, zero weights of the official shapes (fixture key list) and the
    real buffers. All float tensors are views of one zero storage, so the file is ~100 MB instead of 3.7 GB."""
    shapes = _official_keys("glip_t")
    zeros = torch.zeros(max(int(np.prod(s)) for s in shapes.values()))
    state = {}
    for key, shape in shapes.items():
        if key.endswith("relative_position_index"):
            state[key] = _official_relative_position_index(7)
        elif key.startswith("rpn.anchor_generator.cell_anchors."):
            state[key] = _official_cell_anchor((8, 16, 32, 64, 128)[int(key.rsplit(".", 1)[1])])
        else:
            state[key] = zeros[: int(np.prod(shape))].view(shape)
    path = tmp_path_factory.mktemp("glip_t") / "glip_tiny_model_o365_goldg_cc_sbu.pth"
    torch.save(_training_checkpoint(state), path)
    return path


@pytest.fixture(scope="module")
def small_official() -> dict[str, torch.Tensor]:
    return load_file(str(SMALL_REF))


def _cli(*args: str, env: dict[str, str] | None = None):
    from glipkit.cli.app import _register_commands, app

    _register_commands()
    return CliRunner().invoke(app, list(args), env=env)


def _one_line_exit_2(result) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


# --------------------------------------------------------------------------------------------- real files load


def test_official_glip_t_training_checkpoint_loads_on_every_route(glip_t_file, tiny_tokenizer_dir, tmp_path):
    assert glip_t_file.stat().st_size < 200e6
    # predict / eval / pseudo-label / train-student: runtime.load_model -> GLIP.from_pretrained
    model = load_model(str(glip_t_file), str(tiny_tokenizer_dir))
    assert model.config.swin == glip_t().swin and model.config.head.num_layers == 6
    assert sum(p.numel() for p in model.state_dict().values()) == 231_780_222
    assert all(not v.any() for k, v in model.state_dict().items() if not k.startswith("head.cls_logits"))
    assert model.tokenizer is not None
    del model
    # models convert, under a umask that is not the usual one: the file gets 0o666 & ~umask
    out = tmp_path / "glip-t.safetensors"
    mask = os.umask(0o027)
    try:
        result = _cli("models", "convert", str(glip_t_file), str(out))
    finally:
        os.umask(mask)
    assert result.exit_code == 0, result.output
    assert out.stat().st_mode & 0o777 == 0o640
    with safe_open(str(out), framework="pt") as handle:
        assert len(list(handle.keys())) == 728
        assert json.loads(handle.metadata()["glipkit_config"])["swin"]["embed_dim"] == 96


def test_numpy_scalars_of_numpy_1_and_2_load_and_code_never_runs(small_official, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    new = tmp_path / "numpy2.pth"
    torch.save(_training_checkpoint(small_official, dtype=np.dtype("float32"), best=np.int64(7)), new)
    old = tmp_path / "numpy1.pth"
    old.write_bytes(new.read_bytes())
    _numpy1_names(old)
    assert b"numpy.core.multiarray" in old.read_bytes() and b"numpy._core" not in old.read_bytes()
    for path in (new, old):
        model = GLIP.from_pretrained(path, load_tokenizer_now=False)
        assert torch.equal(model.head.bias0, small_official["rpn.head.bias0"])

    evil = tmp_path / "evil.pth"
    torch.save(_training_checkpoint(small_official, scheduler=_RunsCode()), evil)
    with pytest.raises(weights_io.CheckpointError) as error:
        GLIP.from_pretrained(evil, load_tokenizer_now=False)
    message = str(error.value)
    assert "(globals posix.system)" in message and "weights_only=False" not in message  # numpy ones allowed
    line = _one_line_exit_2(_cli("models", "convert", str(evil), str(tmp_path / "out.safetensors")))
    assert "posix.system" in line
    assert not (tmp_path / "pwned.txt").exists() and not (tmp_path / "out.safetensors").exists()


def test_head_cls_logits_of_another_width_gets_an_initialisation_not_empty_memory(small_official, tmp_path):
    # Parameters are built on the meta device and filled from the file; the one the file cannot fill is initialised.
    config = from_official_config(json.loads((FIXTURES_DIR / "glip_small_ref_config.json").read_text()))
    state = {**small_official, "rpn.head.cls_logits.weight": torch.zeros(5, 64, 1, 1),
             "rpn.head.cls_logits.bias": torch.zeros(5)}
    torch.save({"model": state}, tmp_path / "other_classes.pth")
    model = GLIP.from_pretrained(tmp_path / "other_classes.pth", config=config, load_tokenizer_now=False)
    weight = model.head.cls_logits.weight
    assert weight.shape == (80, 64, 1, 1) and weight.isfinite().all() and 0.01 < float(weight.detach().std()) < 1
    assert not any(p.is_meta for p in model.parameters())
    assert torch.equal(model.head.bias0, small_official["rpn.head.bias0"])


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def test_official_names_round_trip_for_every_official_key():
    # Messages about official files name their keys as the file does: the inverse mapping must be exact.
    for name in ("glip_t", "glip_l"):
        keys = [k for k in _official_keys(name) if not weights_io.is_dropped_official_key(k)]
        assert len(keys) == {"glip_t": 728, "glip_l": 992}[name]
        for key in keys:
            assert weights_io.glipkit_to_official_key(weights_io.official_to_glipkit_key(key)) == key


# ------------------------------------------------------------------------------------------------ bad files


def _bad_files(directory: Path, small_official: dict[str, torch.Tensor]) -> dict[str, tuple[Path, str]]:
    """name -> (file, a phrase its one-line error must hold)."""
    good = directory / "good.safetensors"
    save_file(small_official, str(good))
    data = good.read_bytes()
    files = {
        "truncated.safetensors": (data[: len(data) // 2], "truncated or damaged .safetensors"),
        "random.safetensors": (bytes(range(256)) * 4, "not a safetensors file"),
        "notes.txt": (b"these are my notes, not weights\n", "text file"),
        "notes.safetensors": (b"version https://git-lfs.github.com/spec/v1\noid sha256:0\n", "Git LFS pointer"),
        "empty.pth": (b"", "empty (0 bytes)"),
    }
    paths = {}
    for name, (content, phrase) in files.items():
        (directory / name).write_bytes(content)
        paths[name] = (directory / name, phrase)
    pth = directory / "whole.pth"
    torch.save({"model": small_official}, pth)
    (directory / "truncated.pth").write_bytes(pth.read_bytes()[:50_000])
    paths["truncated.pth"] = (directory / "truncated.pth", "truncated or damaged torch file")
    mixed = dict(small_official)
    mixed["module.backbone.body.patch_embed.proj.weight"] = mixed.pop("backbone.body.patch_embed.proj.weight")
    torch.save({"model": mixed}, directory / "mixed.pth")
    paths["mixed.pth"] = (directory / "mixed.pth", "mixes key prefixes")
    anchors = dict(small_official)
    anchors["rpn.anchor_generator.cell_anchors.0"] = torch.tensor([[-12.0, -12.0, 19.0, 19.0]])
    torch.save({"model": anchors}, directory / "anchors.pth")
    paths["anchors.pth"] = (directory / "anchors.pth", "cell_anchors.0")
    index = dict(small_official)
    key = "backbone.body.layers.1.blocks.0.attn.relative_position_index"
    index[key] = index[key].flip(0)
    torch.save({"model": index}, directory / "index.pth")
    paths["index.pth"] = (directory / "index.pth", "relative_position_index")
    shapes = dict(small_official)
    shapes["rpn.head.bbox_pred.weight"] = torch.zeros(3, 3)
    del shapes["backbone.fpn.fpn_layer3.bias"]
    torch.save({"model": shapes}, directory / "shapes.pth")
    paths["shapes.pth"] = (directory / "shapes.pth", "backbone.fpn.fpn_layer3.bias")
    return paths


def test_each_bad_file_is_one_line_and_exit_2_on_api_and_cli(small_official, tiny_tokenizer_dir, tmp_path):
    image = tmp_path / "image.png"
    from PIL import Image

    Image.new("RGB", (64, 64)).save(image)
    for name, (path, phrase) in _bad_files(tmp_path, small_official).items():
        with pytest.raises(weights_io.CheckpointError) as error:
            GLIP.from_pretrained(path, load_tokenizer_now=False)
        message = str(error.value)
        assert "\n" not in message and phrase in message and path.name in message, (name, message)
        for args in (["models", "convert", str(path), str(tmp_path / "out.safetensors")],
                     ["predict", str(image), "--prompt", "a dog", "--model", str(path),
                      "--tokenizer", str(tiny_tokenizer_dir), "--device", "cpu"]):
            line = _one_line_exit_2(_cli(*args))
            assert phrase in line and path.name in line, (name, args[0], line)
    # An official file's mismatches are named in the official key names, not glipkit's.
    message = str(pytest.raises(weights_io.CheckpointError, GLIP.from_pretrained, tmp_path / "shapes.pth",
                                load_tokenizer_now=False).value)
    assert "rpn.head.bbox_pred.weight (3, 3)" in message and "fpn.output_convs" not in message


def test_unknown_model_names_list_the_known_ones(tiny_tokenizer_dir):
    for name, hint in (("glip-xl", None), ("GLIP-T", "did you mean 'glip-t'"), ("glip_l", "did you mean 'glip-l'")):
        with pytest.raises(weights_io.CheckpointError) as error:
            GLIP.from_pretrained(name, tokenizer=tiny_tokenizer_dir)
        message = str(error.value)
        assert "glip-t, glip-t-c, glip-t-a, glip-l" in message and "not found" not in message
        assert (hint in message) if hint else "did you mean" not in message
        line = _one_line_exit_2(_cli("models", "download", name))
        assert f"unknown model '{name}'" in line


def test_tokenizer_larger_than_the_vocabulary_is_refused_at_load(tmp_path, small_official):
    from glipkit.demo.vocab import write_vocab

    vocab = small_official["language_backbone.body.model.embeddings.word_embeddings.weight"].shape[0]
    words = ["dog", "person", "car"] + [f"word{i}" for i in range(vocab)]
    big = write_vocab(tmp_path / "big", words)
    with pytest.raises(ValueError, match=f"embeds {vocab}"):
        GLIP.from_pretrained(SMALL_REF, tokenizer=big)
    from PIL import Image

    Image.new("RGB", (64, 64)).save(tmp_path / "image.png")
    line = _one_line_exit_2(_cli("predict", str(tmp_path / "image.png"), "--prompt", "a dog", "--model",
                                 str(SMALL_REF), "--tokenizer", str(big), "--device", "cpu"))
    assert f"embeds {vocab}" in line


# ----------------------------------------------------------------------------------------- no network, no cache

# Cases run by the CLI with an empty Hugging Face cache: (name, extra predict args, whether the weights exist).
NETWORK_CASES = """
import json, os, sys, time
from pathlib import Path
from typer.testing import CliRunner
from glipkit.cli.app import _register_commands, app
import glipkit.engine.runtime, glipkit.model.glip, transformers  # noqa: E401  (imports are not what is timed)

_register_commands()
image, tokenizer_dir, weights_dir = sys.argv[1:4]
results = {}
for network, env in json.loads(sys.argv[4]).items():
    os.environ.update(env)
    for case, extra, weights in (("tokenizer", [], True), ("model", ["--tokenizer", tokenizer_dir], False),
                                 ("both", [], False)):
        if weights:
            os.environ["GLIPKIT_WEIGHTS_DIR"] = weights_dir
        else:
            os.environ.pop("GLIPKIT_WEIGHTS_DIR", None)
        start = time.perf_counter()
        result = CliRunner().invoke(app, ["predict", image, "--prompt", "a dog", "--model", "glip-t", "--device",
                                          "cpu", *extra])
        results[f"{network}/{case}"] = [result.exit_code, result.stderr, time.perf_counter() - start]
    for key in env:
        del os.environ[key]
print(json.dumps(results))
"""


def _refused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _check_network_results(results: dict[str, list], reason: str) -> None:
    for key, (code, stderr, seconds) in results.items():
        lines = stderr.strip().splitlines()
        assert code == 2 and len(lines) == 1, (key, code, stderr)
        line = lines[0]
        assert seconds < 10, (key, seconds)
        assert reason in line, (key, line)
        case = key.split("/")[1]
        if case == "tokenizer":
            assert "tokenizer 'bert-base-uncased'" in line and ".pth" not in line, line
        elif case == "model":
            assert "glip_tiny_model_o365_goldg_cc_sbu.pth" in line and "tokenizer" not in line, line
        else:  # both: the tokenizer first, then what to download
            assert line.index("tokenizer 'bert-base-uncased'") < line.index("glip_tiny_model_o365_goldg_cc_sbu.pth")


@pytest.fixture
def network_inputs(tmp_path, tiny_tokenizer_dir):
    from PIL import Image

    Image.new("RGB", (64, 64)).save(tmp_path / "image.png")
    weights = tmp_path / "weights"
    weights.mkdir()
    # Present but never read: the tokenizer is resolved first (this is not even a checkpoint).
    (weights / "glip_tiny_model_o365_goldg_cc_sbu.pth").write_text("not read\n")
    return [str(tmp_path / "image.png"), str(tiny_tokenizer_dir), str(weights)]


def test_no_network_without_hf_hub_offline_fails_in_seconds_tokenizer_first(network_inputs, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE") and "PROXY" not in k.upper()
           and k not in ("GLIPKIT_TOKENIZER", "GLIPKIT_WEIGHTS_DIR", "HF_ENDPOINT")}
    env.update(HF_HOME=str(tmp_path / "hf"), PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    networks = {"refused": {"HF_ENDPOINT": f"http://127.0.0.1:{_refused_port()}"},
                "unroutable-proxy": {"HF_ENDPOINT": "https://huggingface.co", "HTTPS_PROXY": "http://10.255.255.1:3128"}}
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", NETWORK_CASES, *network_inputs, json.dumps(networks)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(results) == 6
    _check_network_results({k: v for k, v in results.items() if k.startswith("refused")}, "Connection refused")
    _check_network_results({k: v for k, v in results.items() if k.startswith("unroutable")}, "via proxy")
    print({k: round(v[2], 2) for k, v in results.items()}, f"process {time.perf_counter() - start:.1f} s")


def test_no_network_with_hf_hub_offline_fails_at_once_tokenizer_first(network_inputs, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("GLIPKIT_TOKENIZER", raising=False)
    image, tokenizer_dir, weights_dir = network_inputs
    results = {}
    for case, extra, weights in (("tokenizer", [], True), ("model", ["--tokenizer", tokenizer_dir], False),
                                 ("both", [], False)):
        if weights:
            monkeypatch.setenv("GLIPKIT_WEIGHTS_DIR", weights_dir)
        else:
            monkeypatch.delenv("GLIPKIT_WEIGHTS_DIR", raising=False)
        start = time.perf_counter()
        result = _cli("predict", image, "--prompt", "a dog", "--model", "glip-t", "--device", "cpu", *extra)
        results[f"offline/{case}"] = [result.exit_code, result.stderr, time.perf_counter() - start]
    _check_network_results(results, "HF_HUB_OFFLINE is set")
    # The API says the same, tokenizer first.
    with pytest.raises(WeightsUnavailableError, match="tokenizer 'bert-base-uncased'.*glip_tiny_model"):
        GLIP.from_pretrained("glip-t")
