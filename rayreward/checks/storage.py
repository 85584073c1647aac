"""The checks of where outputs go: a writable folder, or an object store that answers."""

from __future__ import annotations

import os
import tempfile
import threading
from typing import Any

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
    result: dict[str, Any] = {}

    def ask():
        try:
            import pyarrow.fs as pafs

            from rayreward.runtime.storage import filesystem

            fs, inside = filesystem(uri)
            bucket = inside.split("/", 1)[0]
            result["type"] = fs.get_file_info(bucket).type
            result["missing"] = result["type"] == pafs.FileType.NotFound
        except Exception as exc:  # noqa: BLE001 - any failure to reach the store is the user's to fix
            result["error"] = exc

    # A thread, not a pyarrow timeout: the AWS SDK retries (and resolves regions) for
    # much longer than its connect timeout.
    worker = threading.Thread(target=ask, daemon=True)
    worker.start()
    worker.join(timeout)
    hint = ("check the URI, the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) and, for an S3-compatible "
            "store, AWS_ENDPOINT_URL")
    if worker.is_alive():
        return [f"{name}: got {uri!r}; the object store did not answer within {timeout:g} s ({hint})"]
    if "error" in result:
        first = str(result["error"]).splitlines()[0][:200] if str(result["error"]) else type(result["error"]).__name__
        return [f"{name}: got {uri!r}; cannot reach the object store: {first} ({hint})"]
    if result.get("missing"):
        return [f"{name}: got {uri!r}; the bucket does not exist, expected an existing bucket ({hint})"]
    return []
