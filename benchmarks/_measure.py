"""Measuring for the benchmarks: machine, matmul peak, model FLOPs, memory, RESULTS.md.

Every function here is plain and small so that each benchmark script can share it.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import threading
import time
from importlib import metadata
from pathlib import Path

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"
HH_ENV = "RAYREWARD_HH_RLHF_DIR"


def hh_data_dir() -> Path:
    """The folder of hh-rlhf harmless-base pairs (``train.jsonl``, ``test.jsonl``) the benchmarks read.

    ``$RAYREWARD_HH_RLHF_DIR``, else ``data/hh-rlhf-harmless`` in the folder beside the
    repository (the test suite looks in the same two places).
    """
    named = os.environ.get(HH_ENV)
    folder = Path(named) if named else Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf-harmless"
    if not (folder / "train.jsonl").exists():
        raise SystemExit(f"hh-rlhf pairs not found in {folder}: set {HH_ENV} to a folder holding train.jsonl and "
                         "test.jsonl (rows of Anthropic/hh-rlhf, harmless-base, as the tests use)")
    return folder


def machine() -> dict:
    """CPU model, core counts, torch threads, date and package versions."""
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for pkg in ("torch", "transformers", "trl", "datasets", "accelerate", "rayreward"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    return {
        "cpu": cpu,
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "versions": versions,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def matmul_peak_flops(n: int = 2048, repeats: int = 5, dtype: str = "float32", device: str = "cpu") -> dict:
    """The best rate of an ``n x n`` matrix product on this process's threads (or a GPU).

    The denominator of the model FLOP utilization: what this machine reaches on the
    operation the models spend their time in, measured in the same run. Returns FLOPs
    per wall second and per CPU second of the process (all its threads); the second
    holds still when other processes share the cores. On a GPU both are the GPU's rate.
    """
    import torch

    a = torch.randn(n, n, dtype=getattr(torch, dtype), device=device)
    b = torch.randn(n, n, dtype=getattr(torch, dtype), device=device)
    torch.matmul(a, b)  # warm-up: thread pool, kernels
    if device != "cpu":
        torch.cuda.synchronize()
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(10):
                torch.matmul(a, b)
            torch.cuda.synchronize()
            best = min(best, (time.perf_counter() - start) / 10)
        return {"wall": 2 * n**3 / best, "cpu": 2 * n**3 / best}
    wall = cpu = float("inf")
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        torch.matmul(a, b)
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - start_cpu)
    return {"wall": 2 * n**3 / wall, "cpu": 2 * n**3 / cpu}


def linear_params(model) -> int:
    """Weights that take part in matrix products per token (every ``nn.Linear``)."""
    from torch import nn

    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))


def train_flops(linear: int, layers: int, hidden: int, tokens: int, attention_sq: int) -> float:
    """Forward+backward FLOPs: ``6 * linear params * tokens`` plus the attention products.

    ``attention_sq`` is the sum over attention rows of their length squared (a row of
    T tokens scores T x T query-key pairs, masked or not). QK^T and AV cost
    ``2 * 2 * T^2 * hidden`` per layer forward; backward doubles that.
    """
    return 6.0 * linear * tokens + 12.0 * layers * hidden * attention_sq


class PeakRSS:
    """Samples this process's resident memory in a thread; ``peak_mb`` over the block.

    ``with PeakRSS() as mem: ...`` then ``mem.peak_mb`` and ``mem.start_mb``.
    """

    def __init__(self, interval: float = 0.01):
        self.interval = interval
        self.start_mb = self.peak_mb = 0.0
        self._stop = threading.Event()

    @staticmethod
    def rss_mb() -> float:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _watch(self):
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self.rss_mb())
            time.sleep(self.interval)

    def __enter__(self):
        self.start_mb = self.peak_mb = self.rss_mb()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self.rss_mb())
        return False


def replace_section(text: str, title: str, body: str) -> str:
    """``text`` with the ``## title`` section replaced by (or appended as) ``body``.

    A section runs from its heading to the next heading of level 2 or to the end; other
    sections are left byte for byte as they are.
    """
    heading = f"## {title}"
    section = f"{heading}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^{re.escape(heading)}[ \t]*\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        return pattern.sub(lambda _: section + "\n", text, count=1).rstrip("\n") + "\n"
    if not text.strip():
        text = "# Benchmarks\n"
    return text.rstrip("\n") + "\n\n" + section


def publish(title: str, lines: list[str], record: bool) -> int:
    """Prints a benchmark's report and, when ``record``, writes it as RESULTS.md's ``title`` section."""
    body = "\n".join(lines) + "\n"
    print(body)
    if record:
        record_section(title, body)
    return 0


def record_section(title: str, body: str, path: Path = RESULTS_MD) -> None:
    """Writes one section of RESULTS.md, re-reading the file just before writing."""
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    path.write_text(replace_section(old, title, body), encoding="utf-8")
