"""The README's quickstart, command by command, as written there.

The commands are read from the README itself, so the two cannot drift apart. What the test
changes, and only that: the model id becomes the pretrained MiniLM of the test extra (no
hub here), and each training command gets CPU-sized overrides appended (a few steps, no
bf16, one tokenizer task at a time). The paths are the quickstart's own, relative to a fresh folder
holding `pairs.jsonl`, `eval.jsonl` and the repository's `examples/`. `serve` joins the
suite's Ray (`--address`) on a free port; `ray job submit`'s entrypoint is checked here
with `rayreward check` (a submission of `rayreward train` to a `ray start` cluster runs in
test_cluster.py).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

CPU_SIZED = ["train.max_steps=2", "scaling.num_workers=1", "train.bf16=false", "train.per_device_train_batch_size=4", "data.max_length=128",
             "data.tokenize_actors=1", "data.tokenize_num_cpus=0.5", "train.eval_steps=2", "train.save_steps=2",
             "train.logging_steps=1"]
TUNE_SIZED = ["tune.num_samples=1", "tune.max_concurrent_trials=1", "tune.scheduler.type=none"]


def quickstart_commands() -> tuple[dict[str, str], list[list[str]]]:
    """``({shell variable: value}, [argv, ...])`` of the README's quickstart block."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Quickstart"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    lines = block.replace("\\\n", " ").splitlines()
    variables, commands = {}, []
    for line in lines:
        line = line.split(" # ")[0].strip() if not line.lstrip().startswith("#") else ""
        if not line:
            continue
        assignment = re.fullmatch(r"(\w+)=(\S+)", line)
        if assignment:
            variables[assignment.group(1)] = assignment.group(2)
            continue
        commands.append(shlex.split(line.removesuffix("&").strip()))
    return variables, commands


def test_the_quickstart_block_is_short_and_has_every_step():
    variables, commands = quickstart_commands()
    names = [c[1] if c[0] == "rayreward" else c[0] for c in commands]
    assert names == ["check", "train", "evaluate", "score", "serve", "curl", "tune", "ray"], names
    assert "M" in variables and "/" in variables["M"]  # a hub id, as a user writes it
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    quickstart = text[text.index("## Quickstart"):text.index("\n## ", text.index("## Quickstart") + 5)]
    assert len(quickstart.splitlines()) <= 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(900)
def test_every_quickstart_command_runs_with_the_paths_it_shows(ray_local, minilm_dir, tmp_path, monkeypatch):
    import pandas as pd
    import ray
    import requests

    from rayreward.commands.cli import main

    variables, commands = quickstart_commands()
    sample = ROOT / "rayreward" / "sample_data"
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in read_jsonl(sample / "train.jsonl", 48)))
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in read_jsonl(sample / "eval.jsonl", 24)))
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(tmp_path)

    def expand(argv: list[str]) -> list[str]:
        out = []
        for arg in argv:
            for name, value in variables.items():
                arg = arg.replace(f"${name}", str(minilm_dir) if name == "M" else value)
            out.append(arg)
        return out

    served, took = None, {}
    for argv in map(expand, commands):
        started = time.monotonic()
        if argv[0] == "curl":
            url = re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{served['port']}", argv[argv.index("-s") + 1])
            body = json.loads(argv[argv.index("-d") + 1])
            got = requests.post(f"http://{url}" if "://" not in url else url, json=body, timeout=120).json()
            offline = _offline_pair_rewards(main, body["pairs"], tmp_path)
            assert got["reward_chosen"] == pytest.approx([offline[0]], abs=1e-5)
            assert got["reward_rejected"] == pytest.approx([offline[1]], abs=1e-5)
            _stop(served["proc"])
            took["curl"] = time.monotonic() - started
            continue
        if argv[0] == "ray":
            # The submission itself is tested against a `ray start` cluster (test_cluster.py);
            # here its entrypoint is checked as the cluster's driver would start it.
            assert argv[:3] == ["ray", "job", "submit"] and "--working-dir" in argv
            argv = ["rayreward", "check", *argv[argv.index("--") + 1:][2:]]
        assert argv[0] == "rayreward"
        command = argv[1]
        if command == "serve":
            served = _serve(argv, ray_local)
            took["serve"] = time.monotonic() - started
            continue
        extra = {"train": CPU_SIZED, "check": [], "tune": CPU_SIZED + TUNE_SIZED}.get(command, [])
        assert main(argv[1:] + extra) == 0, argv
        if command == "train":
            name = next(a.split("=", 1)[1] for a in argv if a.startswith("storage.name="))
            metrics = json.loads((tmp_path / "runs" / name / "metrics.json").read_text())
            assert metrics["step"] == 2 and (tmp_path / "runs" / name / "model" / "config.json").is_file()
            assert metrics["final_pairs"] == 24 and 0 <= metrics["final_accuracy"] <= 1
        took[" ".join(argv[1:2] + [a for a in argv if a.startswith("storage.name=")])] = time.monotonic() - started
    print("seconds per command:", {k: round(v, 1) for k, v in took.items()})
    # What the commands wrote, at the paths the quickstart names.
    evaluated = json.loads((tmp_path / "runs" / "my-rm" / "eval" / "metrics.json").read_text())
    assert evaluated["pairs"] == 24 and 0 <= evaluated["accuracy"] <= 1
    scores = pd.read_parquet(tmp_path / "runs" / "my-rm" / "scores.parquet")
    assert len(scores) == 24 and {"reward_chosen", "reward_rejected"} <= set(scores.columns)
    assert (tmp_path / "runs" / "my-sweep" / "best_config.yaml").is_file()
    assert ray.is_initialized()


def _serve(argv: list[str], ray_module) -> dict:
    """``rayreward serve`` as the user runs it, joining the suite's Ray, on a free port."""
    port = _free_port()
    address = ray_module.get_runtime_context().gcs_address
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "rayreward.commands.cli", *argv[1:], "--port", str(port),
                             "--host", "127.0.0.1", "--address", address], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        lines.append(line)
        if line.startswith("serving rm at"):
            return {"proc": proc, "port": port}
    _stop(proc)
    raise AssertionError("serve did not come up:\n" + "".join(lines[-40:]))


def _stop(proc) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _offline_pair_rewards(main, pairs: list[dict], folder: Path) -> tuple[float, float]:
    import pandas as pd

    data, out = folder / "one_pair.jsonl", folder / "one_pair.parquet"
    data.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    assert main(["score", "--model", "runs/my-rm/model", "--data", str(data), "--out", str(out)]) == 0
    row = pd.read_parquet(out).iloc[0]
    return float(row["reward_chosen"]), float(row["reward_rejected"])
