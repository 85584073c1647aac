"""examples/reward_modeling.py end to end: trains, evaluates, shows samples, saves."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rayreward import RewardConfig

from rayreward import RewardTrainer
from conftest import ROOT, SAMPLE_DATA, read_jsonl

SCRIPT = ROOT / "examples" / "reward_modeling.py"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def load_example():
    spec = importlib.util.spec_from_file_location("reward_modeling_example", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def eval_accuracy(model_dir: Path, tmp_path: Path, rows) -> float:
    """Accuracy of a saved export, reloaded from disk, on ``rows``."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    trainer = RewardTrainer(model=model, tokenizer=tok, eval_dataset=rows,
                            args=RewardConfig(output_dir=str(tmp_path / "reload"), report_to=[], disable_tqdm=True,
                                              per_device_eval_batch_size=32, max_length=512))
    return trainer.evaluate()["eval_accuracy"]


def test_example_with_lora_in_process(tmp_path, capsys):
    out = tmp_path / "lora"
    metrics = load_example().main(
        ["--lora", "--lora_r", "4", "--max_steps", "6", "--max_train_samples", "96", "--max_eval_samples", "16",
         "--num_print_samples", "2", "--output_dir", str(out)]
    )
    printed = capsys.readouterr().out
    assert f"eval_accuracy={metrics['eval_accuracy']:.4f}" in printed
    assert "P(chosen)" in printed
    assert (out / "adapter_model.safetensors").exists() and (out / "adapter_config.json").exists()
    assert (out / "tokenizer.json").exists()


@pytest.mark.slow
def test_example_script_runs_as_a_subprocess(tmp_path):
    out = tmp_path / "model"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--max_steps", "40", "--max_eval_samples", "64", "--num_print_samples", "2",
         "--output_dir", str(out)],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    match = re.search(r"eval_accuracy=([0-9.]+)", proc.stdout)
    assert match, proc.stdout[-3000:]
    accuracy = float(match.group(1))
    assert accuracy > 0.7  # the bundled task is learnt within 40 steps
    assert "P(chosen)" in proc.stdout and f"saved to {out.resolve()}" in proc.stdout
    assert (out / "model.safetensors").exists() and (out / "config.json").exists()
    # the export, reloaded, scores the same pairs the same way
    rows = read_jsonl(SAMPLE_DATA / "eval.jsonl", limit=64)
    torch.manual_seed(0)
    assert eval_accuracy(out, tmp_path, rows) == pytest.approx(accuracy, abs=1e-4)
