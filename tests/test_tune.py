"""`rayreward tune`: search-space checks before Ray, and sweeps on a real local Ray (loopback).

The sweep runs the command in a subprocess (its own embedded Ray on 127.0.0.1, as a
user runs it) on the tiny Llama with LoRA and the sample's 120 ranked groups; a trial is
8 steps of 8 groups, evaluated and checkpointed every 2. One sweep is interrupted,
resumed, and ranks its trials with ASHA: one Ray start and one set of trials for all of it.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import read_jsonl
from process_helpers import Watcher, wait_until_gone
from rayreward.config.tree import ConfigError
from rayreward.commands.cli import main
from rayreward.job.config import load_job_config
from rayreward.tune.sweep import param_space, sweep_problems

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "rayreward" / "sample_data"
ENV = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "HF_HUB_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0"}


def sweep_config(tmp_path: Path, name: str, tune: dict, ranked: bool = False, every: int = 2) -> Path:
    """A sweep file: 8-step LoRA trials of the tiny model, one worker each, on 128 sample
    pairs (or, ``ranked``, on the sample's 120 ranked groups of K = 2-5, 8 per step),
    evaluated and checkpointed ``every`` steps."""
    if ranked:
        from data_helpers import write_jsonl
        from group_data import ranked_rows

        write_jsonl(tmp_path / "train.jsonl", ranked_rows(read_jsonl(SAMPLE / "train.jsonl")))
        write_jsonl(tmp_path / "eval.jsonl", ranked_rows(read_jsonl(SAMPLE / "eval.jsonl"), seed=1)[:40])
    else:
        for split, rows in (("train", 128), ("eval", 128)):
            lines = (SAMPLE / f"{split}.jsonl").read_text().splitlines()[:rows]
            (tmp_path / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    config = {
        "model": {"name_or_path": "builtin:tiny-llama"},
        "data": {"train": str(tmp_path / "train.jsonl"), "eval": str(tmp_path / "eval.jsonl"), "max_length": 256,
                 "tokenize_actors": 1},
        "lora": {"enabled": True},
        "train": {"max_steps": 8, "per_device_train_batch_size": 8 if ranked else 16, "logging_steps": 2,
                  "eval_steps": every, "save_steps": every, "warmup_steps": 0},
        "deepspeed": {"stage": 0},
        "scaling": {"num_workers": 1, "cpus_per_worker": 1},
        "storage": {"path": str(tmp_path / "runs"), "name": name, "num_to_keep": 1,
                    "checkpoint_score_attribute": "eval_accuracy"},
        "tune": tune,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# -- before any trial ------------------------------------------------------------------


def test_example_sweep_is_valid_and_defaults_sweep_lr_rank_margin():
    job = load_job_config(str(ROOT / "examples" / "configs" / "sweep.yaml"))
    assert sweep_problems(job) == []
    assert set(job.tune.search_space) == {"train.learning_rate", "lora.r", "train.use_margin"}
    defaults = load_job_config(None, ["lora.enabled=true", "train.max_steps=120"])
    assert set(defaults.tune.search_space) == {"train.learning_rate", "lora.r", "train.use_margin"}
    assert sweep_problems(defaults) == []


def test_bad_search_space_fails_before_any_trial(tmp_path, capsys, monkeypatch):
    import ray

    def no_ray(*args, **kwargs):
        raise AssertionError("ray.init was called for an invalid sweep")

    # A session Ray may already run (other tests); what matters is that none is started.
    monkeypatch.setattr(ray, "init", no_ray)

    space = {"train.learning_rat": {"loguniform": [1.0e-5, 1.0e-3]}, "lora.r": {"choice": [4, 8]}}
    path = sweep_config(tmp_path, "bad", {"search_space": space})
    assert main(["tune", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "tune.search_space.train.learning_rat: unknown key; did you mean 'train.learning_rate'?" in err

    # Distribution arguments are the section's own checks: every one is reported.
    code = main(["tune", "--config", str(path), "tune.search_space={'train.learning_rate': {'loguniform': [0, 1]}, "
                 "'lora.r': {'choise': [4]}, 'train.use_margin': {'choice': []}}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "tune.search_space.train.learning_rate.loguniform: got [0, 1]; expected [low, high] with 0 < low < high" in err
    assert "tune.search_space.lora.r: unknown distribution 'choise'; did you mean 'choice'?" in err
    assert "tune.search_space.train.use_margin.choice: got []; expected a non-empty list" in err

    # Values that make an invalid trial config, found among the combinations.
    code = main(["tune", "--config", str(path),
                 "tune.search_space={'lora.r': {'grid': [8, 0]}, 'train.eval_steps': {'choice': [2, 3]}}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "tune.search_space.lora.r.grid: got 0; expected a positive integer" in err
    assert "a trial with lora.r=8, train.eval_steps=3 is invalid: train.save_steps: got 2 with train.eval_steps=3; " \
        "expected a multiple of eval_steps" in err
    assert "lora.r=0," not in err  # a bad value is named once, not in every combination
    assert not (tmp_path / "runs").exists()


def test_bad_loss_values_fail_before_ray_with_the_allowed_ones(tmp_path, capsys, monkeypatch):
    import ray

    from data_helpers import write_jsonl
    from group_data import ranked_rows

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("ray.init was called for an invalid sweep"))
    path = sweep_config(tmp_path, "bad-loss", {"scheduler": {"type": "none"}, "search_space": {
        "train.loss_type": {"choice": ["pl", "plackett_luce"]}, "train.attention_backend": {"grid": ["flash"]}}})
    assert main(["tune", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "tune.search_space.train.loss_type.choice: got 'pl'; expected one of bradley_terry, plackett_luce, " \
        "regression" in err
    assert "tune.search_space.train.attention_backend.grid: got 'flash'; expected one of auto, dense, banded, " \
        "segment, varlen, flex" in err
    assert main(["check", "--config", str(path)]) == 2
    assert "tune.search_space.train.loss_type.choice: got 'pl'" in capsys.readouterr().err

    # Known losses that do not fit the data's shape: found from the data, before Ray.
    ranked = write_jsonl(tmp_path / "ranked.jsonl", ranked_rows(read_jsonl(SAMPLE / "train.jsonl", 200)))
    space = "tune.search_space={'train.loss_type': {'grid': ['plackett_luce', 'regression']}}"
    for command in ("tune", "check"):
        assert main([command, "--config", str(path), space, f"data.train={ranked}", f"data.eval={ranked}"]) == 2
        err = capsys.readouterr().err
        assert "tune.search_space.train.loss_type.grid: got 'regression', which cannot train data.train's ranked " \
            "data; expected one of bradley_terry, plackett_luce for this data" in err, err
        assert "plackett_luce'," not in err
        # A metric the data's shape never reports (the file's tune.metric, not the default).
        assert main([command, "--config", str(path), f"data.train={ranked}", f"data.eval={ranked}",
                     "tune.search_space={'train.loss_type': {'grid': ['plackett_luce']}}", "tune.metric=eval_rmse",
                     "tune.mode=min"]) == 2
        assert "tune.metric: got 'eval_rmse', which the evaluation of groups data does not report; expected one " \
            "of eval_accuracy, eval_loss, eval_top1_accuracy" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_sweep_problems_asha_needs_room_and_lora():
    job = load_job_config(None, ["lora.enabled=false", "tune.scheduler.grace_period=50"])
    problems = sweep_problems(job)
    assert any(p.startswith("tune.scheduler.max_t: got null with train.max_steps unset") for p in problems)
    assert any(p.startswith("tune.search_space.lora.r: swept with lora.enabled=false") for p in problems)
    job = load_job_config(None, ["lora.enabled=true", "train.max_steps=40", "tune.scheduler.grace_period=40"])
    assert sweep_problems(job) == ["tune.scheduler.grace_period: got 40 steps with trials of 40 steps; expected "
                                   "fewer, or ASHA never stops a trial"]
    job = load_job_config(None, ["lora.enabled=true", "train.max_steps=400", "storage.checkpoint_eval=ray"])
    assert any(p.startswith("storage.checkpoint_eval: got 'ray' in a sweep; expected trainer") for p in sweep_problems(job))
    with pytest.raises(ConfigError, match="tune.search_space.storage.name: cannot be swept"):
        load_job_config(None, ["tune.search_space={'storage.name': {'choice': ['a']}}"])


def test_scheduler_settings_are_checked():
    with pytest.raises(ConfigError) as err:
        load_job_config(None, ["tune.scheduler.type=hyperband", "tune.scheduler.grace_period=0",
                               "tune.scheduler.reduction_factor=1"])
    text = str(err.value)
    assert "tune.scheduler.type: got 'hyperband'; expected one of asha, none" in text
    assert "tune.scheduler.grace_period: got 0; expected a positive number of steps" in text
    assert "tune.scheduler.reduction_factor: got 1; expected a number above 1" in text


def test_param_space_maps_distributions():
    from ray.tune.search.sample import Categorical, Float, Integer

    job = load_job_config(None, ["tune.search_space={'train.learning_rate': {'loguniform': [1.0e-5, 1.0e-3]}, "
                                 "'lora.r': {'choice': [4, 8]}, 'train.use_margin': {'grid': [true, false]}, "
                                 "'lora.alpha': {'uniform': [8, 32]}, 'train.seed': {'randint': [0, 4]}}"])
    space = param_space(job)
    assert isinstance(space["train.learning_rate"], Float) and space["train.learning_rate"].lower == 1e-5
    assert isinstance(space["lora.r"], Categorical) and space["lora.r"].categories == [4, 8]
    assert space["train.use_margin"] == {"grid_search": [True, False]}
    assert isinstance(space["lora.alpha"], Float) and isinstance(space["train.seed"], Integer)
    grid = param_space(load_job_config(None, ["tune.search_alg=grid"]))
    assert grid["lora.r"] == {"grid_search": [4, 8, 16]}


def test_a_report_without_its_checkpoint_finds_the_trials_checkpoint_of_that_step(tmp_path):
    # A trial interrupted right after its run saved the last checkpoint resumes with nothing
    # left to train and reports that step again without a checkpoint: the results table
    # still finds the checkpoint (and the trial its score), where one of that step exists.
    from rayreward.tune.report import _find_checkpoints

    (tmp_path / "train" / "checkpoint-000008").mkdir(parents=True)
    history = [{"step": 6, "value": 0.8, "checkpoint": None}, {"step": 8, "value": 0.85, "checkpoint": None},
               {"step": 4, "value": 0.7, "checkpoint": "elsewhere/checkpoint-000004"}]
    _find_checkpoints(history, str(tmp_path))
    assert [h["checkpoint"] for h in history] == [None, str(tmp_path / "train" / "checkpoint-000008"),
                                                  "elsewhere/checkpoint-000004"]


# -- sweeps on Ray ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_asha_sweep_is_interrupted_resumed_and_its_best_config_reruns(tmp_path):
    # 4 trials on the sample's ranked groups, two at once: two learning rates far apart x
    # the two ranking losses, in Tune's grid order (1e-7, PL), (1e-2, PL), (1e-7, BT),
    # (1e-2, BT). The 1e-7 trials stay at the untrained model's accuracy. The third starts
    # once one of the first two has ended, when ASHA has the (1e-2, PL) trial's accuracy at
    # step 2, and is stopped there (the first may be too, if that trial reported first).
    # Ctrl-C when the third is stopped early (Tune does not save ASHA's state: the stop
    # must come before it): the fourth has not started then, or started after the third
    # and has 8 steps to run, so the sweep is cut short wherever the race goes, with at
    # most two trials left for the same command to resume.
    tune = {"num_samples": 1, "max_concurrent_trials": 2, "seed": 0,
            "scheduler": {"type": "asha", "grace_period": 2, "reduction_factor": 2},
            "search_space": {"train.learning_rate": {"grid": [1.0e-7, 1.0e-2]},
                             "train.loss_type": {"grid": ["plackett_luce", "bradley_terry"]}}}
    path = sweep_config(tmp_path, "sweep", tune, ranked=True)
    args = [sys.executable, "-m", "rayreward", "tune", "--config", str(path)]
    run = tmp_path / "runs" / "sweep"
    log = run / "rayreward.log"

    def quiet(out: str) -> None:
        # rayreward's own lines only; Tune's trial table and Ray's output are in the log,
        # named in the first line.
        assert out.splitlines()[0] == f"[rayreward] log of Ray, DeepSpeed and transformers: {log} (-v shows it here)"
        assert all(line.startswith(("[rayreward]", "|", "  ")) or not line.strip() for line in out.splitlines()), out

    # 1. A trial is stopped early, then Ctrl-C: Tune saves the experiment and stops.
    start = time.monotonic()
    proc = subprocess.Popen(args, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines, third, stopped = [], None, False
    deadline = time.monotonic() + 600
    try:
        with Watcher(proc.pid) as watcher:
            for line in proc.stdout:
                lines.append(line)
                if "train.learning_rate=1e-07, train.loss_type=bradley_terry" in line:
                    third = re.match(r"\[rayreward\] trial (\S+) started", line).group(1)
                match = re.match(r"\[rayreward\] trial (\S+) ended at step (\d+)", line)
                if match and match.group(1) == third and int(match.group(2)) < 8:
                    stopped = True
                    proc.send_signal(signal.SIGINT)
                    break
                assert time.monotonic() < deadline, "".join(lines[-50:])
            rest, err1 = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    out1 = "".join(lines) + rest
    assert stopped, out1[-3000:] + err1[-3000:]
    assert proc.returncode == 130, out1[-3000:] + err1[-3000:]
    # Nothing of the sweep's Ray is left running (raylet, GCS, trial workers, agents).
    left = wait_until_gone(watcher, timeout_s=10)
    assert not left, f"processes left after Ctrl-C: {left}"
    assert "interrupted; re-run the same command to resume it" in out1 + err1
    assert not (run / "summary.json").exists()
    quiet(out1)
    assert "[rayreward] data: 120 training ranked groups" in out1
    # Two trials ran at once: the second started before the first ended.
    events = re.findall(r"\[rayreward\] trial (\S+) (started|ended)", out1)
    assert [e for _, e in events[:2]] == ["started", "started"], events

    # 2. The same command resumes: the ended trials are kept, not run again.
    result = subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    out2 = result.stdout
    assert result.returncode == 0, out2[-3000:] + result.stderr[-3000:]
    print(f"sweep, both parts: {time.monotonic() - start:.0f}s")
    assert "[rayreward] resuming sweep sweep" in out2
    assert f"trial {third} started" not in out2
    quiet(out2)
    assert not result.stderr.strip(), result.stderr[-3000:]
    assert "Trial status" in log.read_text()

    summary = json.loads((run / "summary.json").read_text())
    statuses = [t["status"] for t in summary["trials"]]
    assert len(statuses) == 4 and set(statuses) <= {"finished", "stopped early"}, statuses
    assert "stopped early" in statuses
    assert third in {t["trial"] for t in summary["trials"]}
    ended = {name for name, e in re.findall(r"\[rayreward\] trial (\S+) (started|ended)", out1 + out2) if e == "ended"}
    assert ended == {t["trial"] for t in summary["trials"]}
    stopped = [t for t in summary["trials"] if t["status"] == "stopped early"]
    assert all(t["last_step"] < t["max_steps"] == 8 for t in stopped)
    assert summary["best_params"]["train.learning_rate"] == 1e-2
    assert summary["best_value"] == max(t["eval_accuracy"] for t in summary["trials"])

    # Every trial checkpointed under storage.path/storage.name, and trained with its own
    # loss: the arguments its trainer ran with, and its losses. At the start, with rewards
    # near equal, the pairwise loss of a group is about ln 2 while Plackett-Luce's is the
    # log of K!-ish orderings (ln 2 for K = 2, ln 6 for K = 3, ...); the 1e-7 trials differ
    # in nothing but the loss (same seed, data and order).
    import torch

    first_losses = {}
    for trial in summary["trials"]:
        checkpoints = sorted((Path(trial["path"]) / "train").glob("checkpoint-*"))
        assert checkpoints, trial
        trained = torch.load(checkpoints[-1] / "training_args.bin", weights_only=False)
        assert trained.loss_type == trial["params"]["train.loss_type"]
        assert trained.learning_rate == trial["params"]["train.learning_rate"]
        assert 0 <= trial["eval_accuracy"] <= 1
        if trained.learning_rate == 1e-7:
            history = json.loads((checkpoints[-1] / "trainer_state.json").read_text())["log_history"]
            first_losses[trained.loss_type] = next(h["loss"] for h in history if "loss" in h)
    assert set(first_losses) == {"plackett_luce", "bradley_terry"}
    assert first_losses["bradley_terry"] < 0.8 < 1.2 < first_losses["plackett_luce"], first_losses

    with open(run / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["trial"] for r in rows] == [t["trial"] for t in summary["trials"]]
    assert (run / "results.md").read_text().startswith("| trial | status |")
    assert (run / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Path(summary["best_checkpoint"]).is_dir()
    assert (run / "best_model" / "config.json").exists()
    assert f"[rayreward] checkpoint:  {summary['best_checkpoint']}" in out2

    # The best config is the job with the best trial's values, a run of its own (its
    # storage.name), and passes `rayreward check` as it is: data, model and storage included.
    best = load_job_config(str(run / "best_config.yaml"))
    assert best.train["learning_rate"] == 1e-2
    assert best.train["loss_type"] == summary["best_params"]["train.loss_type"]
    assert best.data.train == str(tmp_path / "train.jsonl")
    assert best.storage.name == "sweep-best"
    assert main(["check", "--config", str(run / "best_config.yaml")]) == 0
