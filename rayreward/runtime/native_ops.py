"""Building DeepSpeed's C++ ops once, not on every run.

DeepSpeed compiles its CPU ops (the shared-memory communication op every CPU run loads,
CPU Adam for optimizer offload) on first use through torch's JIT extension loader,
which runs whichever ``ninja`` is first on PATH and keeps the build in
``TORCH_EXTENSIONS_DIR``. Ninja 1.12 and later hash the commands in their build log
differently from older ninjas, so when the ninja installed with this Python (a
DeepSpeed dependency) and an older system one take turns on the same folder, each
finds the other's log "changed" and compiles the op again: 30-40 s on two cores, every
time the other one was used last (a job started from an activated venv, then a run
from a shell without it). Every rayreward process that may build an op puts the
environment's ninja first.
"""

from __future__ import annotations

import os


def use_environment_ninja() -> str | None:
    """Puts the folder of the ``ninja`` installed with this Python first on PATH.

    Returns:
        That folder, or None when this Python has no ``ninja`` package (the system's
        ninja, if any, is used as before).
    """
    try:
        import ninja
    except ImportError:
        return None
    folder = getattr(ninja, "BIN_DIR", None)
    if not folder or not os.path.isfile(os.path.join(folder, "ninja")):
        return None
    entries = os.environ.get("PATH", "").split(os.pathsep)
    if entries[:1] != [folder]:
        os.environ["PATH"] = os.pathsep.join([folder, *(e for e in entries if e and e != folder)])
    return folder
