"""Trainer callbacks of the distributed loop: report checkpoints to Ray, show progress.

``ReportCheckpoints`` replaces Ray's ``RayTrainReportCallback`` because that one copies
``get_last_checkpoint(output_dir)`` from every rank as if rank 0's folder held
everything. Under DeepSpeed each rank writes its own shard files (ZeRO-1/2 optimizer
state, ZeRO-3 parameters, every rank's RNG state) into its own local folder; here
every rank reports its folder and Ray merges them into one checkpoint in storage.
"""

from __future__ import annotations

import json
import math
import os
import time

from transformers import TrainerCallback

JOB_FILE = "rayreward_job.json"


def latest_metrics(log_history: list[dict], step: int, steps_per_epoch: int | None) -> dict:
    """The latest value of every logged metric, with the step and the true epoch.

    The Trainer sees the Ray Data stream as a single epoch, so its own ``epoch`` is the
    fraction of ``max_steps``; the epoch over the data is recomputed from the plan.
    """
    metrics: dict = {}
    for entry in log_history:
        metrics.update(entry)
    metrics["step"] = step
    metrics["epoch"] = round(step / steps_per_epoch, 4) if steps_per_epoch else None
    return metrics


class ReportCheckpoints(TrainerCallback):
    """After each save, every rank reports its checkpoint files (merged by Ray) and
    rank 0's metrics; the job config goes into the checkpoint for ``rayreward export``."""

    def __init__(self, job: dict, steps_per_epoch: int | None):
        self.job, self.steps_per_epoch = job, steps_per_epoch

    def on_save(self, args, state, control, **kwargs):
        import ray.train

        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if state.is_world_process_zero and os.path.isdir(folder):
            with open(os.path.join(folder, JOB_FILE), "w", encoding="utf-8") as f:
                json.dump(self.job, f, indent=1)
        has_files = os.path.isdir(folder) and bool(os.listdir(folder))
        checkpoint = ray.train.Checkpoint.from_directory(folder) if has_files else None
        # Every rank calls report (it is a barrier); Ray keeps rank 0's metrics.
        ray.train.report(
            latest_metrics(state.log_history, state.global_step, self.steps_per_epoch),
            checkpoint=checkpoint,
            checkpoint_dir_name=f"checkpoint-{state.global_step:06d}",
            delete_local_checkpoint_after_upload=has_files,
        )


class Progress(TrainerCallback):
    """Rank 0 prints one line per log: step, loss, accuracy, rate and ETA."""

    def __init__(self, steps_per_epoch: int | None, print_fn=None):
        self.steps_per_epoch, self.print = steps_per_epoch, print_fn or _write_line
        self.start_time = self.start_step = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start_time, self.start_step = time.monotonic(), state.global_step
        if state.is_world_process_zero and state.global_step:
            self.print(f"[rayreward] resumed at step {state.global_step}/{state.max_steps}")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or self.start_time is None:
            return
        step, total = state.global_step, state.max_steps
        done = step - self.start_step
        elapsed = time.monotonic() - self.start_time
        rate = done / elapsed if elapsed > 0 and done > 0 else 0.0
        parts = [f"step {step}/{total}"]
        if self.steps_per_epoch:
            parts.append(f"epoch {step / self.steps_per_epoch:.2f}")
        for key, label in (("loss", "loss"), ("accuracy", "acc"), ("eval_loss", "eval_loss"),
                           ("eval_accuracy", "eval_acc")):
            if key in logs and isinstance(logs[key], (int, float)) and math.isfinite(logs[key]):
                parts.append(f"{label} {logs[key]:.4f}")
        if rate:
            eta = (total - step) / rate
            parts.append(f"{rate:.2f} steps/s")
            parts.append(f"ETA {int(eta // 60)}m{int(eta % 60):02d}s")
        self.print("[rayreward] " + " | ".join(parts))


def _write_line(line: str) -> None:
    # Straight to stdout: Ray Train's patched print() reaches the driver twice.
    import sys

    sys.stdout.write(line + "\n")
    sys.stdout.flush()
