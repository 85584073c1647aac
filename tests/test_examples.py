"""examples/: every shipped config passes `rayreward check`; the example scripts run.

The configs naming hub models (GPT-2, Llama) must validate offline: `check` checks the
structure and values, it downloads nothing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
# The scripts this file covers; examples/reward_modeling.py has its own tests.
SCRIPTS = ["train_from_python.py", "conversational.py"]
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps an embedded Ray's node on 127.0.0.1: on Linux,
# Ray 2.60 replaces a loopback _node_ip_address with the machine's routable address.
OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def run_script(*args: str, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=OFFLINE, capture_output=True, text=True,
                          timeout=timeout)


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name.removesuffix('.py')}", EXAMPLES / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", sorted(EXAMPLES.rglob("*.yaml")), ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_example_config_passes_check(path, capsys):
    from rayreward.commands.cli import main

    # The configs name data and models of the machines they are written for: the config alone.
    code = main(["check", "--config-only", "--config", str(path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "OK" in out


def test_every_example_config_says_what_to_change():
    for path in sorted((EXAMPLES / "configs").glob("*.yaml")):
        if path.name == "tiny_cpu.yaml":  # the demo: nothing to change
            continue
        assert "CHANGE" in path.read_text(), f"{path.name} does not mark what to change"


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_help(script):
    result = run_script(str(EXAMPLES / script), "--help", timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:")


def test_conversational_pairs_render_with_the_bundled_template():
    from rayreward.data.formats import detect_format
    from rayreward.data.tokenizer import builtin_tokenizer

    example = load_example("conversational.py")
    chats = example.load_chats("train", limit=3)
    first = chats[0]
    assert [m["role"] for m in first["prompt"]] == ["system", "user"]
    assert [m["role"] for m in first["chosen"]] == ["assistant"] == [m["role"] for m in first["rejected"]]
    assert not first["prompt"][1]["content"].startswith("Human:")
    assert detect_format(list(first), first) == "conversational"
    rendered = builtin_tokenizer().apply_chat_template(first["prompt"] + first["chosen"], tokenize=False)
    assert rendered.index("<|system|>") < rendered.index("<|user|>") < rendered.index("<|assistant|>")
    assert rendered.endswith(first["chosen"][0]["content"] + "</s>")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_conversational_trains_in_process():
    result = run_script(str(EXAMPLES / "conversational.py"), "--max-steps", "30", "--train-pairs", "480",
                        "--eval-pairs", "96", timeout=880)
    assert result.returncode == 0, result.stderr[-3000:]
    accuracy = float(re.search(r"eval_accuracy ([0-9.]+)", result.stdout).group(1))
    assert accuracy > 0.6, result.stdout
    rewards = [float(r) for r in re.findall(r"^reward ([+-][0-9.]+)", result.stdout, re.M)]
    assert len(rewards) == 2 and rewards[0] > rewards[1], "the polite reply should outscore the rude one"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_train_from_python_runs_two_workers(ray_local, tmp_path, capsys):
    # In this process, on the suite's Ray (the example's ray_session uses a Ray that is
    # already up, as it documents); `--help` and a bad override run it as a script.
    code = load_example("train_from_python.py").main(
        ["--max-steps", "6", "--workers", "2", "--storage", str(tmp_path), "--name", "py", "train.eval_steps=3",
         "train.save_steps=3", "train.logging_steps=3"])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    metrics = json.loads((tmp_path / "py" / "metrics.json").read_text())
    assert metrics["num_workers"] == 2 and "eval_accuracy" in metrics
    assert len(re.findall(r"^reward [+-][0-9.]+", out, re.M)) == 2  # the export reloaded and scored


def test_train_from_python_rejects_a_bad_override():
    result = run_script(str(EXAMPLES / "train_from_python.py"), "scaling.num_workerz=2", timeout=300)
    assert result.returncode == 2
    assert "scaling.num_workerz" in result.stdout and "num_workers" in result.stdout
