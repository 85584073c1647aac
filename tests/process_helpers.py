"""Watching a command's processes from a test: their sockets, and whether any is left."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
RAYREWARD = [sys.executable, "-m", "rayreward"]
LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")
# What Ray, DeepSpeed and transformers print on their own; none of it may reach the console.
NOISE = re.compile(r"RayTrainWorker|TrainController|TrainingReport|PlacementGroupCleaner|Ray Data|Running Dataset|"
                   r"deepspeed|DeepSpeed|\bWARNING\b|Warning:|it/s\]|\(pid=|raylet|Token authentication")


def command_env(**extra: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0"}
    # The command decides the loopback setting itself (cli.main), as it does for a user.
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    env.update(extra)
    return env


def start(args: list[str], env: dict) -> subprocess.Popen:
    """A command in its own process group, like a shell job (so a test can Ctrl-C it as a terminal would)."""
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def is_loopback(address) -> bool:
    return not address or address.ip in LOOPBACK or address.ip.startswith("127.")


class Watcher:
    """Samples, until stopped, every process under ``pid``: their listening and established sockets.

    One system-wide socket table a sample (``psutil.net_connections``), matched to the
    tree's pids: asking each process for its own sockets reads the whole table once per
    process, which on a 2-core machine slowed the run being watched.
    """

    def __init__(self, pid: int, every_s: float = 1.0):
        self.pid, self.every_s = pid, every_s
        self.seen: dict[int, psutil.Process] = {}
        self.sockets: set[tuple] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Watcher":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            names = {}
            for proc in tree(self.pid):
                self.seen.setdefault(proc.pid, proc)
                try:
                    names[proc.pid] = proc.name()
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
            for c in psutil.net_connections(kind="inet"):
                if c.pid in names and c.status in (psutil.CONN_LISTEN, psutil.CONN_ESTABLISHED):
                    self.sockets.add((names[c.pid], c.status, c.laddr.ip, c.raddr.ip if c.raddr else ""))
            self._stop.wait(self.every_s)

    def off_loopback(self) -> list[tuple]:
        return sorted(s for s in self.sockets if s[2] not in LOOPBACK and not s[2].startswith("127.")
                      or s[3] and s[3] not in LOOPBACK and not s[3].startswith("127."))

    def alive(self) -> list[str]:
        """The sampled processes still running (same pid and start time), as ``pid name``."""
        left = []
        for pid, proc in self.seen.items():
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    left.append(f"{pid} {proc.name()}")
            except psutil.NoSuchProcess:
                continue
        return left


def wait_until_gone(watcher: Watcher, timeout_s: float) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while watcher.alive() and time.monotonic() < deadline:
        time.sleep(0.5)
    return watcher.alive()
