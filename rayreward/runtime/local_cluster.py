"""Several Ray nodes on this one machine, every address 127.0.0.1: for multi-node tests,
benchmarks and trying a node loss before a real cluster has one.

Built on ``ray.cluster_utils.Cluster``. ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` must be
in the environment before ray is imported (without it Ray swaps 127.0.0.1 for the
machine's routable address); ``ray start --address`` for a second node on one machine
is refused or does that swap, so nodes are started here in-process.

Example:
    >>> cluster = LocalCluster(["a", "b"], node_cpus=2)
    >>> cluster.connect()          # ray.init on it
    >>> cluster.kill("b")          # abruptly, as a lost spot node
    >>> cluster.add("b")           # a node joins again
    >>> cluster.shutdown()
"""

from __future__ import annotations

from typing import Iterable

# Node deaths are noticed in about 3 s instead of Ray's default ~30 s.
FAST_HEALTH_CHECKS = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3,
                      "health_check_initial_delay_ms": 1000}


def with_start_retries(start, attempts: int = 5):
    """Runs ``start`` (a node start), again when Ray's 30 s registration wait ran out:
    on a loaded 2-core machine a node may need longer to come up."""
    for attempt in range(attempts):
        try:
            return start()
        except Exception as exc:  # Ray raises a bare Exception for this
            if "timed out during startup" not in str(exc) or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


class LocalCluster:
    """A head with no CPUs (no training worker lands there) and named worker nodes.

    Each worker node has ``node_cpus`` logical CPUs and a custom resource ``node_<name>``
    so a task can be pinned to it.

    Args:
        names: the worker nodes to start.
        node_cpus: logical CPUs of each worker node.
        fast_health_checks: notice a dead node in about 3 s (Ray's default is ~30 s).
    """

    def __init__(self, names: Iterable[str] = ("a", "b"), node_cpus: float = 2, fast_health_checks: bool = True):
        from ray.cluster_utils import Cluster

        self.node_cpus = node_cpus
        self.cluster = Cluster()
        self.nodes: dict = {}
        with_start_retries(lambda: self.cluster.add_node(
            num_cpus=0, node_ip_address="127.0.0.1", include_dashboard=False,
            _system_config=FAST_HEALTH_CHECKS if fast_health_checks else None))
        for name in names:
            self.add(name)

    @property
    def address(self) -> str:
        return self.cluster.address

    def add(self, name: str):
        """Starts worker node ``name`` (again, after ``kill``)."""
        node = with_start_retries(lambda: self.cluster.add_node(
            num_cpus=self.node_cpus, resources={f"node_{name}": 1}, node_ip_address="127.0.0.1"))
        self.nodes[name] = node
        return node

    def kill(self, name: str) -> None:
        """Stops worker node ``name`` abruptly (its processes killed, no draining)."""
        node = self.nodes.pop(name)
        raylets = _raylet_pids([node])
        self.cluster.remove_node(node, allow_graceful=False)
        _kill_workers_of(raylets)

    def node_names(self) -> dict[str, str]:
        """Ray node id -> name, for the worker nodes alive now."""
        return {node.node_id: name for name, node in self.nodes.items()}

    def connect(self, **init_kwargs) -> None:
        """``ray.init`` on this cluster (HF offline and quiet tokenizers in the workers)."""
        import ray

        init_kwargs.setdefault("logging_level", "WARNING")
        init_kwargs.setdefault("runtime_env", {"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}})
        ray.init(address=self.cluster.address, **init_kwargs)

    def shutdown(self) -> None:
        import ray

        raylets = _raylet_pids([self.cluster.head_node, *self.cluster.worker_nodes])
        if ray.is_initialized():
            ray.shutdown()
        self.cluster.shutdown()
        _kill_workers_of(raylets)


def _raylet_pids(nodes) -> set[str]:
    return {str(info.process.pid) for node in nodes if node is not None
            for info in node.all_processes.get("raylet", ())}


def _kill_workers_of(raylets: set[str]) -> None:
    """Kills the worker processes the raylets ``raylets`` (pids) started, as a lost machine would.

    Removing a node stops its raylet and daemons, not the workers: a worker notices a dead
    raylet only when it next talks to it, and an idle tokenizer actor of a removed node
    was seen alive 20 minutes later.
    """
    import psutil

    if not raylets:
        return
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("RAY_RAYLET_PID") in raylets:
                proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
