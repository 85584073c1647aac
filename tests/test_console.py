"""The console shows rayreward's own lines; Ray's, DeepSpeed's and transformers' go to the run's log."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from process_helpers import RAYREWARD, ROOT, Watcher, command_env, start, wait_until_gone

# What Ray, DeepSpeed and transformers print on their own; none of it may reach the console.
NOISE = re.compile(r"RayTrainWorker|TrainController|TrainingReport|PlacementGroupCleaner|Ray Data|Running Dataset|"
                   r"deepspeed|DeepSpeed|\bWARNING\b|Warning:|it/s\]|\(pid=|raylet|Token authentication")

_SCRIPT = """
import logging, os, sys, warnings
from rayreward.runtime.console import Console

with Console(sys.argv[1], verbose=sys.argv[2] == "1") as console:
    console.say("[rayreward] mine")
    print("a library's print")
    os.write(1, b"C++ core on fd 1\\n")
    os.write(2, b"C++ core on fd 2\\n")
    logging.getLogger("ray").warning("a warning from a logger")
    console.progress({"line": "[rayreward] step 1/2 | loss 0.5", "step": 1, "total": 2, "kind": "train"})
print("after the console")
"""


@pytest.mark.parametrize("verbose", [False, True])
def test_console_keeps_only_rayrewards_lines_unless_verbose(tmp_path, verbose):
    log = tmp_path / "run" / "rayreward.log"
    done = subprocess.run([sys.executable, "-c", _SCRIPT, str(log), "1" if verbose else "0"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    shown = done.stdout + done.stderr
    others = ("a library's print", "C++ core on fd 1", "C++ core on fd 2", "a warning from a logger")
    if verbose:
        assert not log.exists()
        assert all(text in shown for text in others)
        return
    lines = done.stdout.splitlines()
    assert lines[0] == f"[rayreward] log of Ray, DeepSpeed and transformers: {log} (-v shows it here)"
    assert lines[1:] == ["[rayreward] mine", "[rayreward] step 1/2 | loss 0.5", "after the console"]
    assert done.stderr == ""
    logged = log.read_text()
    assert all(text in logged for text in others)
    assert "[rayreward] mine" in logged and "[rayreward] step 1/2" in logged  # the log reads in order


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_demo_console_is_short_quiet_on_loopback_and_leaves_nothing(tmp_path):
    # The demo (`rayreward` with no arguments is `rayreward train`), shortened to 20 steps,
    # started the way scripts often do it: with an empty RAY_ADDRESS, which means unset.
    proc = start([*RAYREWARD, "train", "train.max_steps=20", "train.eval_steps=10", f"storage.path={tmp_path}"],
                 command_env(RAY_ADDRESS=""))
    with Watcher(proc.pid) as watcher:
        out, err = proc.communicate(timeout=800)
    assert proc.returncode == 0, (out + err)[-3000:]
    lines = (out + err).splitlines()
    assert len(lines) <= 40, "\n".join(lines)
    # Only rayreward's own lines, and nothing that Ray, DeepSpeed or transformers print.
    assert all(line.startswith("[rayreward] ") for line in lines), "\n".join(lines)
    assert not [line for line in lines[1:] if NOISE.search(line)], "\n".join(lines)
    log = Path(re.match(r"\[rayreward\] log of Ray, DeepSpeed and transformers: (\S+)", lines[0]).group(1))
    assert log.parent.parent == tmp_path and "RayTrainWorker" in log.read_text()
    assert any(re.match(r"\[rayreward\] step 10/20 .*loss .*acc .*steps/s .*ETA", line) for line in lines), out
    assert any("eval_acc" in line for line in lines), out
    assert any(line.startswith("[rayreward] done:") for line in lines), out
    # Every socket of the driver, the embedded Ray and the workers was on 127.0.0.1.
    assert len(watcher.seen) > 5, "the run's Ray processes were never seen"
    assert not watcher.off_loopback(), watcher.off_loopback()
    assert not wait_until_gone(watcher, timeout_s=15)
