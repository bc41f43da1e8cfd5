"""Paths that may be local folders or object-store URIs (s3://, gs://, hdfs://, ...).

Everything that reads or writes run outputs goes through pyarrow filesystems, the same layer
Ray Data and Ray Train use, so a config can move from ``runs/`` to ``s3://bucket/runs`` unchanged.
"""

from __future__ import annotations

import fnmatch
import glob
import os
from dataclasses import dataclass

import pyarrow.fs as pafs

GLOB_CHARS = set("*?[")


def is_uri(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def resolve(path: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it). Local paths are made absolute."""
    if path.startswith("file://"):
        path = path.removeprefix("file://")
    if is_uri(path):
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(path)


def exists(path: str) -> bool:
    fs, p = resolve(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def is_dir(path: str) -> bool:
    fs, p = resolve(path)
    return fs.get_file_info(p).type == pafs.FileType.Directory


def read_bytes(path: str) -> bytes:
    fs, p = resolve(path)
    with fs.open_input_stream(p) as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def write_text(path: str, text: str) -> None:
    """Write a small text file atomically where the filesystem allows (local: rename)."""
    fs, p = resolve(path)
    parent = p.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = f"{p}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, p)
        return
    with fs.open_output_stream(p) as f:  # object stores publish a whole object at close
        f.write(text.encode("utf-8"))


def remove_tree(path: str) -> None:
    fs, p = resolve(path)
    if fs.get_file_info(p).type == pafs.FileType.Directory:
        fs.delete_dir(p)
    elif fs.get_file_info(p).type == pafs.FileType.File:
        fs.delete_file(p)


def join(base: str, *parts: str) -> str:
    """``base/part/...``; a URI's query (``s3://b/p?endpoint_override=host:9000``) stays at the end."""
    root, sep, query = base.partition("?") if is_uri(base) else (base, "", "")
    return "/".join([root.rstrip("/"), *(p.strip("/") for p in parts)]) + sep + query


class StorageError(RuntimeError):
    pass


def check_shared(path: str, field: str = "run.storage_path", timeout_s: float = 120) -> None:
    """On a multi-node cluster, refuse a local ``path`` that some node cannot see.

    A marker file is written here and every alive node looks for it (a zero-CPU task pinned to
    each node), so a folder on the head's own disk fails at once with the nodes named, while a
    shared mount (NFS, EFS, Lustre) at the same path on every node passes. URIs pass: object
    stores are shared by construction. Needs ``ray.init()`` first.
    """
    if is_uri(path):
        return
    import socket
    import uuid

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) <= 1:
        return
    folder = os.path.abspath(path)
    os.makedirs(folder, exist_ok=True)
    marker = os.path.join(folder, f".fs_ray_shared_{uuid.uuid4().hex}")
    with open(marker, "w") as f:
        f.write(socket.gethostname())

    @ray.remote(num_cpus=0, max_retries=0)
    def probe(p: str) -> bool:
        return os.path.exists(p)

    try:
        refs = [
            probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(marker)
            for n in nodes
        ]
        seen = ray.get(refs, timeout=timeout_s)
    finally:
        os.remove(marker)
    blind = [f"{n['NodeManagerAddress']} ({n['NodeID'][:8]})" for n, ok in zip(nodes, seen, strict=True) if not ok]
    if blind:
        raise StorageError(
            f"{field}: {path} is not shared: node(s) {', '.join(blind)} cannot see it. A multi-node run "
            "needs storage every node reaches: s3://bucket/prefix, gs://bucket/prefix, an S3-compatible "
            "store (s3://bucket/prefix?endpoint_override=host:9000&scheme=http), or a shared mount at the "
            "same path on every node"
        )


@dataclass(frozen=True)
class FileEntry:
    path: str  # as the user would write it: absolute local path or full URI
    size: int


def _uri_prefix(path: str) -> str:
    """'s3://bucket/a/b' -> 's3://' so listed paths ('bucket/a/b/c') can be turned back into URIs."""
    return path.split("://", 1)[0] + "://" if is_uri(path) else ""


def list_files(spec: str) -> list[FileEntry]:
    """Expand a file, directory (recursively) or glob into its files, sorted by path.

    Hidden files and Hadoop/Spark markers (``_SUCCESS``, ``.crc``) in directories are skipped.
    """
    prefix = _uri_prefix(spec)
    if not is_uri(spec) and any(c in spec for c in GLOB_CHARS):
        paths = sorted(p for p in glob.glob(os.path.expanduser(spec), recursive=True) if os.path.isfile(p))
        return [FileEntry(os.path.abspath(p), os.path.getsize(p)) for p in paths]
    if is_uri(spec) and any(c in spec.split("://", 1)[1] for c in GLOB_CHARS):
        fs, inner = resolve(spec)
        base = inner
        while any(c in base for c in GLOB_CHARS):
            base = base.rsplit("/", 1)[0]
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
        return sorted(
            (
                FileEntry(prefix + i.path, i.size)
                for i in infos
                if i.type == pafs.FileType.File and fnmatch.fnmatch(i.path, inner)
            ),
            key=lambda e: e.path,
        )
    fs, inner = resolve(spec)
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.File:
        return [FileEntry(prefix + inner if prefix else inner, info.size)]
    if info.type == pafs.FileType.Directory:
        infos = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
        keep = []
        for i in infos:
            name = i.path.rsplit("/", 1)[-1]
            if i.type != pafs.FileType.File or name.startswith((".", "_")) or name.endswith(".crc"):
                continue
            keep.append(FileEntry(prefix + i.path if prefix else i.path, i.size))
        return sorted(keep, key=lambda e: e.path)
    return []
