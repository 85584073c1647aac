"""Runs every benchmark script of this folder (``bench_*.py``), one after the other.

    python benchmarks/run.py              # all of them, each with its defaults
    python benchmarks/run.py trl          # only bench_trl.py
    python benchmarks/run.py trl -- --models llama --no-record

Each script records its own section of ``benchmarks/RESULTS.md``. Stops at the first
script that fails and exits with its status.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    names, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    scripts = sorted(HERE.glob("bench_*.py"))
    if names:
        wanted = {f"bench_{n.removeprefix('bench_').removesuffix('.py')}.py" for n in names}
        unknown = wanted - {s.name for s in scripts}
        if unknown:
            print(f"no such benchmark: {', '.join(sorted(unknown))}; have {', '.join(s.name for s in scripts)}")
            return 2
        scripts = [s for s in scripts if s.name in wanted]
    for script in scripts:
        print(f"== {script.name}", flush=True)
        status = subprocess.call([sys.executable, str(script), *extra])
        if status != 0:
            print(f"{script.name} failed with status {status}")
            return status
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
