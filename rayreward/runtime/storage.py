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
