"""What a checkpoint and a lost node cost: sync vs async upload, fixed vs elastic worker count.

    python benchmarks/bench_failover.py                 # records "Failover and checkpoints (issue 15)"
    python benchmarks/bench_failover.py --no-record

Three Ray nodes on this machine, all on 127.0.0.1 (``rayreward.runtime.local_cluster``): a head
with no CPUs and two worker nodes of 2 logical CPUs. 2 training workers (one per node),
the demo's tiny Llama, ZeRO-2 (ZeRO-0 for elastic), checkpoints to S3 (moto on loopback).

1. Checkpoint stall: rank 0 records the gap between the end of a step and the start of the
   next; a step that saves has the save (and, in sync mode, the upload) in that gap. The
   stall per checkpoint is the mean gap after saving steps minus the median gap after the
   others, for ``storage.checkpoint_upload`` sync and async, and with the demo's 400 eval
   pairs scored at each checkpoint by the workers (sync upload) or by Ray beside training
   (``storage.checkpoint_eval=ray``, async upload).
2. Node loss: node b is killed (``remove_node(allow_graceful=False)``) three steps (over
   3 s) after the first checkpoint, once Ray's controller has taken it. Fixed size (2 workers, STRICT_SPREAD): the node comes
   back ``--rejoin-s`` seconds later; elastic ([1, 2]): the run goes on with one worker.
   Recorded: seconds from the kill to the next finished step, and steps redone (the last
   step finished before the kill minus the checkpoint resumed from).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _measure import machine, record_section  # noqa: E402
from rayreward.runtime.local_cluster import with_start_retries  # noqa: E402

SECTION = "Failover and checkpoints (issue 15)"
KILL_AFTER = 7


def make_step_log(path: str):
    from transformers import TrainerCallback

    class StepLog(TrainerCallback):
        """Rank 0 appends ``event step world_size unix_time`` lines (begin/end/save/start)."""

        def __init__(self, path: str, pause_s: float):
            self.path, self.pause_s = path, pause_s

        def _write(self, event, args, state):
            if state.is_world_process_zero:
                with open(self.path, "a") as f:
                    f.write(f"{event} {state.global_step} {args.world_size} {time.time():.4f}\n")

        def on_train_begin(self, args, state, control, **kwargs):
            self._write("start", args, state)

        def on_step_begin(self, args, state, control, **kwargs):
            self._write("begin", args, state)

        def on_step_end(self, args, state, control, **kwargs):
            self._write("end", args, state)
            time.sleep(self.pause_s)

    return StepLog


def read_log(path: Path) -> list[tuple[str, int, int, float]]:
    return [(e, int(s), int(w), float(t)) for e, s, w, t in (l.split() for l in path.read_text().splitlines())]


def start_cluster(start_timeout_s: float):
    from rayreward.runtime.local_cluster import LocalCluster

    cluster = LocalCluster(("a", "b"), node_cpus=2)
    cluster.connect(runtime_env={"env_vars": {
        "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
        "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": str(start_timeout_s)}})
    return cluster


def start_moto():
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"})
    import boto3

    boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}").create_bucket(Bucket="bench")
    return server


# The stall part's modes: upload sync/async; with eval data, the checkpoint evaluated by
# the workers in the loop (train.eval_steps = save_steps) or by Ray beside training.
STALL_MODES = {
    "sync": ["storage.checkpoint_upload=sync"],
    "async": ["storage.checkpoint_upload=async"],
    "sync, eval in the loop": ["storage.checkpoint_upload=sync", "train.eval_strategy=steps",
                               "storage.checkpoint_eval=trainer"],
    "async, eval beside training": ["storage.checkpoint_upload=async", "storage.checkpoint_eval=ray"],
}


def job(name: str, *overrides: str):
    from rayreward.job.config import load_job_config

    return load_job_config(None, [
        "train.eval_strategy=no", "train.logging_steps=2", "data.eval=null", "scaling.cpus_per_worker=1",
        "data.tokenize_actors=2", "data.tokenize_num_cpus=0.5", "storage.path=s3://bench/runs",
        f"storage.name={name}", "storage.num_to_keep=null", *overrides,
    ])


def stall(log: Path, save_steps: int) -> dict:
    events = read_log(log)
    ends = {s: t for e, s, _, t in events if e == "end"}
    begins = {s: t for e, s, _, t in events if e == "begin"}
    # The gap after step k: from its end to the begin of step k + 1 (the Trainer's step
    # counter is k at that begin), minus the benchmark's own pause.
    gaps = {k: begins[k] - ends[k] for k in ends if k in begins}
    saving = [g for k, g in gaps.items() if k % save_steps == 0]
    other = [g for k, g in gaps.items() if k % save_steps and k > 1]
    return {"saves": len(saving), "stall_s": statistics.mean(saving) - statistics.median(other),
            "step_gap_s": statistics.median(other)}


def fit_until_killed(cluster, the_job, log: Path, kill_after_step: int, rejoin_s: float | None, pause_s: float):
    from rayreward.run.fit import fit

    box = {}
    thread = threading.Thread(target=lambda: box.update(outcome=fit(the_job, callbacks=[make_step_log(str(log))(
        str(log), pause_s)], print_fn=lambda line: None)), daemon=True)
    thread.start()
    while not log.exists() or not any(e == "end" and s >= kill_after_step for e, s, _, _ in read_log(log)):
        if not thread.is_alive():
            raise RuntimeError("the run ended before the kill")
        time.sleep(0.1)
    killed_at = time.time()
    cluster.kill("b")
    if rejoin_s is not None:
        time.sleep(rejoin_s)
        cluster.add("b")
    thread.join()
    if "outcome" not in box:
        raise RuntimeError("the run failed")
    if "b" not in cluster.nodes:
        cluster.add("b")
    events = read_log(log)
    before = max(s for e, s, _, t in events if e == "end" and t <= killed_at)
    restarts = [(s, w, t) for e, s, w, t in events if e == "start" and t > killed_at]
    resumed_from, world, restarted_at = restarts[0]
    # The first step the new worker group finishes (the old group's survivors may still
    # log a step or two between the kill and their own failure).
    again = min(t for e, s, _, t in events if e == "end" and t > restarted_at)
    return {"to_training_s": again - killed_at, "steps_redone": before - resumed_from,
            "resumed_from": resumed_from, "world_after": world, "final_step": box["outcome"].metrics["step"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--save-steps", type=int, default=3)
    parser.add_argument("--rejoin-s", type=float, default=10.0)
    parser.add_argument("--parts", default="stall,fixed,elastic")
    parser.add_argument("--start-timeout-s", type=float, default=20.0,
                        help="Ray Train's wait for a worker group to start (RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S; "
                             "Ray's default is 60)")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args(argv)
    import ray

    parts = args.parts.split(",")
    server = start_moto()
    if parts == ["stall"]:
        # The stall needs no second node: one local Ray with 4 logical CPUs starts faster.
        cluster = None
        with_start_retries(lambda: ray.init(
            address="local", num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1",
            logging_level="WARNING",
            runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}}))
    else:
        cluster = start_cluster(args.start_timeout_s)
    work = Path(tempfile.mkdtemp(prefix="bench-failover-"))
    load = os.getloadavg()
    results: dict = {}
    try:
        from rayreward.data.tokenizer import SAMPLE_DATA_DIR

        evaluated = [f"data.eval={SAMPLE_DATA_DIR / 'eval.jsonl'}", f"train.eval_steps={args.save_steps}"]
        for mode, extra in STALL_MODES.items() if "stall" in parts else ():
            slug = mode.replace(", ", "-").replace(" ", "-")
            log = work / f"stall-{slug}.log"
            from rayreward.run.fit import fit

            if "eval" in mode:
                extra = [*extra, *evaluated]
            fit(job(f"stall-{slug}", f"train.max_steps={args.steps}", f"train.save_steps={args.save_steps}",
                    "scaling.num_workers=2", "scaling.placement_strategy=SPREAD", "deepspeed.stage=2", *extra),
                callbacks=[make_step_log(str(log))(str(log), 0.0)], print_fn=lambda line: None)
            results[f"stall_{mode}"] = stall(log, args.save_steps)
            print(mode, results[f"stall_{mode}"], flush=True)
        for mode in [p for p in ("fixed", "elastic") if p in parts]:
            # Elastic: Ray sizes the group by free resources, not placement; 1.5 CPUs a
            # worker on 2-CPU nodes makes one node hold one worker.
            overrides = ["scaling.num_workers=2", "deepspeed.stage=2", "scaling.placement_strategy=STRICT_SPREAD"] \
                if mode == "fixed" else ["scaling.num_workers=[1, 2]", "deepspeed.stage=0", "scaling.resize_check_s=600",
                                         "scaling.cpus_per_worker=1.5", "scaling.placement_strategy=SPREAD"]
            the_job = job(f"lost-{mode}", f"train.max_steps={args.steps}", "train.save_steps=4",
                          "failure.max_failures=3", *overrides)
            # Killed 3 steps (over 3 s) after the checkpoint at step 4, once Ray has taken it
            # (its controller polls the workers' reports every 2 s).
            results[mode] = fit_until_killed(cluster, the_job, work / f"{mode}.log", kill_after_step=KILL_AFTER,
                                             rejoin_s=args.rejoin_s if mode == "fixed" else None, pause_s=1.0)
            print(mode, results[mode], flush=True)
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        server.stop()
    load_after = os.getloadavg()
    info = machine()
    command = "python benchmarks/bench_failover.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [f"Machine: {info['cpu']}, {info['nproc']} cores, {info['date']}; load average (1/5/15 min) "
             f"{load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} before, {load_after[0]:.1f}/{load_after[1]:.1f}/"
             f"{load_after[2]:.1f} after (other engineers' jobs share the machine).",
             f"Command: `{command.strip()}`. " + ("One local Ray node (4 logical CPUs), 2 workers" if cluster is None
                                                 else "3 Ray nodes on 127.0.0.1, 2 workers (one per node), "
                                                 f"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S={args.start_timeout_s:g}")
             + ", tiny Llama, ZeRO-2, checkpoints to S3 (moto on loopback).", ""]
    if "stall_sync" in results:
        base = results["stall_sync"]["stall_s"]
        lines += ["| checkpoint | checkpoints | stall per checkpoint | vs sync upload, no eval | "
                  "median gap between steps |", "| --- | --- | --- | --- | --- |"]
        for mode in STALL_MODES:
            r = results[f"stall_{mode}"]
            ratio = f"{r['stall_s'] / base:.2f}x" if base > 0 else "-"
            lines.append(f"| {mode} | {r['saves']} | {r['stall_s']:.2f} s | {ratio} | {r['step_gap_s']:.3f} s |")
        lines.append("")
    if any(m in results for m in ("fixed", "elastic")):
        lines += [f"| node lost after step {KILL_AFTER} (checkpoint at 4) | kill -> training again | steps redone | "
                  "resumed on | final step |", "| --- | --- | --- | --- | --- |"]
        for mode in ("fixed", "elastic"):
            if mode in results:
                r = results[mode]
                label = f"fixed, 2 workers (node back after {args.rejoin_s:.0f} s)" if mode == "fixed" else \
                    "elastic [1, 2]"
                lines.append(f"| {label} | {r['to_training_s']:.1f} s | {r['steps_redone']} | "
                             f"{r['world_after']} worker(s) from step {r['resumed_from']} | {r['final_step']} |")
    body = "\n".join(lines) + "\n"
    print(body)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "failover.json").write_text(json.dumps({"results": results, "machine": info}, indent=1))
    if not args.no_record:
        record_section(SECTION, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
