"""Trainer callbacks of the distributed loop: report checkpoints to Ray, show progress.

``ReportCheckpoints`` replaces Ray's ``RayTrainReportCallback`` because that one copies
``get_last_checkpoint(output_dir)`` from every rank as if rank 0's folder held
everything. Under DeepSpeed each rank writes its own shard files (ZeRO-1/2 optimizer
state, ZeRO-3 parameters, every rank's RNG state) into its own local folder; here
every rank reports its folder and Ray merges them into one checkpoint in storage.
"""

from __future__ import annotations

import math
import os
import time

from transformers import TrainerCallback

from rayreward.core.checkpoint import CheckpointManifest, write_manifest


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


def checkpoint_name(step: int) -> str:
    """The folder name of a run's checkpoint at optimizer step ``step`` in its storage."""
    return f"checkpoint-{step:06d}"


class ReportCheckpoints(TrainerCallback):
    """After each save, every rank reports its checkpoint files (merged by Ray) and
    rank 0's metrics; rank 0 writes the run's manifest into the checkpoint for
    ``rayreward export`` (``rayreward.core.checkpoint.write_manifest``).

    With ``upload="async"`` Ray copies the files to storage in a background thread and
    training goes on at once (``CheckpointUploadMode.ASYNC``); the local copy is
    deleted once uploaded, and a checkpoint counts (for resume and export) only when
    every rank's upload has finished. With ``validate`` each checkpoint is also handed
    to the run's ``ValidationConfig`` (``storage.checkpoint_eval=ray``), evaluated by Ray
    beside training.
    """

    def __init__(self, manifest: CheckpointManifest, steps_per_epoch: int | None, upload: str = "sync",
                 validate: bool = False):
        self.manifest, self.steps_per_epoch, self.upload, self.validate = manifest, steps_per_epoch, upload, validate

    def on_save(self, args, state, control, **kwargs):
        import ray.train

        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if state.is_world_process_zero and os.path.isdir(folder):
            write_manifest(folder, self.manifest)
        has_files = os.path.isdir(folder) and bool(os.listdir(folder))
        checkpoint = ray.train.Checkpoint.from_directory(folder) if has_files else None
        metrics = latest_metrics(state.log_history, state.global_step, self.steps_per_epoch)
        metrics["world_size"] = ray.train.get_context().get_world_size()
        mode = ray.train.CheckpointUploadMode.ASYNC if self.upload == "async" else ray.train.CheckpointUploadMode.SYNC
        # Every rank calls report (it is a barrier); Ray keeps rank 0's metrics.
        ray.train.report(
            metrics,
            checkpoint=checkpoint,
            checkpoint_dir_name=checkpoint_name(state.global_step),
            checkpoint_upload_mode=mode,
            delete_local_checkpoint_after_upload=has_files,
            validation=self.validate and checkpoint is not None,
        )


class Progress(TrainerCallback):
    """Rank 0 reports each log: step, loss, accuracy, rate and ETA.

    The line goes to the worker's stdout (the run's log); with a ``sink`` (a
    ``ray.util.queue.Queue`` from the driver) the same event also goes there, for the
    driver's console to show as a line or a live bar (``rayreward.runtime.console``).
    """

    def __init__(self, steps_per_epoch: int | None, print_fn=None, sink=None):
        self.steps_per_epoch, self.print, self.sink = steps_per_epoch, print_fn or _write_line, sink
        self.start_time = self.start_step = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start_time, self.start_step = time.monotonic(), state.global_step
        if state.is_world_process_zero and state.global_step:
            self.emit(f"[rayreward] resumed at step {state.global_step}/{state.max_steps}",
                       state.global_step, state.max_steps, "resume")

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
        metrics = [f"{label} {logs[key]:.4f}" for key, label in (("loss", "loss"), ("accuracy", "acc"),
                                                                  ("eval_loss", "eval_loss"),
                                                                  ("eval_accuracy", "eval_acc"))
                   if key in logs and isinstance(logs[key], (int, float)) and math.isfinite(logs[key])]
        if not metrics:
            return  # the Trainer's closing summary (runtime, mean loss): nothing new to show
        parts += metrics
        if rate:
            eta = (total - step) / rate
            parts.append(f"{rate:.2f} steps/s")
            parts.append(f"ETA {int(eta // 60)}m{int(eta % 60):02d}s")
        kind = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        self.emit("[rayreward] " + " | ".join(parts), step, total, kind)

    def emit(self, line: str, step: int, total: int, kind: str) -> None:
        """A line of the run's own (rank 0) to the log and, with a sink, the driver's console."""
        self.print(line)
        if self.sink is not None:
            try:
                self.sink.put_nowait({"line": line, "step": step, "total": total, "kind": kind})
            except Exception as exc:  # noqa: BLE001 - the console is a view: training goes on without it
                self.print(f"[rayreward] progress lines stop reaching the console: {exc!r}")
                self.sink = None


def _write_line(line: str) -> None:
    # Straight to stdout: Ray Train's patched print() reaches the driver twice.
    import sys

    sys.stdout.write(line + "\n")
    sys.stdout.flush()
