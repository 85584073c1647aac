"""Run storage: a local/NFS folder or an object-store URI, through pyarrow's filesystems.

For ``s3://`` with ``AWS_ENDPOINT_URL`` set (MinIO, moto, ...), the filesystem is built
here on the driver with the endpoint and keys spelled out, and handed to Ray as
``RunConfig(storage_filesystem=...)``: it is pickled with those options, so the Train
controller and the workers reach the same endpoint even when their environment (that
of the Ray cluster, not of this process) lacks the variables.
"""

from __future__ import annotations

import os
import shutil
from typing import Any
from urllib.parse import urlparse


def is_uri(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def filesystem(uri: str):
    """``(pyarrow filesystem, path inside it)`` for a URI or a local path."""
    import pyarrow.fs as pafs

    if not is_uri(uri):
        return pafs.LocalFileSystem(), os.path.abspath(uri.removeprefix("file://"))
    parsed = urlparse(uri)
    if parsed.scheme in ("s3", "s3a"):
        return s3_filesystem(), (parsed.netloc + parsed.path).rstrip("/")
    return pafs.FileSystem.from_uri(uri)


def s3_filesystem():
    """An ``S3FileSystem`` built from the environment, endpoint and keys spelled out.

    Endpoint and keys are set explicitly (not left to the AWS SDK of each process) so
    that the pickled filesystem reaches the same store inside Ray workers, whose
    environment may differ from the driver's. An unreachable endpoint fails within
    seconds (``connect_timeout``), not after the SDK's retries.
    """
    from pyarrow import fs as pafs

    env = os.environ
    kwargs: dict = {"connect_timeout": 5.0, "allow_bucket_creation": True}
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        ep = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs["endpoint_override"] = ep.netloc + ep.path.rstrip("/")
        kwargs["scheme"] = ep.scheme
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or ("us-east-1" if endpoint else None)
    if region:
        kwargs["region"] = region
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        kwargs["access_key"] = env["AWS_ACCESS_KEY_ID"]
        kwargs["secret_key"] = env["AWS_SECRET_ACCESS_KEY"]
        if env.get("AWS_SESSION_TOKEN"):
            kwargs["session_token"] = env["AWS_SESSION_TOKEN"]
    return pafs.S3FileSystem(**kwargs)


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts]) if is_uri(base) else os.path.join(base, *parts)


def upload_dir(local_dir: str, dest: str, located=None) -> None:
    """Copies a local folder to ``dest`` (a local path or a URI), replacing what is there.

    ``located`` is ``filesystem(dest)`` computed elsewhere (see ``download_dir``).
    """
    if not is_uri(dest):
        if os.path.abspath(local_dir) != os.path.abspath(dest):
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(local_dir, dest)
        return
    import pyarrow.fs as pafs

    fs, path = located or filesystem(dest)
    fs.create_dir(path, recursive=True)
    pafs.copy_files(local_dir, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def download_dir(src: str, local_dir: str, located=None) -> str:
    """Copies ``src`` (a URI) into ``local_dir``; a local ``src`` is returned as it is.

    ``located`` is ``filesystem(src)`` computed elsewhere: a Ray task on another process
    gets the driver's connection (endpoint, keys) instead of its own environment's.
    """
    if not is_uri(src):
        return src
    import pyarrow.fs as pafs

    fs, path = located or filesystem(src)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        raise FileNotFoundError(f"{src} is not a folder in its object store")
    os.makedirs(local_dir, exist_ok=True)
    pafs.copy_files(path, local_dir, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return local_dir


def write_bytes(dest: str, data: bytes) -> None:
    """Writes ``data`` to ``dest`` (a local path, parents created, or a URI)."""
    if not is_uri(dest):
        os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
        with open(dest, "wb") as f:
            f.write(data)
        return
    fs, path = filesystem(dest)
    with fs.open_output_stream(path) as f:
        f.write(data)


def write_text(dest: str, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``dest``, a local path or a URI."""
    write_bytes(dest, text.encode("utf-8"))


def read_bytes(src: str) -> bytes:
    """The content of ``src`` (a local path or a URI); raises ``OSError`` when missing."""
    if not is_uri(src):
        with open(src, "rb") as f:
            return f.read()
    fs, path = filesystem(src)
    with fs.open_input_stream(path) as f:
        return f.read()


def is_dir(path: str) -> bool:
    """Whether ``path`` (a local path or a URI) is a folder."""
    if not is_uri(path):
        return os.path.isdir(path)
    import pyarrow.fs as pafs

    fs, inner = filesystem(path)
    return fs.get_file_info(inner).type == pafs.FileType.Directory


def cache_root() -> str:
    """Where downloaded models are kept: ``$RAYREWARD_CACHE``, else ``~/.cache/rayreward``."""
    return os.path.expanduser(os.environ.get("RAYREWARD_CACHE") or os.path.join("~", ".cache", "rayreward"))


def cached_download(uri: str, cache_dir: str | None = None, located=None) -> str:
    """A local copy of the folder at ``uri``, downloaded once and reused while it is unchanged.

    The copy lives in ``<cache_dir>/<hash of the URI>-<hash of the listing>``, where the
    listing is every object's path, size and modification time (the store's
    LastModified, which changes whenever an object is rewritten). A changed object gives
    a new folder (the copies of older listings of the same URI are then removed); an
    unchanged one costs one listing. The download lands in a private folder renamed into
    place, so processes downloading at once never see half a copy.

    Args:
        uri: an object-store folder (``s3://bucket/models/rm``).
        cache_dir: the cache folder; default ``cache_root()/models``.
        located: ``filesystem(uri)`` computed elsewhere (see ``download_dir``).

    Returns:
        The local folder.

    Raises:
        FileNotFoundError: nothing is at ``uri``, or it is a single object, not a folder.
    """
    import hashlib
    import json
    import tempfile

    import pyarrow.fs as pafs

    fs, path = located or filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{uri}: no such folder in its object store")
    if info.type != pafs.FileType.Directory:
        raise FileNotFoundError(f"{uri}: a single object, expected a folder (of a model written by save_pretrained)")
    listing = sorted(
        (f.path[len(path):].lstrip("/"), f.size, f.mtime_ns)
        for f in fs.get_file_info(pafs.FileSelector(path, recursive=True)) if f.type == pafs.FileType.File
    )
    if not listing:
        raise FileNotFoundError(f"{uri}: an empty folder in its object store")
    root = cache_dir or os.path.join(cache_root(), "models")
    prefix = hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]
    version = hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:16]
    target = os.path.join(root, f"{prefix}-{version}")
    if os.path.isdir(target):
        return target
    os.makedirs(root, exist_ok=True)
    partial = tempfile.mkdtemp(prefix=f".{prefix}-", dir=root)
    try:
        pafs.copy_files(path, partial, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        try:
            os.rename(partial, target)
        except OSError:
            if not os.path.isdir(target):  # not another process's finished copy: a real failure
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    for name in os.listdir(root):
        if name.startswith(f"{prefix}-") and name != os.path.basename(target):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    return target


STORE_HINT = ("check the URI, the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) and, for an S3-compatible "
              "store, AWS_ENDPOINT_URL")


def ask_store(uri: str, question, timeout: float, flag: str) -> tuple[Any, list[str]]:
    """``question(filesystem, path inside it)`` asked of the object store of ``uri`` within
    ``timeout`` seconds: ``(answer, [])``, or ``(None, [problem naming flag])`` when the
    store did not answer in time or could not be reached.

    A thread, not the SDK's timeouts: the AWS SDK retries (and resolves regions) for much
    longer than its connect timeout.
    """
    import threading

    result: dict[str, Any] = {}

    def ask():
        try:
            fs, inside = filesystem(uri)
            result["answer"] = question(fs, inside)
        except Exception as exc:  # noqa: BLE001 - any failure to reach the store is the user's to fix
            result["error"] = exc

    worker = threading.Thread(target=ask, daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        return None, [f"{flag}: got {uri!r}; the object store did not answer within {timeout:g} s ({STORE_HINT})"]
    if "error" in result:
        error = result["error"]
        first = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        return None, [f"{flag}: got {uri!r}; cannot reach the object store: {first} ({STORE_HINT})"]
    return result["answer"], []
