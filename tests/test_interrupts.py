"""Ctrl-C and a killed driver: nothing of the run's Ray is left, and the run resumes."""

from __future__ import annotations

import os
import re
import shlex
import signal
import sys
import time
from pathlib import Path

import pytest

from process_helpers import NOISE, RAYREWARD, Watcher, command_env, start, wait_until_gone

# The demo without eval data: checkpoints every 8 steps, more steps than the test waits for.
SHORT = ["train.save_steps=8", "train.logging_steps=4", "train.max_steps=400", "data.eval=null"]


def test_resume_point_is_the_checkpoint_ray_recorded_and_newer_ones_are_named(tmp_path):
    import json

    from rayreward.run.resume import complete_checkpoints, resume_point

    assert complete_checkpoints(str(tmp_path / "missing")) == []
    assert resume_point(str(tmp_path / "missing")).checkpoint is None
    for step, complete in ((4, True), (8, True), (12, True), (16, False)):
        folder = tmp_path / f"checkpoint-{step:06d}"
        folder.mkdir()
        if complete:
            (folder / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-notes").mkdir()
    # Complete means the Trainer's state file is there (step 16 was cut short).
    assert complete_checkpoints(str(tmp_path)) == ["checkpoint-000004", "checkpoint-000008", "checkpoint-000012"]
    # Nothing recorded by Ray yet: a re-run starts over, and the saved folders are named.
    point = resume_point(str(tmp_path))
    assert point.checkpoint is None and len(point.not_taken) == 3
    # Ray recorded step 8; step 12 was saved in the poll window before the interrupt.
    snapshot = {"ray_version": "2.60.0", "latest_checkpoint_result": {"checkpoint_dir_name": "checkpoint-000008",
                                                                       "metrics": {}}}
    (tmp_path / "checkpoint_manager_snapshot.json").write_text(json.dumps(snapshot))
    point = resume_point(str(tmp_path))
    assert point.checkpoint == str(tmp_path / "checkpoint-000008")
    assert point.not_taken == (str(tmp_path / "checkpoint-000012"),)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ctrl_c_exits_130_says_how_to_resume_leaves_nothing_and_resumes(tmp_path):
    # The demo (`rayreward` with no arguments is `rayreward train`), started the way
    # scripts often do it: with an empty RAY_ADDRESS, which means unset.
    storage = tmp_path / "runs"
    env = command_env(RAY_ADDRESS="")
    proc = start([*RAYREWARD, "train", f"storage.path={storage}", *SHORT], env)
    with Watcher(proc.pid) as watcher:
        deadline = time.monotonic() + 600
        while not list(storage.glob("*/checkpoint-*/trainer_state.json")) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            time.sleep(1)
        assert list(storage.glob("*/checkpoint-*/trainer_state.json")), "no checkpoint within 10 minutes"
        # Ray's controller takes a reported checkpoint as the run's latest on its next
        # poll (every 2 s); the hint names the one it took (tested above with both cases).
        time.sleep(5)
        # Ctrl-C on a terminal: SIGINT to the whole foreground process group.
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    checkpoint = re.search(r"resumes from its last checkpoint, (\S+)", err)
    resume = re.search(r"resume with: (.+)", err)
    assert checkpoint and resume, err[-3000:]
    assert Path(checkpoint.group(1), "trainer_state.json").is_file()
    left = wait_until_gone(watcher, timeout_s=10)
    assert not left, f"processes left after Ctrl-C: {left}"
    # The printed command resumes the same run at its last checkpoint (a few steps more).
    step = int(checkpoint.group(1).rsplit("-", 1)[1])
    command = shlex.split(resume.group(1))
    assert command[:2] == ["rayreward", "train"] and any(a.startswith("storage.name=") for a in command)
    # This time with eval pairs: the console of a whole run is checked on this one.
    again = start([*RAYREWARD, *command[1:], f"train.max_steps={step + 4}", "data.eval=rayreward/sample_data/eval.jsonl",
                   "train.eval_steps=4"], env)
    with Watcher(again.pid) as watcher:
        out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    assert f"resumed at step {step}/{step + 4}" in out, out
    # A short console of rayreward's own lines only, nothing that Ray, DeepSpeed or
    # transformers print (that goes to the run's log).
    lines = (out + err).splitlines()
    assert len(lines) <= 40, "\n".join(lines)
    assert all(line.startswith("[rayreward] ") for line in lines), "\n".join(lines)
    assert not [line for line in lines[1:] if NOISE.search(line)], "\n".join(lines)
    log = Path(re.match(r"\[rayreward\] log of Ray, DeepSpeed and transformers: (\S+)", lines[0]).group(1))
    assert log.parent.parent == storage and "RayTrainWorker" in log.read_text()
    assert any(re.match(rf"\[rayreward\] step {step + 4}/{step + 4} .*loss .*acc .*steps/s .*ETA", line)
               for line in lines), out
    assert any("eval_acc" in line for line in lines), out
    assert any(line.startswith("[rayreward] done:") for line in lines), out
    # Every socket of the driver, the embedded Ray and the workers was on 127.0.0.1, and
    # nothing is left once the command has ended.
    assert len(watcher.seen) > 5, "the run's Ray processes were never seen"
    assert not watcher.off_loopback(), watcher.off_loopback()
    assert not wait_until_gone(watcher, timeout_s=15)


_DRIVER = """
import sys, time
import ray
from rayreward.runtime.ray_session import ray_session

with ray_session(num_cpus=2):
    @ray.remote(num_cpus=1)
    class Holder:
        def pid(self):
            import os
            return os.getpid()

    holder = Holder.remote()
    ray.get(holder.pid.remote())
    print("ready", flush=True)
    time.sleep(600)
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_killed_driver_leaves_nothing_of_its_ray_after_30_s(tmp_path):
    proc = start([sys.executable, "-c", _DRIVER], command_env(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0"))
    with Watcher(proc.pid) as watcher:
        assert proc.stdout.readline().strip() == "ready", proc.communicate()[1][-3000:]
        time.sleep(2)  # a few samples of the whole tree, agents and actor included
    names = " ".join(watcher.alive())
    assert "raylet" in names and "gcs_server" in names, names
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    left = wait_until_gone(watcher, timeout_s=30)
    assert not left, f"left 30 s after the driver was killed: {left}"
