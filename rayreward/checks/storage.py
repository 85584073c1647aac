"""The checks of where outputs go: a writable folder, or an object store that answers."""

from __future__ import annotations

import os
import tempfile

STORE_TIMEOUT_S = 5.0


def check_storage(path: str, name: str = "storage.path", timeout: float = STORE_TIMEOUT_S) -> list[str]:
    """A local folder (or its nearest existing parent) that is writable, or an object
    store that answers within ``timeout`` seconds."""
    from rayreward.runtime.storage import is_uri

    if not is_uri(path):
        return _local_writable(path, name)
    return _store_answers(path, name, timeout)


def _local_writable(path: str, name: str) -> list[str]:
    target = os.path.abspath(os.path.expanduser(path.removeprefix("file://")))
    probe_dir = target
    while not os.path.exists(probe_dir):
        parent = os.path.dirname(probe_dir)
        if parent == probe_dir:
            break
        probe_dir = parent
    if not os.path.isdir(probe_dir):
        return [f"{name}: got {path!r}; {probe_dir} is a file, expected a folder (or a path to create one at)"]
    try:
        # A real write: permission bits say nothing for root or on read-only mounts.
        fd, probe_file = tempfile.mkstemp(prefix=".rayreward-preflight-", dir=probe_dir)
        os.close(fd)
        os.remove(probe_file)
    except OSError as exc:
        return [f"{name}: got {path!r}; cannot write in {probe_dir} ({exc.strerror}), expected a folder you can "
                "write to"]
    return []


def _store_answers(uri: str, name: str, timeout: float) -> list[str]:
    import pyarrow.fs as pafs

    from rayreward.runtime.storage import STORE_HINT, ask_store

    def bucket_missing(fs, inside):
        return fs.get_file_info(inside.split("/", 1)[0]).type == pafs.FileType.NotFound

    missing, problems = ask_store(uri, bucket_missing, timeout, name)
    if problems:
        return problems
    if missing:
        return [f"{name}: got {uri!r}; the bucket does not exist, expected an existing bucket ({STORE_HINT})"]
    return []
