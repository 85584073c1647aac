"""The ninja DeepSpeed's ops are built with is the one installed with this Python, whatever PATH says."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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


def test_reward_trainer_with_deepspeed_puts_it_first(tmp_path):
    # In a process of its own: a DeepSpeed-configured trainer leaves process-wide state
    # (Accelerate's, transformers') that would change every later trainer of this process.
    import ninja

    code = """
import os, sys
from rayreward import RewardConfig, RewardTrainer
from rayreward.core import tiny
from rayreward.data.tokenizer import builtin_tokenizer
from rayreward.job.deepspeed import build_deepspeed_config

tokenizer = builtin_tokenizer()
args = RewardConfig(output_dir=sys.argv[1], use_cpu=True, deepspeed=build_deepspeed_config(0), report_to=[])
RewardTrainer(model=tiny.build_model("tiny-llama", tokenizer), args=args, processing_class=tokenizer)
print(os.environ["PATH"].split(os.pathsep)[0])
"""
    env = {**os.environ, "PATH": os.pathsep.join(["/usr/bin", "/bin"])}
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-1] == ninja.BIN_DIR
