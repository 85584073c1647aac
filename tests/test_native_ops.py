"""The ninja DeepSpeed's ops are built with is the one installed with this Python, whatever PATH says."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from rayreward.runtime.native_ops import use_environment_ninja


def test_environment_ninja_comes_first_on_path(monkeypatch):
    import ninja

    # A shell without the venv activated: a system ninja (if any) would come first.
    monkeypatch.setenv("PATH", os.pathsep.join(["/usr/local/bin", "/usr/bin", "/bin", ninja.BIN_DIR]))
    assert use_environment_ninja() == ninja.BIN_DIR
    entries = os.environ["PATH"].split(os.pathsep)
    assert entries[0] == ninja.BIN_DIR and entries.count(ninja.BIN_DIR) == 1
    assert entries[1:] == ["/usr/local/bin", "/usr/bin", "/bin"]
    # What torch's extension builder runs ("ninja" from PATH) is now the environment's.
    assert Path(shutil.which("ninja")).parent == Path(ninja.BIN_DIR)
    version = subprocess.run(["ninja", "--version"], capture_output=True, text=True, check=True).stdout
    assert version.strip() == subprocess.run([os.path.join(ninja.BIN_DIR, "ninja"), "--version"],
                                             capture_output=True, text=True, check=True).stdout.strip()
    # Called again (every worker calls it): PATH stays as it is.
    assert use_environment_ninja() == ninja.BIN_DIR
    assert os.environ["PATH"].split(os.pathsep) == entries


def test_reward_trainer_with_deepspeed_puts_it_first(monkeypatch, tmp_path):
    import ninja

    from rayreward import RewardConfig
    from rayreward.core.trainer import RewardTrainer
    from rayreward.core import tiny
    from rayreward.data.tokenizer import builtin_tokenizer
    from rayreward.job.deepspeed import build_deepspeed_config

    monkeypatch.setenv("PATH", os.pathsep.join(["/usr/bin", "/bin"]))
    tokenizer = builtin_tokenizer()
    args = RewardConfig(output_dir=str(tmp_path), use_cpu=True, deepspeed=build_deepspeed_config(0), report_to=[])
    try:
        RewardTrainer(model=tiny.build_model("tiny-llama", tokenizer), args=args, processing_class=tokenizer)
    finally:
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
    assert os.environ["PATH"].split(os.pathsep)[0] == ninja.BIN_DIR
