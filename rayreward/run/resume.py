"""Which checkpoint a re-run of an interrupted job continues from.

Ray Train resumes a run from the latest checkpoint its controller recorded. The
controller takes a reported checkpoint on its next poll (every 2 s), so an interrupt
just after a save leaves a complete folder that the re-run will not use: the resume
hint names the recorded one and says that the newer folder is not taken.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from rayreward.runtime import storage
from rayreward.runtime._framework_internals import ray_train_latest_checkpoint_name


def complete_checkpoints(run_dir: str) -> list[str]:
    """The ``checkpoint-NNNNNN`` folder names of a run (local path or URI) that hold the
    Trainer's state file, oldest first: a checkpoint cut short is not one to resume from."""
    if storage.is_uri(run_dir):
        from pyarrow import fs as pafs

        filesystem, path = storage.filesystem(run_dir)
        try:
            infos = filesystem.get_file_info(pafs.FileSelector(path, recursive=False))
        except (FileNotFoundError, OSError):
            return []
        names = [i.base_name for i in infos if i.type == pafs.FileType.Directory]

        def complete(name: str) -> bool:
            return filesystem.get_file_info(f"{path}/{name}/trainer_state.json").type == pafs.FileType.File
    else:
        names = os.listdir(run_dir) if os.path.isdir(run_dir) else []

        def complete(name: str) -> bool:
            return os.path.isfile(os.path.join(run_dir, name, "trainer_state.json"))
    candidates = [n for n in names if n.startswith("checkpoint-") and n[11:].isdigit()]
    return sorted((n for n in candidates if complete(n)), key=lambda n: int(n[11:]))


@dataclass(frozen=True)
class ResumePoint:
    """``checkpoint``: what a re-run continues from (None: from the start);
    ``not_taken``: complete folders newer than it that Ray had not recorded."""

    checkpoint: str | None
    not_taken: tuple[str, ...] = ()


def resume_point(run_dir: str) -> ResumePoint:
    complete = complete_checkpoints(run_dir)
    recorded = ray_train_latest_checkpoint_name(run_dir)
    if recorded is None or recorded not in complete:
        # No record yet (interrupted before the first checkpoint was taken), or a record
        # naming a folder that is gone: Ray starts the run over.
        return ResumePoint(None, tuple(storage.join(run_dir, n) for n in complete))
    newer = complete[complete.index(recorded) + 1:]
    return ResumePoint(storage.join(run_dir, recorded), tuple(storage.join(run_dir, n) for n in newer))
