"""The one way rayreward starts or joins Ray (train, tune, evaluate, score).

A command joins a cluster when it is given an address (``--address``) or ``RAY_ADDRESS``
is set to something; otherwise it starts an embedded Ray in its own process, bound to
127.0.0.1. An empty ``RAY_ADDRESS`` (common in scripts and CI templates) means unset,
here and in ``prepare_environment``, which the command line calls before anything
imports ray.

An embedded Ray is the command's own: when the session ends (normally, on Ctrl-C or
on an error) every process of that Ray session is stopped, and a small watchdog
process stops them too if the driver itself is killed (``rayreward.runtime._reaper``).
Only processes of that session are touched (found by its session folder), never
another Ray on the same machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from typing import Iterator

# Without it Ray swaps a 127.0.0.1 node address for the machine's routable one on
# Linux. Ray reads it when it is imported.
_LOOPBACK_FLAG = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def cluster_address(address: str | None = None) -> str | None:
    """The cluster to join: ``address``, else a non-empty ``RAY_ADDRESS``, else None (embedded)."""
    return address or os.environ.get("RAY_ADDRESS") or None


def prepare_environment(argv: list[str]) -> None:
    """Settles, before ray is imported, whether this command embeds Ray, and keeps it on loopback if so.

    An empty ``RAY_ADDRESS`` is removed so that Ray itself takes it as unset too.

    Args:
        argv: the command line (an ``--address`` in it means joining a cluster).
    """
    if os.environ.get("RAY_ADDRESS") == "":
        del os.environ["RAY_ADDRESS"]
    if cluster_address() is None and not any(a.startswith("--address") for a in argv):
        # A driver joining a real cluster must not have it (it would register as 127.0.0.1).
        os.environ.setdefault(_LOOPBACK_FLAG, "0")


def on_loopback() -> bool:
    """Whether every node of the connected Ray cluster is on 127.0.0.1 (an embedded or test cluster)."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return bool(nodes) and all(n.get("NodeManagerAddress") in ("127.0.0.1", "::1") for n in nodes)


@contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None, log_to_driver: bool = True,
                runtime_env: dict | None = None) -> Iterator[None]:
    """Ray for one command: the running one, a cluster to join, or an embedded one on loopback.

    Args:
        address: a cluster to join; None means ``RAY_ADDRESS`` if non-empty, else embedded.
        num_cpus: logical CPUs of an embedded Ray (None: the cores).
        log_to_driver: forward the workers' output to this process.
        runtime_env: Ray's runtime environment for the job.

    Yields:
        Nothing; Ray is initialised inside the block. A Ray already initialised by the
        caller is used as is and left running.

    Example:
        >>> with ray_session(num_cpus=4):
        ...     ray.data.range(10).count()
    """
    import ray

    if ray.is_initialized():
        yield
        return
    address = cluster_address(address)
    options = dict(logging_level="WARNING", log_to_driver=log_to_driver, runtime_env=runtime_env)
    reaper = session_dir = None
    if address:
        ray.init(address=address, **options)
    else:
        os.environ.setdefault(_LOOPBACK_FLAG, "0")
        context = _start_embedded(num_cpus, options)
        session_dir = context.address_info["session_dir"]
        reaper = _start_reaper(session_dir)
    try:
        yield
    finally:
        # A second Ctrl-C must not cut the shutdown short and leave processes behind.
        previous = _ignore_sigint()
        try:
            ray.shutdown()
            if session_dir:
                stop_session_processes(session_dir)
        finally:
            if reaper is not None:
                reaper.terminate()
                reaper.wait()
            _restore_sigint(previous)


def _start_embedded(num_cpus: int | None, options: dict):
    import ray

    for attempt in (1, 2, 3):
        try:
            return ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                            _node_ip_address="127.0.0.1", **options)
        except Exception as exc:  # noqa: BLE001 - only Ray's start-up timeout is retried
            # Ray 2.60 gives its raylet a fixed 30 s to register; on a machine busy with
            # other work that can pass (or its raylet trips a check) while nothing is wrong
            # with the input. Two more tries, then the error.
            if attempt == 3 or "timed out during startup" not in str(exc):
                raise
            ray.shutdown()


def session_processes(session_dir: str) -> list:
    """This user's processes of the Ray session whose folder is ``session_dir`` (``psutil.Process``).

    A process belongs to the session when its command line names the folder or it
    holds a file open in it (every Ray process logs there, including the agents and
    workers whose command line Ray rewrites to ``ray::...``).
    """
    import psutil

    marker = os.path.realpath(session_dir)
    me, uid = os.getpid(), os.getuid()
    found = []
    for proc in psutil.process_iter(["pid", "uids", "cmdline"]):
        try:
            cmdline = proc.info["cmdline"] or ()
            if proc.pid == me or proc.info["uids"] is None or proc.info["uids"].real != uid \
                    or "rayreward.runtime._reaper" in cmdline:
                continue
            if any(_names(part, marker) for part in cmdline) or any(_names(f.path, marker) for f in proc.open_files()):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _names(text: str, folder: str) -> bool:
    # The folder itself or a path inside it, not a sibling whose name merely starts the same.
    at = text.find(folder)
    return at >= 0 and text[at + len(folder):at + len(folder) + 1] in ("", os.sep, " ", ",", '"', "'")


def stop_session_processes(session_dir: str, grace_s: float = 5.0) -> int:
    """Stops every process of the session (SIGTERM, then SIGKILL after ``grace_s``); returns how many."""
    import psutil

    procs = session_processes(session_dir)
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace_s)
    return len(procs)


def _start_reaper(session_dir: str) -> subprocess.Popen:
    # Its own session: a Ctrl-C on the terminal must not stop the watchdog first.
    return subprocess.Popen(
        [sys.executable, "-m", "rayreward.runtime._reaper", str(os.getpid()), session_dir],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True,
    )


def _ignore_sigint():
    try:
        return signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: nothing to protect
        return None


def _restore_sigint(previous) -> None:
    if previous is not None:
        signal.signal(signal.SIGINT, previous)
