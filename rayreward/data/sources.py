"""Resolving a data source into a list of files, before any Ray work.

A source is what a user writes in ``data.train`` / ``data.eval``: a file, a folder, a
glob, a ``datasets.save_to_disk`` folder, or an object-store URI (``s3://``, ``gs://``,
anything ``pyarrow.fs`` takes; ``s3://`` honours ``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL`` for S3-compatible stores). Hub data set names are recognised and
refused with what to do instead: rayreward reads files, it does not download.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from dataclasses import dataclass
from typing import Any

# File kinds by name ending. ``.json`` holding one object per line (what
# ``datasets.Dataset.to_json`` writes) is read as JSON Lines.
_KINDS = {
    ".jsonl": "jsonl",
    ".jsonl.gz": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".json.gz": "json",
    ".parquet": "parquet",
    ".csv": "csv",
    ".csv.gz": "csv",
    ".arrow": "arrow",
}
_GLOB_CHARS = re.compile(r"[*?\[]")
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


class DataSourceError(ValueError):
    """A data source cannot be found, reached or read; the message says how to fix it."""


@dataclass(frozen=True)
class Source:
    """The files of one data source.

    Attributes:
        spec: the source as the user wrote it.
        field: the config field it came from, for messages (``data.train``).
        filesystem: the ``pyarrow.fs.FileSystem`` that holds the files.
        files: paths on ``filesystem``, sorted.
        sizes: their sizes in bytes.
        kind: the file kind shared by all files (jsonl, json, parquet, csv, arrow).
        root: the folder the files are named relative to (for the eval split's hash).
        scheme: ``s3``, ``gs``, ... or empty for local files.
    """

    spec: str
    field: str
    filesystem: Any
    files: tuple[str, ...]
    sizes: tuple[int, ...]
    kind: str
    root: str
    scheme: str = ""

    def display(self, path: str) -> str:
        """How messages name a file: a local path, or a URI."""
        return f"{self.scheme}://{path}" if self.scheme else path

    def relative(self, path: str) -> str:
        rel = path[len(self.root):].lstrip("/") if path.startswith(self.root) else path
        return rel or os.path.basename(path)


def file_kind(path: str) -> str | None:
    name = path.lower()
    for ending in sorted(_KINDS, key=len, reverse=True):
        if name.endswith(ending):
            return _KINDS[ending]
    return None


def resolve_source(spec: str, field: str = "data.train", role: str = "train") -> Source:
    """Finds the files of a source and checks they can be reached.

    Args:
        spec: a path, glob, folder or URI.
        field: the config field, named in errors.
        role: ``train`` or ``eval``; picks the split of a ``save_to_disk`` DatasetDict.

    Returns:
        The ``Source``.

    Raises:
        DataSourceError: nothing is there, it cannot be reached, it mixes file kinds,
            or it is a hub data set name.
    """
    from pyarrow import fs as pafs

    if "://" in spec:
        scheme = spec.split("://", 1)[0].lower()
        if scheme in ("hf", "huggingface"):
            raise DataSourceError(_hub_message(spec, field))
        filesystem, path = _filesystem_for(spec, field)
    else:
        scheme, filesystem = "", pafs.LocalFileSystem()
        path = os.path.abspath(os.path.expanduser(spec))

    if _GLOB_CHARS.search(path):
        base = _glob_base(path)
        files = [p for p in _list_files(filesystem, base, spec, field) if fnmatch.fnmatch(p, path)]
        files = [p for p in files if file_kind(p)]
        if not files:
            raise DataSourceError(
                f"{field}: the pattern {spec!r} matched no .jsonl/.json/.parquet/.csv/.arrow file; "
                "check the pattern (it is matched against whole paths)"
            )
        return _make_source(spec, field, filesystem, files, base, scheme)

    info = _file_info(filesystem, path, spec, field)
    if info.type == pafs.FileType.NotFound:
        if not scheme and _HUB_NAME.fullmatch(spec) and not file_kind(spec):
            raise DataSourceError(_hub_message(spec, field))
        raise DataSourceError(f"{field}: {spec!r} does not exist; give an existing file, folder, glob or URI")
    if info.type == pafs.FileType.File:
        if not file_kind(path):
            raise DataSourceError(
                f"{field}: {spec!r} is not a file rayreward reads; expected .jsonl, .json, .parquet, .csv or "
                ".arrow (optionally .gz for the text ones)"
            )
        return _make_source(spec, field, filesystem, [path], os.path.dirname(path), scheme)
    return _resolve_folder(spec, field, filesystem, path.rstrip("/"), scheme, role)


def _resolve_folder(spec, field, filesystem, path, scheme, role) -> Source:
    from pyarrow import fs as pafs

    def exists(name: str) -> bool:
        return _file_info(filesystem, f"{path}/{name}", spec, field).type == pafs.FileType.File

    if exists("dataset_dict.json"):
        splits = json.loads(_read_bytes(filesystem, f"{path}/dataset_dict.json")).get("splits", [])
        wanted = ("train",) if role == "train" else ("validation", "test", "eval")
        chosen = next((s for s in wanted if s in splits), None)
        if chosen is None:
            raise DataSourceError(
                f"{field}: {spec!r} is a datasets DatasetDict with splits {splits} and none named "
                f"{' or '.join(wanted)}; point {field} at one split's folder, e.g. {spec.rstrip('/')}/{splits[0] if splits else 'SPLIT'}"
            )
        return _resolve_folder(f"{spec.rstrip('/')}/{chosen}", field, filesystem, f"{path}/{chosen}", scheme, role)
    if exists("state.json"):
        # A datasets save_to_disk folder: its Arrow files, in order. Locally datasets
        # itself opens it (and names them); in an object store, the folder listing does.
        if scheme == "":
            from datasets import load_from_disk

            files = [f["filename"] for f in load_from_disk(path).cache_files]
        else:
            files = [p for p in _list_files(filesystem, path, spec, field) if p.endswith(".arrow")]
        if not files:
            raise DataSourceError(f"{field}: {spec!r} looks like a datasets save_to_disk folder but holds no data files")
        return _make_source(spec, field, filesystem, files, path, scheme)
    files = [
        p
        for p in _list_files(filesystem, path, spec, field)
        if file_kind(p) and not any(part.startswith((".", "_")) for part in p[len(path):].split("/") if part)
    ]
    if not files:
        raise DataSourceError(
            f"{field}: the folder {spec!r} holds no .jsonl/.json/.parquet/.csv/.arrow file (nor a "
            "datasets save_to_disk data set)"
        )
    return _make_source(spec, field, filesystem, files, path, scheme)


def _make_source(spec, field, filesystem, files, root, scheme) -> Source:
    from pyarrow import fs as pafs

    files = sorted(set(files))
    kinds = {file_kind(p) for p in files}
    if len(kinds) > 1:
        raise DataSourceError(
            f"{field}: {spec!r} mixes file kinds ({', '.join(sorted(kinds))}); keep one kind per source"
        )
    try:
        infos = filesystem.get_file_info(files)
    except OSError as exc:
        raise DataSourceError(_unreachable(spec, field, exc)) from None
    missing = [i.path for i in infos if i.type != pafs.FileType.File]
    if missing:
        raise DataSourceError(f"{field}: listed data file(s) missing: {', '.join(missing[:3])}")
    return Source(spec, field, filesystem, tuple(files), tuple(int(i.size or 0) for i in infos), kinds.pop(), root, scheme)


def _filesystem_for(uri: str, field: str):
    from pyarrow import fs as pafs

    scheme = uri.split("://", 1)[0].lower()
    try:
        if scheme in ("s3", "s3a"):
            from rayreward.runtime.storage import s3_filesystem

            return s3_filesystem(), uri.split("://", 1)[1]
        return pafs.FileSystem.from_uri(uri)
    except (OSError, ValueError, ImportError) as exc:
        raise DataSourceError(f"{field}: cannot open {uri!r}: {exc}") from None


def _file_info(filesystem, path, spec, field):
    try:
        return filesystem.get_file_info(path)
    except OSError as exc:
        raise DataSourceError(_unreachable(spec, field, exc)) from None


def _list_files(filesystem, base, spec, field) -> list[str]:
    from pyarrow import fs as pafs

    try:
        infos = filesystem.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    except OSError as exc:
        raise DataSourceError(_unreachable(spec, field, exc)) from None
    return [i.path for i in infos if i.type == pafs.FileType.File]


def _read_bytes(filesystem, path: str) -> bytes:
    with filesystem.open_input_stream(path) as f:
        return f.read()


def _glob_base(path: str) -> str:
    parts = path.split("/")
    for i, part in enumerate(parts):
        if _GLOB_CHARS.search(part):
            return "/".join(parts[:i]) or "/"
    return path


def _unreachable(spec: str, field: str, exc: Exception) -> str:
    hint = ""
    if spec.startswith(("s3://", "s3a://")):
        hint = (
            " Check the bucket and key, the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) and, for an "
            "S3-compatible store, AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3)."
        )
    return f"{field}: cannot reach {spec!r}: {exc}.{hint}"


def _hub_message(spec: str, field: str) -> str:
    name = spec.split("://", 1)[-1].removeprefix("datasets/")
    return (
        f"{field}: {spec!r} is not a local path or a storage URI; it looks like a Hugging Face hub data set "
        "name. rayreward reads files and object stores only and downloads nothing (this machine has no "
        "network access to the hub). Where there is network, run "
        f"datasets.load_dataset({name!r}).save_to_disk('DIR') (or fetch its jsonl/parquet files), copy DIR "
        f"here or to object storage, and set {field} to it."
    )
