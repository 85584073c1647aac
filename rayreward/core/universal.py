"""Resuming a DeepSpeed ZeRO checkpoint at another data-parallel world size.

ZeRO-1/2/3 save optimizer state (at stage 3 the parameters too) as one shard per rank,
and DeepSpeed's ordinary loader reads back exactly as many shards as there are ranks.
An elastic run (``scaling.num_workers: [min, max]``) that lost or regained a worker
resumes at another world size, so its checkpoint is first converted to DeepSpeed's
universal format (one file per parameter and state, independent of the world size,
``deepspeed.checkpoint.ds_to_universal``) and loaded with the engine config
``"checkpoint": {"load_universal": true}``.

The stored checkpoint is never changed: the conversion goes to a local folder per node
(one rank converts, the node's other ranks wait for it and reuse it), beside links to
the checkpoint's other files, and the Trainer resumes from that folder.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import tempfile
from argparse import Namespace

_OPTIM_SHARD = re.compile(r"zero_pp_rank_(\d+)_mp_rank_\d+_optim_states\.pt$")
_DONE = ".rayreward-universal-done"


def saved_world_size(checkpoint: str) -> int | None:
    """The data-parallel world size a Trainer checkpoint's ZeRO shards were saved at
    (``None``: not a ZeRO checkpoint, e.g. ZeRO-0 or no DeepSpeed)."""
    step_dirs = sorted(glob.glob(os.path.join(checkpoint, "global_step*")))
    if not step_dirs:
        return None
    ranks = {int(m.group(1)) for f in os.listdir(step_dirs[-1]) if (m := _OPTIM_SHARD.search(f))}
    return len(ranks) or None


def needs_universal(checkpoint: str, world_size: int) -> bool:
    """Whether resuming ``checkpoint`` on ``world_size`` ranks needs the universal format."""
    saved = saved_world_size(checkpoint)
    return saved is not None and saved != world_size


def universal_resume_folder(checkpoint: str, workers: int = 1) -> str:
    """A local folder the Trainer resumes from with ``"load_universal": true``: links to
    ``checkpoint``'s files, and its ZeRO shards converted to the universal format.

    Args:
        checkpoint: a local Trainer checkpoint folder holding ``latest`` and
            ``global_stepN/`` (DeepSpeed's files, every rank's shards).
        workers: processes DeepSpeed's converter may use (1: in this process).

    Returns:
        The folder, under this node's temporary directory; converted once per node and
        checkpoint (later calls, from the node's other ranks, reuse it).
    """
    from filelock import FileLock

    checkpoint = os.path.abspath(checkpoint)
    step_dir = sorted(glob.glob(os.path.join(checkpoint, "global_step*")))[-1]
    # A run folder written again under the same name is another checkpoint: its time counts.
    key = hashlib.sha256(f"{checkpoint} {os.stat(step_dir).st_mtime_ns}".encode()).hexdigest()[:16]
    folder = os.path.join(tempfile.gettempdir(), "rayreward-universal", key)
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    with FileLock(folder + ".lock"):
        if os.path.exists(os.path.join(folder, _DONE)):
            return folder
        _convert(checkpoint, folder, workers)
        with open(os.path.join(folder, _DONE), "w", encoding="utf-8") as f:
            f.write(checkpoint + "\n")
    return folder


def _convert(checkpoint: str, folder: str, workers: int) -> None:
    import contextlib
    import io
    import logging
    import shutil

    from deepspeed.checkpoint import ds_to_universal

    shutil.rmtree(folder, ignore_errors=True)  # a conversion cut short earlier
    os.makedirs(folder)
    for name in os.listdir(checkpoint):
        os.symlink(os.path.join(checkpoint, name), os.path.join(folder, name))
    step_dir = sorted(glob.glob(os.path.join(checkpoint, "global_step*")))[-1]
    # Writes <folder>/<global_stepN>_universal and <folder>/latest_universal naming it,
    # which is what the engine's load_checkpoint(<folder>) reads with load_universal.
    # The converter prints its progress; it goes to the run log, not the console.
    chatter = io.StringIO()
    with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
        ds_to_universal.main(Namespace(
            input_folder=step_dir, output_folder=os.path.join(folder, os.path.basename(step_dir) + "_universal"),
            num_extract_workers=workers, num_merge_workers=workers, keep_temp_folder=False, strict=True,
            inject_missing_state=True,
        ))
    logging.getLogger(__name__).info("converted %s to DeepSpeed's universal format in %s:\n%s",
                                     step_dir, folder, chatter.getvalue())


def with_universal_loading(ds_config: dict) -> dict:
    """``ds_config`` with DeepSpeed's universal checkpoint loading switched on."""
    return {**ds_config, "checkpoint": {**ds_config.get("checkpoint", {}), "load_universal": True}}
