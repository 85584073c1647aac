"""The embedded Ray and everything it runs stay on 127.0.0.1 (listening and connected).

Covers the test suite's own cluster (``ray_local``), torch.distributed's rendezvous on
it, and ``rayreward evaluate`` started with an empty ``RAY_ADDRESS`` (which means unset).
``rayreward score`` starts Ray the same way (``scoring_session``) and scores through the
same actor pool, so one of the two is run here. ``rayreward train`` is covered by the
Ctrl-C test's resumed run in test_interrupts.py.
"""

from __future__ import annotations

import os
import sys

import pytest

from process_helpers import RAYREWARD, Watcher, command_env, start, tree


def test_empty_ray_address_means_unset(monkeypatch):
    from rayreward.runtime.ray_session import cluster_address, prepare_environment

    monkeypatch.setenv("RAY_ADDRESS", "")
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    assert cluster_address() is None
    prepare_environment(["train"])
    assert "RAY_ADDRESS" not in os.environ
    assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"


def test_an_address_means_joining_without_the_loopback_setting(monkeypatch):
    from rayreward.runtime.ray_session import cluster_address, prepare_environment

    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    prepare_environment(["train"])
    assert cluster_address() == "10.0.0.5:6379"
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ
    monkeypatch.delenv("RAY_ADDRESS")
    prepare_environment(["train", "--address", "10.0.0.5:6379"])
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ
    assert cluster_address("auto") == "auto"


@pytest.fixture
def _ship_this_module_by_value():
    # The training function below runs on Ray workers, which cannot import this test module.
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def _rendezvous_sockets(config):
    # Runs on each worker with the process group up: this process's sockets.
    import psutil
    import ray.train
    import torch
    import torch.distributed as dist

    total = torch.ones(1)
    dist.all_reduce(total)
    sockets = [(c.status, c.laddr.ip, c.raddr.ip if c.raddr else "")
               for c in psutil.Process().net_connections(kind="inet")
               if c.status in (psutil.CONN_LISTEN, psutil.CONN_ESTABLISHED)]
    # Result.metrics is only kept for a report that carries a checkpoint.
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, "done"), "w") as f:
            f.write("1")
        ray.train.report({"sockets": sockets, "world": float(total.item())},
                         checkpoint=ray.train.Checkpoint.from_directory(folder))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_suite_cluster_and_torch_rendezvous_listen_on_loopback_only(ray_local, tmp_path, _ship_this_module_by_value):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from rayreward.run.loopback import loopback_torch_config
    from rayreward.runtime.ray_session import on_loopback

    assert on_loopback()
    trainer = TorchTrainer(_rendezvous_sockets, torch_config=loopback_torch_config(),
                           scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
                           run_config=RunConfig(name="loopback", storage_path=str(tmp_path)))
    result = trainer.fit()
    assert result.metrics["world"] == 2.0  # the all-reduce went through the process group
    worker = {tuple(s) for s in result.metrics["sockets"]}
    assert any(status == "LISTEN" for status, _, _ in worker)  # rank 0's store and gloo's pairs
    off = [s for s in worker if not _loopback(s[1]) or (s[2] and not _loopback(s[2]))]
    assert not off, f"rank 0 sockets off loopback: {off}"
    off = []
    for proc in tree(os.getpid())[1:]:
        for c in proc.net_connections(kind="inet"):
            if c.status in ("LISTEN", "ESTABLISHED") and (not _loopback(c.laddr.ip)
                                                          or (c.raddr and not _loopback(c.raddr.ip))):
                off.append((proc.name(), c.status, c.laddr, c.raddr))
    assert not off, f"the test cluster's sockets off loopback: {off}"


def _loopback(ip: str) -> bool:
    return ip in ("127.0.0.1", "::1", "::ffff:127.0.0.1") or ip.startswith("127.")


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_evaluate_stays_on_loopback_with_an_empty_ray_address(tmp_path, tokenizer, hh_dir):
    from rayreward.core import tiny

    model = tiny.build_model("tiny-llama", tokenizer, hidden_size=32, num_layers=2, seed=0)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    data = tmp_path / "pairs.jsonl"
    with open(hh_dir / "test.jsonl", encoding="utf-8") as src, open(data, "w", encoding="utf-8") as dst:
        for _, line in zip(range(64), src):
            dst.write(line)
    args = [*RAYREWARD, "evaluate", "--model", str(tmp_path / "model"), "--data", str(data),
            "--out", str(tmp_path / "report")]
    proc = start(args, command_env(RAY_ADDRESS=""))
    with Watcher(proc.pid) as watcher:
        out, err = proc.communicate(timeout=360)
    assert proc.returncode == 0, err[-3000:]
    assert len(watcher.seen) > 3, "the command's Ray processes were never seen"
    assert not watcher.off_loopback(), watcher.off_loopback()
