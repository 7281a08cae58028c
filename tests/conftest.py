"""Shared test setup: offline hub, paths to shared fixtures, a tiny WordPiece tokenizer."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# ultralytics (the YOLO export's checker) must not try to pip-install its optional requirements during tests.
os.environ.setdefault("YOLO_AUTOINSTALL", "false")
os.environ.setdefault("YOLO_OFFLINE", "1")

import pytest

from glipkit.demo.vocab import PUNCTUATION, write_vocab

SHARED_DIR = Path(__file__).resolve().parents[2] / "shared"
FIXTURES_DIR = SHARED_DIR / "fixtures"

# Words the tiny vocabulary knows: enough for COCO class names and the captions used in tests.
TINY_WORDS = """
a an the of and with on in at to is are two three red green blue yellow white black orange purple
person people man woman child dog cat bird horse car bus truck bicycle motorcycle boat train airplane
circle square triangle star ball cup bottle chair table tree house sky road grass water shape shapes
traffic light fire hydrant stop sign parking meter bench sheep cow elephant bear zebra giraffe
backpack umbrella handbag tie suitcase frisbee skis snowboard sports kite baseball bat glove skateboard
surfboard tennis racket wine glass fork knife spoon bowl banana apple sandwich orange broccoli carrot
hot dog pizza donut cake couch potted plant bed dining toilet tv laptop mouse remote keyboard cell phone
microwave oven toaster sink refrigerator book clock vase scissors teddy hair drier toothbrush big small
photo picture image left right top bottom next near
""".split()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--glip-fixture",
        default=str(FIXTURES_DIR / "glip_small_ref"),
        help="Prefix of an official-GLIP parity fixture (<prefix>.safetensors, <prefix>_io.safetensors, "
        "<prefix>_config.json).",
    )


@pytest.fixture(scope="session")
def glip_fixture_prefix(request: pytest.FixtureRequest) -> Path:
    return Path(request.config.getoption("--glip-fixture"))


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding a small WordPiece vocab that `BertTokenizerFast.from_pretrained` can load."""
    # Without "_" among the punctuation: the token ids, and so the tiny random models' outputs, stay as they were.
    return write_vocab(tmp_path_factory.mktemp("tokenizer"), TINY_WORDS, punctuation=PUNCTUATION.replace("_", ""))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir: Path):
    from transformers import BertTokenizerFast

    tok = BertTokenizerFast.from_pretrained(str(tiny_tokenizer_dir))
    assert tok.convert_tokens_to_ids("dog") != tok.unk_token_id
    return tok


@pytest.fixture(scope="session")
def confident_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path) -> Path:
    """preset:glip-tiny-test saved as a glipkit .safetensors with prior bias 0, so that its random scores pass
    GLIP's 0.05 candidate cut."""
    from glipkit.engine.runtime import load_model

    model = load_model("preset:glip-tiny-test", str(tiny_tokenizer_dir), "cpu")
    model.head.bias0.data.fill_(0.0)
    return model.save_pretrained(tmp_path_factory.mktemp("weights") / "tiny.safetensors")


@pytest.fixture()
def moto_s3(monkeypatch):
    """A moto S3 server on 127.0.0.1 (server mode, as s3fs tests itself) with an empty bucket `bucket`; yields an
    s3fs filesystem pointed at it and the environment that points worker processes and subprocesses at it."""
    pytest.importorskip("s3fs")
    import urllib.request

    import fsspec
    import s3fs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    # moto keeps its buckets in process-wide state that outlives a server: start every test from none.
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=10).close()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "FSSPEC_S3_ENDPOINT_URL": endpoint}  # FSSPEC_S3_*: how worker processes find the endpoint
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": endpoint})
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(endpoint_url=endpoint, key="testing", secret="testing", skip_instance_cache=True)
    fs.mkdir("bucket")
    try:
        yield fs, env
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()
