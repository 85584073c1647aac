"""Distributed training: Ray ``TorchTrainer`` workers each running ``RewardTrainer`` under DeepSpeed.

``fit(job)`` runs on the driver (Ray already initialised) in numbered steps:
config -> data -> run spec -> trainer -> fit -> export. Each worker runs ``train_loop``
on the run spec (``rayreward.run.spec``), built once on the driver:
resume point -> arguments -> model -> data shards -> ``RewardTrainer`` -> train.

Checkpoints go to ``<storage.path>/<run name>/checkpoint-NNNNNN`` (every rank's files
merged by Ray); re-running with the same run name resumes the latest one, and a worker
that dies makes Ray restart the group from it (``failure.max_failures``). The final
model is exported to ``<run>/model`` and the final metrics to ``<run>/metrics.json``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Sequence

from rayreward.core.universal import needs_universal, saved_world_size, universal_resume_folder, with_universal_loading
from rayreward.runtime import storage as _storage
from rayreward.job.config import JobConfig, resolve_scaling, run_name, storage_uri, tokenizer_spec
from rayreward.run.spec import RunSpec, run_spec

logger = logging.getLogger(__name__)

# Forwarded to the workers (they run in the Ray cluster's environment, not the driver's).
_FORWARDED_ENV = ("HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM", "TORCH_EXTENSIONS_DIR", "HF_HOME")


@dataclass
class RunOutcome:
    """Where a finished run put things, and its final metrics.

    Attributes:
        run_dir: ``<storage.path>/<run name>``.
        model_dir: the exported model (``<run_dir>/model``).
        metrics_path: ``<run_dir>/metrics.json``.
        checkpoint: the checkpoint the model was exported from (path or URI).
        metrics: the final metrics (rank 0's last report, the step plan, data counts).
        result: Ray's ``Result``.
    """

    run_dir: str
    model_dir: str
    metrics_path: str
    checkpoint: str
    metrics: dict[str, Any]
    result: Any


def fit(job: JobConfig, callbacks: Sequence = (), print_fn=print, progress=None, preflight: bool = True
        ) -> RunOutcome:
    """Trains, checkpoints and exports a reward model on the Ray cluster this process is connected to.

    Args:
        job: a validated ``JobConfig`` (``load_job_config``).
        callbacks: extra ``transformers.TrainerCallback`` instances, pickled to every
            worker (each runs on all ranks).
        print_fn: where the driver's progress lines go.
        progress: a ``ray.util.queue.Queue`` that rank 0 also puts its progress events
            into (``rayreward.run.callbacks.Progress``), for a console on the driver.
        preflight: check the job's data, model and storage first (``rayreward.checks.job``,
            what ``rayreward train`` runs before Ray starts); False when the caller did.

    Returns:
        A ``RunOutcome``.

    Raises:
        PreflightError: the job's inputs have problems (every one listed), before any work.
        ray.train.TrainingFailedError: the workers failed more than ``failure.max_failures`` times.

    Example:
        >>> ray.init(address="local", num_cpus=4)
        >>> outcome = fit(load_job_config("examples/configs/tiny_cpu.yaml"))
        >>> outcome.metrics["eval_accuracy"]
    """
    from rayreward.data import build_datasets

    # 1. Config: its inputs checked, the values derived from it (GPUs or not, when left
    # to the cluster).
    if preflight:
        run_preflight(job, print_fn)
    job = resolve_scaling_on_cluster(job, print_fn)
    name, storage = run_name(job), storage_uri(job)
    fs = _storage.filesystem(storage)[0] if _storage.is_uri(storage) else None
    run_dir = _storage.join(storage, name)

    # 2. Data: tokenized on the cluster, counted before training.
    prepared = build_datasets(job.data, tokenizer_spec(job), job.train["attributes"])

    try:
        # 3. The run spec: what every worker needs, decided here once (steps, DeepSpeed, ...).
        spec = run_spec(job, prepared)
        plan = spec.steps
        print_fn(f"[rayreward] run {name}: {prepared.num_train_pairs} training {prepared.unit}, "
                 f"{_describe_workers(job.scaling)}, ZeRO-{spec.zero_stage}, "
                 f"{plan.steps_per_epoch} steps/epoch, {plan.max_steps} steps; checkpoints in {run_dir}")

        # 4. Trainer: one TorchTrainer, the worker loop below.
        s = job.scaling
        trainer = build_trainer(job, prepared, name, storage, callbacks, progress=progress, spec=spec)

        # 5. Fit.
        result = _fit_interruptibly(trainer)

        # 6. Export the final (or best) checkpoint where a worker could run (not in this
        # driver: the head of a cluster is sized for drivers), and score the eval pairs with
        # the exported model there (headline metrics, reward stats stored in its config for
        # `score --normalize`).
        from rayreward.run.final_eval import export_and_summarize, headline_line

        checkpoint = _final_checkpoint(result, job)
        model_dir, metrics_path = _storage.join(run_dir, "model"), _storage.join(run_dir, "metrics.json")
        where = checkpoint.path if fs is None else f"{_scheme(storage)}{checkpoint.path}"
        final = export_and_summarize(where, model_dir, prepared.eval, job, prepared.kind)
        metrics = {k: v for k, v in (result.metrics or {}).items() if _is_jsonable(v)}
        if job.storage.checkpoint_eval == "ray":
            metrics.update(_checkpoint_evals(result, checkpoint, print_fn))
        # 7. Sum up.
        metrics.update(final)
        if "final_loss" in final:
            print_fn(f"[rayreward] exported model on the eval {prepared.unit}: {headline_line(metrics)}")
        metrics.update(run=name, max_steps=plan.max_steps, steps_per_epoch=plan.steps_per_epoch,
                       num_workers=s.num_workers, zero_stage=spec.zero_stage,
                       checkpoint=_storage.join(run_dir, os.path.basename(checkpoint.path)), model_dir=model_dir,
                       **prepared.metrics())
        _storage.write_text(metrics_path, json.dumps(metrics, indent=1, sort_keys=True) + "\n")
        return RunOutcome(run_dir, model_dir, metrics_path, metrics["checkpoint"], metrics, result)
    finally:
        prepared.release()


def run_preflight(job: JobConfig, print_fn=print, search_space: dict | None = None) -> None:
    """The checks ``rayreward train`` and ``tune`` run before Ray starts, for the Python
    entry points: notes printed, every problem raised at once (a sweep passes its
    ``search_space``).

    Raises:
        PreflightError: the job's data, model or storage have problems.
    """
    from rayreward.checks.job import preflight_job

    found = preflight_job(job, search_space=search_space)
    for note in found.notes:
        print_fn(f"[rayreward] note: {note}")
    found.raise_if_any("the inputs of the job")


def resolve_scaling_on_cluster(job: JobConfig, print_fn=print) -> JobConfig:
    """``scaling.use_gpu: auto`` decided by the GPUs of the Ray cluster this process is
    connected to, said in one line; a job that names it is returned as it is."""
    if job.scaling.use_gpu != "auto":
        return job
    import ray

    job, notice = resolve_scaling(job, ray.cluster_resources().get("GPU", 0))
    print_fn(f"[rayreward] {notice}")
    return job


def build_trainer(job: JobConfig, prepared, name: str, storage: str, callbacks: Sequence = (),
                  run_callbacks: Sequence = (), progress=None, spec: RunSpec | None = None):
    """The ``TorchTrainer`` of a job on its prepared data, checkpointing under ``<storage>/<name>``.

    ``fit`` builds one per run; a Tune trial (``rayreward.tune.sweep``) builds one per trial,
    with its own ``name``/``storage`` and Tune's report callback in ``run_callbacks``.

    Args:
        job: a validated ``JobConfig``.
        prepared: its data, from ``rayreward.data.build_datasets``.
        name: the run's folder under ``storage``.
        storage: a local path or URI (``storage_uri(job)`` for a plain run).
        callbacks: ``transformers.TrainerCallback`` instances, pickled to every worker.
        run_callbacks: Ray Train callbacks for ``RunConfig(callbacks=...)``.
        progress: a queue for rank 0's progress events (see ``fit``).
        spec: the job's ``RunSpec`` when the caller already built it
            (``rayreward.run.spec.run_spec``); else built here.

    Returns:
        The ``TorchTrainer``, not yet fitted.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from rayreward.run.final_eval import checkpoint_validation
    from rayreward.run.loopback import loopback_torch_config
    from rayreward.runtime.ray_session import on_loopback

    job = resolve_scaling_on_cluster(job, logger.info)
    spec = spec if spec is not None else run_spec(job, prepared)
    s = job.scaling
    fs, storage_path = _storage.filesystem(storage) if _storage.is_uri(storage) else (None, storage)
    resources = {"CPU": s.cpus_per_worker, **({"GPU": s.gpus_per_worker} if s.use_gpu else {}), **s.resources}
    env = {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ}
    return TorchTrainer(
        train_loop,
        train_loop_config={"spec": spec, "callbacks": list(callbacks), "progress": progress},
        # All nodes on 127.0.0.1 (embedded Ray, test clusters): the rendezvous listens there too.
        torch_config=loopback_torch_config() if on_loopback() else None,
        scaling_config=ScalingConfig(
            num_workers=tuple(s.num_workers) if s.elastic else s.num_workers, use_gpu=s.use_gpu,
            resources_per_worker=resources, placement_strategy=s.placement_strategy,
            elastic_resize_monitor_interval_s=s.resize_check_s,
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=fs,
            checkpoint_config=CheckpointConfig(
                num_to_keep=job.storage.num_to_keep,
                checkpoint_score_attribute=job.storage.checkpoint_score_attribute,
                checkpoint_score_order=job.storage.checkpoint_score_order,
            ),
            failure_config=FailureConfig(max_failures=job.failure.max_failures),
            worker_runtime_env={"env_vars": env},
            callbacks=list(run_callbacks),
        ),
        datasets=prepared.datasets(),
        dataset_config=_data_config(s.elastic),
        validation_config=(checkpoint_validation(prepared.eval, s, prepared.kind, job.train["loss_type"])
                           if spec.checkpoints.validate else None),
    )


def _data_config(elastic: bool):
    from ray.train import DataConfig

    if not elastic:
        return DataConfig()
    # Elastic: every worker reads the whole training set in one repeatable order and
    # takes its slice of each global batch (GlobalBatchStream); eval is still split.
    options = DataConfig.default_ingest_options()
    options.preserve_order = True
    return DataConfig(datasets_to_split=["eval"], execution_options={"train": options})


def train_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: resumes or starts, builds the model and trainer, trains.

    Args:
        config: ``{"spec": RunSpec, "callbacks": [TrainerCallback], "progress": queue or None}``
            from ``build_trainer``.
    """
    import ray.train
    from transformers.trainer_callback import PrinterCallback

    from rayreward.core.config import RewardConfig
    from rayreward.core.model import load_base_model, peft_config_for
    from rayreward.core.packed import plan_packing
    from rayreward.core.trainer import RewardTrainer
    from rayreward.data.feeding import batch_streams
    from rayreward.data.tokenizer import fit_embeddings, is_builtin
    from rayreward.run.callbacks import Progress, ReportCheckpoints

    spec: RunSpec = config["spec"]
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    # The data shards are asked for before anything costly: the first request starts Ray
    # Data's split coordinators (new processes), which then come up while this worker
    # loads the checkpoint and the model, not after (3-4 s of each start on 2 cores).
    shards = {name: ray.train.get_dataset_shard(name) for name in (("train", "eval") if spec.feed.has_eval
                                                                   else ("train",))}
    with contextlib.ExitStack() as stack:
        # 1. Where to start: the run's latest checkpoint, when there is one (a restart, a
        # resize, a re-run). Its ZeRO shards decide how DeepSpeed loads it, so it is looked
        # at before the arguments.
        resume, ds_config = _resume_point(stack, spec.deepspeed, rank, world_size)

        # 2. Model, arguments, tokenizer. A model loaded from files is loaded after the
        # arguments: under ZeRO-3 it is then partitioned as it loads (zero.Init). A built-in
        # model is built before them, with no zero.Init: its random initialisation must be
        # the one `rayreward export` rebuilds as the base of a LoRA checkpoint.
        builtin = is_builtin(spec.model.name_or_path)
        num_labels = len(spec.training_args.get("attributes") or ()) or 1  # one head output per reward attribute
        model = load_base_model(spec.model, num_labels) if builtin else None
        output_dir = tempfile.mkdtemp(prefix=f"rayreward-rank{rank}-")
        args = RewardConfig(**spec.reward_config_kwargs(output_dir, world_size, ds_config))
        if ds_config:
            import deepspeed

            from rayreward.runtime.native_ops import use_environment_ninja

            use_environment_ninja()  # init_distributed builds or loads DeepSpeed's communication op
            # Adopt Ray's process group now: ZeRO-3's zero.Init needs the world size at load.
            deepspeed.init_distributed()
        if not builtin:
            # A pretrained model's new head is initialised at random, seeded by train.seed.
            model = load_base_model(spec.model, num_labels, seed=args.seed)
        # The tokenizer Ray Data tokenized with (same spec): its ids are the ones in the shards.
        tokenizer = spec.tokenizer.load()
        fit_embeddings(model, tokenizer)

        # 3. Data: this worker's shards, as collated batches; packed (decoders) or
        # length-grouped (encoders) as the speed switches of `train` resolve for this model.
        train, evaluation = batch_streams(spec.feed, shards.__getitem__, tokenizer, plan_packing(model, args),
                                          rank=rank, world_size=world_size)
        # Ratings with standardised targets: the statistics of the whole training set.
        train.label_stats = spec.label_stats

        # 4. Trainer, fed by Ray Data: it loads a BatchStream as it comes (see BatchStream).
        progress = Progress(spec.steps.steps_per_epoch, sink=config.get("progress"))
        report = ReportCheckpoints(spec.checkpoints.manifest, spec.steps.steps_per_epoch, spec.checkpoints.upload,
                                   validate=spec.checkpoints.validate)
        trainer = RewardTrainer(model=model, args=args, tokenizer=tokenizer, train_dataset=train,
                                eval_dataset=evaluation, peft_config=peft_config_for(spec.lora),
                                callbacks=[report, progress, *config["callbacks"]])
        # Progress prints the lines (with rate and ETA); the Trainer's own dict printer goes.
        trainer.remove_callback(PrinterCallback)

        # 5. Train, from the run's latest checkpoint when there is one.
        if resume is None:
            trainer.train()
        elif not _finished(resume, args.max_steps, spec.steps.steps_per_epoch, progress, rank, world_size):
            trainer.train(resume_from_checkpoint=resume)


def _resume_point(stack: contextlib.ExitStack, ds_config: dict[str, Any], rank: int, world_size: int
                  ) -> tuple[str | None, dict[str, Any]]:
    """The local folder of the run's latest checkpoint (or None), and the DeepSpeed config to load it with."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None, ds_config
    resume = stack.enter_context(checkpoint.as_directory())
    if ds_config and needs_universal(resume, world_size):
        # Saved at another world size (an elastic run that shrank or grew): resumed
        # through DeepSpeed's universal checkpoint, optimizer state included.
        if rank == 0:
            logger.info("resuming %s (ZeRO shards of %s ranks) on %s ranks through DeepSpeed's universal "
                        "checkpoint", resume, saved_world_size(resume), world_size)
        return universal_resume_folder(resume), with_universal_loading(ds_config)
    return resume, ds_config


def _finished(resume: str, max_steps: int, steps_per_epoch: int | None, progress, rank: int, world_size: int) -> bool:
    """Whether the checkpoint to resume from is the run's last one; if so its metrics are
    reported once more (for a sweep's trial interrupted before Tune had them)."""
    import ray.train

    from rayreward.run.callbacks import latest_metrics

    done, history = checkpoint_state(resume)
    if done is None or done < max_steps:
        return False
    # A re-run of a finished run, a restart after the last save, a resumed sweep trial:
    # the Trainer would take one more step than planned from it. Nothing is left to train.
    if rank == 0:
        progress.emit(f"[rayreward] resumed at step {done}/{max_steps}: the run is complete, "
                      "nothing left to train", done, max_steps, "resume")
    metrics = latest_metrics(history, done, steps_per_epoch)
    ray.train.report({**metrics, "world_size": world_size})
    return True


def checkpoint_state(folder: str) -> tuple[int | None, list[dict]]:
    """The optimizer step a Trainer checkpoint was saved at and its log history
    (its ``trainer_state.json``), or ``(None, [])``."""
    try:
        with open(os.path.join(folder, "trainer_state.json")) as f:
            state = json.load(f)
    except (OSError, ValueError):
        return None, []
    step, history = state.get("global_step"), state.get("log_history")
    return (step if isinstance(step, int) else None), (history if isinstance(history, list) else [])


def _fit_interruptibly(trainer):
    # Ray Train installs its own SIGINT handler when fit() runs on the main thread; it
    # ends the process with SystemExit(0) or exit status 1 and no word on resuming. On
    # a thread, Ctrl-C stays a KeyboardInterrupt here, and the command stops the
    # session and says how to resume (rayreward.commands.train).
    import threading

    outcome: dict = {}

    def run():
        try:
            outcome["result"] = trainer.fit()
        except BaseException as exc:  # noqa: BLE001 - re-raised on the calling thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="rayreward-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.5)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def _describe_workers(scaling) -> str:
    if scaling.elastic:
        return f"{scaling.min_workers}-{scaling.max_workers} workers (elastic)"
    return f"{scaling.num_workers} worker{'s' if scaling.num_workers != 1 else ''}"


def _checkpoint_evals(result, exported, print_fn) -> dict:
    """The eval lines of the checkpoints Ray evaluated beside training, and the exported
    checkpoint's eval metrics for the run's metrics."""
    from rayreward.run.eval_scores import summary_line

    evaluated = sorted(((m.get("step", 0), m) for _, m in result.best_checkpoints or () if m and "eval_seconds" in m),
                       key=lambda item: item[0])
    for step, m in evaluated:
        # Pairs keep their short line; groups and ratings show their own metrics.
        shown = (f"eval_acc {m['eval_accuracy']:.4f}" if "eval_mean_margin" in m else summary_line(m, "eval_"))
        print_fn(f"[rayreward] checkpoint at step {step} (evaluated beside training in {m.get('eval_seconds', 0):.1f} s): "
                 f"eval_loss {m['eval_loss']:.4f} | {shown}")
    for c, m in result.best_checkpoints or ():
        if c.path == exported.path and m:
            return {k: v for k, v in m.items() if k.startswith("eval_") and _is_jsonable(v)}
    return {}


def _final_checkpoint(result, job: JobConfig):
    if job.storage.checkpoint_score_attribute and result.best_checkpoints:
        attr = job.storage.checkpoint_score_attribute
        sign = 1 if job.storage.checkpoint_score_order == "max" else -1
        scored = [(c, m) for c, m in result.best_checkpoints if attr in (m or {})]
        if scored:
            return max(scored, key=lambda cm: sign * cm[1][attr])[0]
    if result.checkpoint is None:
        raise RuntimeError(f"the run {job.storage.name} ended without a checkpoint; check train.save_steps")
    return result.checkpoint


def _scheme(uri: str) -> str:
    return uri.split("://", 1)[0] + "://"


def _is_jsonable(value) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False
