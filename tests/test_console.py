"""The console shows rayreward's own lines; Ray's, DeepSpeed's and transformers' go to the run's log.

A whole run's console (quiet, loopback, nothing left behind) is checked on the resumed run
of test_interrupts' Ctrl-C test.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from process_helpers import ROOT

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


def test_a_log_on_an_object_store_is_written_there_not_to_a_local_s3_folder(tmp_path, moto_s3):
    # `evaluate --out s3://...` and `score --out s3://...` give the console a URI: the log
    # goes to the URI's folder when the command ends, and no ./s3: folder appears.
    import os

    done = subprocess.run([sys.executable, "-c", _SCRIPT, "s3://rayreward/eval/rayreward.log", "0"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert "s3://rayreward/eval/rayreward.log (when the command ends" in done.stdout
    text = moto_s3.get_object(Bucket="rayreward", Key="eval/rayreward.log")["Body"].read().decode()
    assert "C++ core on fd 2" in text and "[rayreward] mine" in text
    assert list(tmp_path.iterdir()) == [], list(tmp_path.iterdir())
