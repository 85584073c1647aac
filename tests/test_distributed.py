"""End to end on a real local Ray (loopback), real DeepSpeed on CPU, the tiny model, the sample text.

Each run is a few steps: 2 workers x 16 pairs, checkpoints every 4 steps. The trained
model's rewards on fixed probe texts are recorded inside the workers at the end of
training and compared with the exported model's, so "the export gives the same
rewards" is checked against what was trained, not against another copy of a file.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PROBES = [
    "Human: How do I boil an egg?\nAssistant: Put it in boiling water for nine minutes, then cool it.</s>",
    "Human: How do I boil an egg?\nAssistant: Figure it out yourself.</s>",
    "Human: Any tips for sleeping better?\nAssistant: Keep a regular schedule and a dark, cool room.</s>",
]


@pytest.fixture(autouse=True)
def _ship_this_module_by_value():
    # The callbacks below travel to the Ray workers, which cannot import this test module.
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


class RecordRewards(TrainerCallback):
    """At the end of training every rank runs the probes (ZeRO-3 gathers in forward); rank 0 saves them."""

    def __init__(self, path: str):
        self.path = path

    def on_train_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        batch = processing_class(PROBES, return_tensors="pt", padding=True, add_special_tokens=True)
        model.eval()
        with torch.no_grad():
            rewards = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
        if state.is_world_process_zero:
            Path(self.path).write_text(json.dumps(rewards.float().tolist()))


class RecordStarts(TrainerCallback):
    """Appends the step each (re)start of training begins at."""

    def __init__(self, path: str):
        self.path = path

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            with open(self.path, "a") as f:
                f.write(f"{state.global_step}\n")


# Ray Train's controller collects reported checkpoints when it polls the workers (every
# 2 s): a checkpoint reported just before a crash may never be registered. The failing
# callbacks wait this long first, so the crash comes after the checkpoint is Ray's.
SETTLE_S = 6


class KillRankOnce(TrainerCallback):
    """Kills the worker process of one rank at a step, once (a marker file remembers)."""

    def __init__(self, marker: str, step: int, rank: int = 1):
        self.marker, self.step, self.rank = marker, step, rank

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step and args.process_index == self.rank and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            time.sleep(SETTLE_S)
            os._exit(1)


def job_for(storage: str, name: str, *overrides: str):
    from rayreward.job.config import load_job_config

    return load_job_config(None, [
        "train.max_steps=8", "train.save_steps=4", "train.eval_steps=4", "train.logging_steps=2",
        "data.tokenize_actors=1", f"storage.path={storage}", f"storage.name={name}", *overrides,
    ])


def rewards_of(model_dir: str) -> list[float]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    batch = tokenizer(PROBES, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits[:, 0].tolist()


def untrained_rewards() -> list[float]:
    from rayreward.core import tiny
    from rayreward.data.tokenizer import builtin_tokenizer

    tokenizer = builtin_tokenizer()
    model = tiny.build_model("tiny-llama", tokenizer).eval()
    batch = tokenizer(PROBES, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits[:, 0].tolist()


def tally_actors() -> int:
    """Live processes of the data pipeline's row-count actors (``ray::Tally``) on this machine."""
    import psutil

    count = 0
    for proc in psutil.process_iter(["cmdline"]):
        try:
            count += " ".join(proc.info["cmdline"] or ()).startswith("ray::Tally")
        except psutil.Error:
            pass
    return count


def assert_same_rewards(exported: list[float], trained: list[float]) -> None:
    assert torch.allclose(torch.tensor(exported), torch.tensor(trained), atol=1e-4), (exported, trained)
    assert not torch.allclose(torch.tensor(exported), torch.tensor(untrained_rewards()), atol=1e-3)


@pytest.mark.timeout(600)
def test_zero1_trains_checkpoints_evaluated_beside_training_and_exports(ray_local, tmp_path):
    from rayreward.commands.cli import main
    from rayreward.evaluation.normalization import load_normalization
    from rayreward.run.fit import fit

    # ZeRO-1 on 2 workers, each checkpoint evaluated by Ray beside training
    # (ValidationConfig). ZeRO-2 trains in the killed-worker run below, the elastic run
    # (test_multinode) and every `rayreward train` of the demo's defaults.
    probe = tmp_path / "probe.json"
    fit_job = job_for(str(tmp_path / "runs"), "z", "train.max_steps=4", "train.save_steps=2", "deepspeed.stage=1",
                      "storage.checkpoint_eval=ray")
    tallies_before = tally_actors()
    lines: list[str] = []
    starts = tmp_path / "starts.txt"
    outcome = fit(fit_job, callbacks=[RecordRewards(str(probe)), RecordStarts(str(starts))], print_fn=lines.append)
    run = tmp_path / "runs" / "z"
    metrics = json.loads((run / "metrics.json").read_text())
    assert outcome.metrics["step"] == 4 and outcome.metrics["zero_stage"] == 1 and metrics == outcome.metrics
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-000002", "checkpoint-000004"]
    last = run / "checkpoint-000004"
    # ZeRO shards the optimizer state: each rank's file is in the merged checkpoint.
    assert glob.glob(str(last / "global_step4" / "*zero_pp_rank_0_*optim_states.pt"))
    assert glob.glob(str(last / "global_step4" / "*zero_pp_rank_1_*optim_states.pt"))
    assert (last / "rng_state_1.pth").exists() and (last / "model.safetensors").exists()
    trained = json.loads(probe.read_text())
    assert (run / "model" / "model.safetensors").exists() and (run / "model" / "tokenizer.json").exists()
    assert_same_rewards(rewards_of(outcome.model_dir), trained)
    # The run's summary: the exported model scored on every eval pair, its reward
    # statistics stored in the model's config for `score --normalize`.
    assert metrics["final_pairs"] == metrics["data/eval_pairs"] and metrics["final_ece"] >= 0
    norm = load_normalization(str(run / "model"))
    assert (norm.mean, norm.std) == (metrics["reward_mean"], metrics["reward_std"])
    # `rayreward export` on the checkpoint gives the same model.
    assert main(["export", str(last), str(tmp_path / "exported")]) == 0
    assert_same_rewards(rewards_of(str(tmp_path / "exported")), trained)
    # The workers never evaluated; Ray scored both checkpoints (2 and 4) on the eval
    # pairs, and the exported one's metrics are the run's.
    assert not any(k in m for k in ("eval_runtime", "eval_samples_per_second") for _, m in
                   outcome.result.best_checkpoints), "the workers evaluated"
    evaluated = {m["step"]: m for _, m in outcome.result.best_checkpoints}
    assert sorted(evaluated) == [2, 4] and all(0 <= m["eval_accuracy"] <= 1 for m in evaluated.values())
    assert evaluated[4]["eval_pairs"] == outcome.metrics["data/eval_pairs"]
    assert outcome.metrics["eval_accuracy"] == evaluated[4]["eval_accuracy"]
    # Scored by the exported model at the end too: the same model, the same accuracy.
    assert outcome.metrics["final_accuracy"] == pytest.approx(evaluated[4]["eval_accuracy"])
    assert sum("evaluated beside training" in line for line in lines) == 2, lines

    # Run again, finished: nothing is trained (the Trainer, resumed at its last step,
    # would take one step more than planned), the same checkpoint is exported again.
    again = fit(fit_job, callbacks=[RecordStarts(str(starts))], print_fn=lines.append)
    assert starts.read_text() == "0\n"
    assert again.metrics["step"] == 4 and again.checkpoint == outcome.checkpoint
    # The checkpoint's metrics are reported again (a sweep's Tune gets them).
    assert again.result.metrics["step"] == 4 and again.result.metrics["loss"] == outcome.result.metrics["loss"]
    assert not list((tmp_path / "runs" / "z").glob("checkpoint-000005"))
    assert_same_rewards(rewards_of(again.model_dir), json.loads(probe.read_text()))
    # Neither run left an actor behind in the Ray that outlives them (the row counters
    # of its train and eval data).
    deadline = time.monotonic() + 15
    while tally_actors() > tallies_before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert tally_actors() <= tallies_before


@pytest.mark.timeout(420)
def test_zero3_lora_trains_and_exports_merged(ray_local, tmp_path):
    from safetensors.torch import load_file

    from rayreward.run.fit import fit

    probe = tmp_path / "probe.json"
    fit(job_for(str(tmp_path / "runs"), "z3", "deepspeed.stage=3", "lora.enabled=true", "lora.r=4",
                "train.learning_rate=5e-3"), callbacks=[RecordRewards(str(probe))])

    run = tmp_path / "runs" / "z3"
    last = run / "checkpoint-000008"
    assert (last / "adapter_model.safetensors").exists()
    # The run's manifest (base model, adapters, tokenizer) is what lets export rebuild it.
    from rayreward.core.checkpoint import read_manifest

    manifest = read_manifest(str(last))
    assert manifest.base_model.name_or_path == "builtin:tiny-llama" and manifest.adapters.r == 4
    # ZeRO-3: parameters and optimizer state are sharded; every rank saved its part.
    for rank in (0, 1):
        assert glob.glob(str(last / "global_step8" / f"zero_pp_rank_{rank}_*model_states.pt"))
    weights = load_file(str(run / "model" / "model.safetensors"))
    assert not [k for k in weights if "lora_" in k], "the export must have the adapters merged"
    assert_same_rewards(rewards_of(str(run / "model")), json.loads(probe.read_text()))


@pytest.mark.timeout(600)
def test_killed_worker_is_restarted_from_object_storage_and_the_run_completes(ray_local, tmp_path, moto_s3):
    from rayreward.core.checkpoint import export_checkpoint
    from rayreward.run.fit import fit

    # Rank 1's process killed at step 6: Ray restarts the worker group from the checkpoint
    # at step 4, read back from S3 (moto on loopback). ZeRO-2 with the optimizer offloaded
    # to CPU memory: DeepSpeed's CPU Adam (compiled on first use, cached in
    # TORCH_EXTENSIONS_DIR), its state restored from the checkpoint. (A user's re-run of
    # an interrupted run resumes the same way: test_interrupts.py.)
    starts, marker, probe = tmp_path / "starts.txt", tmp_path / "killed", tmp_path / "probe.json"
    outcome = fit(job_for("s3://rayreward/runs", "fault", "failure.max_failures=1", "deepspeed.stage=2",
                          "deepspeed.offload_optimizer=true"),
                  callbacks=[RecordStarts(str(starts)), KillRankOnce(str(marker), step=6), RecordRewards(str(probe))])
    assert marker.exists(), "rank 1 was not killed"
    assert starts.read_text().split() == ["0", "4"]  # restarted from the checkpoint at step 4
    assert outcome.metrics["step"] == 8 and outcome.metrics["max_steps"] == 8
    keys = {o["Key"] for o in moto_s3.list_objects_v2(Bucket="rayreward", Prefix="runs/fault/")["Contents"]}
    assert {"runs/fault/metrics.json", "runs/fault/model/model.safetensors",
            "runs/fault/checkpoint-000008/trainer_state.json"} <= keys
    state = json.loads(moto_s3.get_object(Bucket="rayreward", Key="runs/fault/checkpoint-000008/trainer_state.json")
                       ["Body"].read())
    # The log history spans both worker groups: steps 2 and 4 from the first, 6 and 8 after the restart.
    assert state["global_step"] == 8 and [e["step"] for e in state["log_history"] if "loss" in e] == [2, 4, 6, 8]
    export_checkpoint(outcome.checkpoint, str(tmp_path / "exported"))
    assert_same_rewards(rewards_of(str(tmp_path / "exported")), json.loads(probe.read_text()))
