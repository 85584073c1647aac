"""Several Ray nodes on one machine (all on 127.0.0.1): placement, node loss, elastic runs, async uploads.

``ray.cluster_utils.Cluster`` starts a head with no CPUs and two worker nodes of two
logical CPUs each, so the training workers can only run on the worker nodes and a
node can be killed (``remove_node(allow_graceful=False)``) under a running job.
Real DeepSpeed, the tiny model, the bundled sample text; a few steps per run.
"""

from __future__ import annotations

import itertools
import json
import sys
import threading
import time
from pathlib import Path

import pytest
from transformers import TrainerCallback

pytestmark = pytest.mark.slow

NODE_CPUS = 2


@pytest.fixture(autouse=True)
def _ship_this_module_by_value():
    # The callbacks below travel to the Ray workers, which cannot import this test module.
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def cluster():
    import ray

    # This module needs its own multi-node Ray; a session Ray started by other modules
    # (conftest's ray_local) is stopped here and started again afterwards.
    from rayreward.runtime.local_cluster import LocalCluster

    had_session_ray = ray.is_initialized()
    if had_session_ray:
        ray.shutdown()
    # A head with no CPUs and worker nodes a and b (custom resources name them).
    two = LocalCluster(("a", "b"), node_cpus=NODE_CPUS)
    # Ray Train gives a worker group 60 s to start; an elastic run that asked for a size
    # the cluster no longer has (a node just lost) tries again sooner.
    two.connect(runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                                          "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "20"}})
    yield two
    two.shutdown()
    if had_session_ray:
        ray.init(address="local", num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1",
                 logging_level="WARNING",
                 runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}})


@pytest.fixture
def two_nodes(cluster):
    """The cluster with both worker nodes up (a test that killed one may have left it out)."""
    import ray

    for name in ("a", "b"):
        if name not in cluster.nodes:
            cluster.add(name)
    cluster.cluster.wait_for_nodes()
    deadline = time.monotonic() + 60
    while ray.cluster_resources().get("CPU", 0) < 2 * NODE_CPUS and time.monotonic() < deadline:
        time.sleep(0.5)
    return cluster


class RecordStarts(TrainerCallback):
    """Appends ``rank node_id world_size global_step`` each time training (re)starts on a rank."""

    def __init__(self, path: str):
        self.path = path

    def on_train_begin(self, args, state, control, **kwargs):
        import ray

        with open(self.path, "a") as f:
            f.write(f"{args.process_index} {ray.get_runtime_context().get_node_id()} {args.world_size} "
                    f"{state.global_step}\n")


class SlowSteps(TrainerCallback):
    """Sleeps after each step so a node can be killed between two checkpoints.

    ``alone_s``, when given, is the sleep while the run has one worker: long enough for
    a node that is added back to be seen (its raylet starting, Ray's resize check)
    before the shrunken run reaches its last step, however loaded the machine is.
    """

    def __init__(self, seconds: float, alone_s: float | None = None):
        self.seconds, self.alone_s = seconds, alone_s

    def on_step_end(self, args, state, control, **kwargs):
        alone = self.alone_s is not None and args.world_size == 1
        time.sleep(self.alone_s if alone else self.seconds)


class RecordAdam(TrainerCallback):
    """Appends ``event rank world_size global_step adam_step sum(exp_avg**2)`` of this rank's
    optimizer state when training (re)starts (``begin``, after any resume) and after each step."""

    def __init__(self, path: str):
        self.path = path

    def _write(self, event, args, state, optimizer):
        import torch

        slots = [v for v in optimizer.state.values() if "exp_avg" in v]
        step = max((float(v["step"]) for v in slots), default=0.0)
        total = float(sum(torch.sum(v["exp_avg"].double() ** 2) for v in slots)) if slots else 0.0
        with open(self.path, "a") as f:
            f.write(f"{event} {args.process_index} {args.world_size} {state.global_step} {step} {total!r}\n")

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        self._write("begin", args, state, optimizer)

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        self._write("step", args, state, optimizer)


def adam_rows(path: Path) -> list[tuple[str, int, int, int, float, float]]:
    rows = [line.split() for line in path.read_text().splitlines()]
    return [(e, int(r), int(w), int(g), float(s), float(t)) for e, r, w, g, s, t in rows]


def starts_of(path: Path) -> list[tuple[int, str, int, int]]:
    rows = [line.split() for line in path.read_text().splitlines()]
    return [(int(rank), node, int(world), int(step)) for rank, node, world, step in rows]


def job_for(storage: str, name: str, *overrides: str):
    from rayreward.job.config import load_job_config

    return load_job_config(None, [
        "train.save_steps=4", "train.eval_strategy=no", "train.logging_steps=2",
        "scaling.cpus_per_worker=1", "data.tokenize_actors=2", "data.tokenize_num_cpus=0.5", "data.eval=null",
        f"storage.path={storage}", f"storage.name={name}", *overrides,
    ])


def fit_in_thread(job, callbacks):
    """Runs ``fit`` in a thread, so the test can kill nodes meanwhile; returns (thread, box)."""
    from rayreward.run.fit import fit

    box: dict = {}

    def run():
        try:
            box["outcome"] = fit(job, callbacks=callbacks, print_fn=lambda line: None)
        except BaseException as exc:  # surfaced by the test after join
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def wait_for(path: Path, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.2)


def assert_loads(model_dir: str) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    batch = tokenizer(["Human: hi\nAssistant: hello"], return_tensors="pt")
    with torch.no_grad():
        assert torch.isfinite(model(**batch).logits).all()


# -- the elastic feed on its own: exact pairs across a world-size change ------------


def test_accumulation_keeps_the_global_batch():
    from rayreward.data.feeding import accumulation_steps

    assert [accumulation_steps(32, 8, w) for w in (1, 2, 4)] == [4, 2, 1]
    # 3 workers share 32 pairs as 11/11/10: two micro-batches each (6+5 or 5+5).
    assert accumulation_steps(32, 8, 3) == 2
    # Never more micro-batches than the smaller slice has pairs.
    assert accumulation_steps(3, 1, 2) == 1


def test_elastic_and_placement_are_checked_at_config_time(tmp_path):
    from rayreward.job.config import ConfigError, load_job_config, step_plan

    # ZeRO-1/2/3 are elastic (resumed through DeepSpeed's universal checkpoint); NVMe
    # offload, which that format does not cover, is refused with the file named.
    for stage in (1, 2, 3):
        assert load_job_config(None, ["scaling.num_workers=[1, 2]", f"deepspeed.stage={stage}"]).scaling.elastic
    nvme = tmp_path / "ds.json"
    nvme.write_text(json.dumps({"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "nvme"}}}))
    with pytest.raises(ConfigError) as err:
        load_job_config(None, ["scaling.num_workers=[1, 2]", f"deepspeed.config={nvme}",
                               "scaling.placement_strategy=EVEN"])
    text = str(err.value)
    assert f"{nvme} offloading to NVMe (zero_optimization.offload_optimizer)" in text, text
    assert "scaling.placement_strategy: got 'EVEN'" in text
    with pytest.raises(ConfigError, match=r"1 <= min <= max"):
        load_job_config(None, ["scaling.num_workers=[2, 1]", "deepspeed.stage=0"])
    job = load_job_config(None, ["scaling.num_workers=[1, 2]", "deepspeed.stage=0", "train.per_device_train_batch_size=4",
                                 "train.num_train_epochs=1", "storage.checkpoint_upload=async"])
    assert (job.scaling.min_workers, job.scaling.max_workers) == (1, 2)
    # Global batches of 2 x 4 pairs over one endless stream: 100 pairs are 12.5 steps.
    plan = step_plan(job, 100)
    assert (plan.max_steps, plan.steps_per_epoch) == (13, 13)


@pytest.mark.timeout(600)
def test_global_batches_are_exact_when_the_world_size_changes(cluster):
    import ray

    from rayreward.data.feeding import GlobalBatchStream

    num_pairs, global_batch, micro = 50, 8, 2
    ds = ray.data.from_items([{"input_ids_chosen": [i + 1, 5], "input_ids_rejected": [i + 1, 6]}
                              for i in range(num_pairs)], override_num_blocks=5).materialize()

    def trained(world_size: int, first_step: int, last_step: int) -> list[list[int]]:
        """Pair ids of each step in [first_step, last_step), all ranks together, skipping
        the earlier steps' micro-batches as the Trainer does on resume."""
        per_step = [[] for _ in range(first_step, last_step)]
        for rank in range(world_size):
            stream = GlobalBatchStream(ds.iterator(), 0, micro, global_batch=global_batch, rank=rank,
                                       world_size=world_size, shuffle="local", shuffle_buffer_size=16, seed=3)
            batches = itertools.islice(stream, first_step * stream.accumulation, last_step * stream.accumulation)
            for k, batch in enumerate(batches):
                assert len(batch["input_ids_chosen"]) <= micro + 1
                per_step[k // stream.accumulation] += (batch["input_ids_chosen"][:, 0] - 1).tolist()
        return per_step

    # Steps 0-2 on 2 workers, 3-4 on 1 (a node lost), 5-11 on 2 again: 96 pairs, the
    # first 50 of them epoch 0 and the rest the start of epoch 1.
    steps = trained(2, 0, 3) + trained(1, 3, 5) + trained(2, 5, 12)
    assert all(len(step) == global_batch for step in steps)
    order = [pair for step in steps for pair in step]
    assert sorted(order[:num_pairs]) == list(range(num_pairs)), "epoch 0: a pair skipped or seen twice"
    assert len(set(order[num_pairs:])) == len(order) - num_pairs
    # The same pairs in the same steps as a run that never changed size.
    assert [sorted(s) for s in steps] == [sorted(s) for s in trained(2, 0, 12)]
    # Shuffled, and differently in epoch 1.
    assert order[:num_pairs] != list(range(num_pairs))
    assert order[num_pairs:2 * num_pairs - 4] != order[:num_pairs - 4]


# -- whole runs on two nodes ----------------------------------------------------------


def processes_of_raylet(pid: str) -> list[str]:
    """The live processes a raylet (pid) started: Ray puts RAY_RAYLET_PID in their environment."""
    import psutil

    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("RAY_RAYLET_PID") == pid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(f"{proc.pid} {proc.name()}")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def s3_keys(client, prefix: str) -> set[str]:
    return {o["Key"] for o in client.list_objects_v2(Bucket="rayreward", Prefix=prefix).get("Contents", [])}


@pytest.mark.timeout(1200)
def test_spread_run_on_s3_waits_for_a_lost_node_and_resumes(two_nodes, tmp_path, moto_s3):
    starts = tmp_path / "starts.txt"
    # SPREAD puts one worker on each node; 1.5 CPUs a worker on 2-CPU nodes keeps a
    # single node from holding both, so with a fixed worker count the run must wait
    # for a node. Checkpoints go to S3 (moto on loopback), uploaded in the background.
    job = job_for("s3://rayreward/runs", "lost", "train.max_steps=8", "scaling.num_workers=2",
                  "scaling.cpus_per_worker=1.5", "scaling.placement_strategy=SPREAD", "deepspeed.stage=2",
                  "storage.checkpoint_upload=async", "failure.max_failures=3")
    thread, box = fit_in_thread(job, [RecordStarts(str(starts)), SlowSteps(2.0)])
    # Kill node b once the checkpoint at step 4 is in storage and Ray has taken it as the
    # run's latest (its controller polls reports every 2 s), while steps 5-8 run.
    deadline = time.monotonic() + 600
    while "runs/lost/checkpoint-000004/trainer_state.json" not in s3_keys(moto_s3, "runs/lost/"):
        assert time.monotonic() < deadline and thread.is_alive(), box.get("error")
        time.sleep(0.5)
    names = two_nodes.node_names()
    first = {rank: names.get(node) for rank, node, _, _ in starts_of(starts)}
    assert sorted(first.values()) == ["a", "b"], first
    time.sleep(4)
    raylet_b = str(two_nodes.nodes["b"].all_processes["raylet"][0].process.pid)
    two_nodes.kill("b")
    time.sleep(8)
    # A lost machine takes all its processes with it, the Ray workers of node b included.
    assert not processes_of_raylet(raylet_b)
    # Node a has room for one worker only: the run waits for capacity.
    assert thread.is_alive() and max(step for *_, step in starts_of(starts)) == 0
    two_nodes.add("b")
    thread.join(timeout=600)
    assert not thread.is_alive() and "error" not in box, box.get("error")
    rows = starts_of(starts)
    assert sorted((rank, step) for rank, _, _, step in rows) == [(0, 0), (0, 4), (1, 0), (1, 4)]
    outcome = box["outcome"]
    assert outcome.metrics["step"] == 8 and outcome.metrics["max_steps"] == 8
    # The tokenizer tasks ran on both nodes too (each tells the run's tally its node).
    assert outcome.metrics["data/train_nodes"] == 2, outcome.metrics
    # Both ranks' ZeRO-2 optimizer shards, uploaded in the background, are in the last checkpoint.
    keys = s3_keys(moto_s3, "runs/lost/")
    for rank in (0, 1):
        assert any(f"zero_pp_rank_{rank}_" in k and k.startswith("runs/lost/checkpoint-000008/global_step8/")
                   for k in keys), sorted(keys)
    assert "runs/lost/model/model.safetensors" in keys
    # The export ran in a task sized like a worker, on a worker node: the head (where
    # this driver runs) has no CPUs for it.
    assert two_nodes.node_names().get(outcome.metrics["exported_on"]) in ("a", "b"), outcome.metrics
    from rayreward.core.checkpoint import export_checkpoint

    export_checkpoint(outcome.checkpoint, str(tmp_path / "exported"))
    assert_loads(str(tmp_path / "exported"))


@pytest.mark.timeout(900)
def test_elastic_zero2_run_goes_on_with_fewer_workers_and_grows_back(two_nodes, tmp_path):
    starts, adam, runs = tmp_path / "starts.txt", tmp_path / "adam.txt", tmp_path / "runs"
    # Ray's elastic sizing counts free resources, not the placement strategy: 1.5 CPUs a
    # worker on 2-CPU nodes is what makes one node hold one worker.
    job = job_for(str(runs), "elastic", "train.max_steps=12", "scaling.num_workers=[1, 2]",
                  "scaling.cpus_per_worker=1.5", "scaling.placement_strategy=SPREAD", "scaling.resize_check_s=2",
                  "deepspeed.stage=2",
                  "train.per_device_train_batch_size=4", "failure.max_failures=3")
    thread, box = fit_in_thread(job, [RecordStarts(str(starts)), RecordAdam(str(adam)), SlowSteps(2.0, alone_s=6.0)])
    wait_for(runs / "elastic" / "checkpoint-000004" / "trainer_state.json")
    time.sleep(4)
    two_nodes.kill("b")
    # The run goes on with one worker from the checkpoint at step 4; node b then returns.
    deadline = time.monotonic() + 400
    while not any(world == 1 for _, _, world, _ in starts_of(starts)):
        assert time.monotonic() < deadline and thread.is_alive(), box.get("error")
        time.sleep(0.5)
    two_nodes.add("b")
    thread.join(timeout=600)
    assert not thread.is_alive() and "error" not in box, box.get("error")
    rows = starts_of(starts)
    worlds = [(world, step) for rank, _, world, step in rows if rank == 0]
    assert worlds[:2] == [(2, 0), (1, 4)], rows
    # Node b back: the run grew to 2 workers again, from a checkpoint after step 4.
    regrown = [step for world, step in worlds[2:] if world == 2 and step >= 4]
    assert regrown, rows
    # The ZeRO-2 optimizer state crossed both resizes: the one worker began at step 4
    # with Adam's step count 4 and the moments both ranks' shards held after step 4
    # (not a fresh optimizer), and the regrown pair began with the state of its checkpoint.
    moments = adam_rows(adam)

    def after_step(step):
        """Both ranks' (or the one rank's) state after ``step``, as last written."""
        done = [(w, s, t) for e, _, w, g, s, t in moments if e == "step" and g == step]
        assert done, (step, moments)
        world = done[-1][0]
        assert all(w == world and s == step for w, s, _ in done[-world:]), (step, moments)
        return sum(t for *_, t in done[-world:])

    def on_begin(step, world):
        began = [(s, t) for e, _, w, g, s, t in moments if e == "begin" and g == step and w == world]
        assert len(began) >= world and all(s == step for s, _ in began[-world:]), (step, world, moments)
        return sum(t for _, t in began[-world:])

    saved = after_step(4)
    assert saved > 0 and on_begin(4, 1) == pytest.approx(saved, rel=1e-9)
    assert on_begin(regrown[0], 2) == pytest.approx(after_step(regrown[0]), rel=1e-9)
    outcome = box["outcome"]
    assert outcome.metrics["step"] == 12 and outcome.metrics["max_steps"] == 12
    # 12 steps of the 2-worker global batch (2 x 4 pairs), whatever the world size was.
    last = Path(outcome.run_dir) / "checkpoint-000012"
    state = json.loads((last / "trainer_state.json").read_text())
    assert state["global_step"] == 12
    # The loss went on from where it was: no jump back to the untrained model's loss
    # after the resizes.
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    assert len(losses) == 6 and max(losses[2:]) < losses[0] * 1.5, losses
    # Written by both ranks again (one per node) into the local folder both nodes see:
    # both ZeRO-2 optimizer shards, and the run's checkpoint folders were not changed
    # by the universal conversion (it goes to a node-local folder).
    assert (last / "rng_state_0.pth").is_file() and (last / "rng_state_1.pth").is_file(), sorted(last.iterdir())
    assert len(list((last / "global_step12").glob("*zero_pp_rank_*_optim_states.pt"))) == 2
    assert not list(Path(outcome.run_dir).glob("checkpoint-*/latest_universal"))
    assert_loads(outcome.model_dir)
    assert two_nodes.node_names().get(outcome.metrics["exported_on"]) in ("a", "b"), outcome.metrics
