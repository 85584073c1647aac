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
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if parsed.scheme == "s3" and endpoint:
        ep = urlparse(endpoint)
        fs = pafs.S3FileSystem(
            endpoint_override=ep.netloc or ep.path,
            scheme=ep.scheme or "https",
            access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
            secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
            session_token=os.environ.get("AWS_SESSION_TOKEN"),
            region=os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1",
            allow_bucket_creation=True,
        )
        return fs, (parsed.netloc + parsed.path).rstrip("/")
    return pafs.FileSystem.from_uri(uri)


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts]) if is_uri(base) else os.path.join(base, *parts)


def upload_dir(local_dir: str, dest: str) -> None:
    """Copies a local folder to ``dest`` (a local path or a URI), replacing what is there."""
    if not is_uri(dest):
        if os.path.abspath(local_dir) != os.path.abspath(dest):
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(local_dir, dest)
        return
    import pyarrow.fs as pafs

    fs, path = filesystem(dest)
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


def write_text(dest: str, text: str) -> None:
    if not is_uri(dest):
        os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
        with open(dest, "w", encoding="utf-8") as f:
            f.write(text)
        return
    fs, path = filesystem(dest)
    with fs.open_output_stream(path) as f:
        f.write(text.encode("utf-8"))
