"""Docker-archive image tars written without any container engine (the pure core of ``images``).

A docker archive is what ``docker save`` writes and ``ctr images import`` / ``docker load`` /
``podman load`` read: an outer tar holding one tar per layer, an image config JSON and a
``manifest.json`` naming the config, the layers and the tags. Images for test clusters (pause,
agnhost) are only a static binary or two on a small rootfs, so writing that format directly
needs no registry, no daemon and no root, and the same inputs always give byte-identical
archives (fixed mtimes, sorted entries, numeric owners only): a cache can key on the inputs.

Typical use::

    spec = ImageSpec(tags=("registry.k8s.io/pause:3.10.1",), entrypoint=("/pause",),
                     user="65535:65535")
    write_docker_archive(out, spec, [[regular_file("pause", source=Path("bin/pause"))]], "amd64")
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import posixpath
import tarfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any, Literal

__all__ = [
    "DEFAULT_PATH",
    "archive_key",
    "Entry",
    "FORMAT_VERSION",
    "ImageSpec",
    "directory",
    "docker_arch",
    "elf_interpreter",
    "image_config",
    "normalized",
    "regular_file",
    "symlink",
    "write_docker_archive",
    "write_layer",
]

# What Docker puts into a container's environment when an image sets no PATH.
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Every mtime in the archives (layers and outer tar), and the config's "created": the
# archives then depend on their contents only.
EPOCH = "1970-01-01T00:00:00Z"
# Part of every archive_key: bump it when this module changes what it writes.
FORMAT_VERSION = 1

Kind = Literal["dir", "file", "symlink"]


@dataclasses.dataclass(frozen=True)
class Entry:
    """One filesystem entry of a layer.

    ``path`` is relative to the root (``"bin/sh"``). A file's content is ``data``, or the file
    at ``source`` (streamed, so large binaries are never held in memory); a symlink points at
    ``target``. Owners are numeric only: a layer has no user database to resolve names in.
    """

    path: str
    kind: Kind
    mode: int
    uid: int = 0
    gid: int = 0
    data: bytes = b""
    source: Path | None = None
    target: str = ""


def directory(path: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> Entry:
    return Entry(path, "dir", mode, uid, gid)


def regular_file(
    path: str,
    data: bytes = b"",
    *,
    source: Path | None = None,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
) -> Entry:
    return Entry(path, "file", mode, uid, gid, data=data, source=source)


def symlink(path: str, target: str) -> Entry:
    return Entry(path, "symlink", 0o777, target=target)


@dataclasses.dataclass(frozen=True)
class ImageSpec:
    """What an image's config says about running it; ``tags[0]`` is its primary reference."""

    tags: tuple[str, ...]
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    user: str = ""
    env: tuple[str, ...] = (DEFAULT_PATH,)
    workdir: str = "/"
    exposed_ports: tuple[str, ...] = ()  # "80/tcp"


def _clean(path: str) -> str:
    """``path`` relative to the root, normalized; rejects escapes out of the root."""
    cleaned = posixpath.normpath("/" + path.strip("/")).lstrip("/")
    if not cleaned or cleaned == "." or ".." in path.split("/"):
        raise ValueError(f"invalid path in a layer: {path!r}")
    return cleaned


def normalized(entries: Iterable[Entry]) -> tuple[Entry, ...]:
    """The entries with clean paths, missing parent directories added (root-owned, 0755) and
    sorted so that every directory precedes its contents; a path given twice is an error."""
    by_path: dict[str, Entry] = {}
    for entry in entries:
        path = _clean(entry.path)
        if path in by_path:
            raise ValueError(f"{path!r} appears twice in a layer")
        by_path[path] = dataclasses.replace(entry, path=path)
    for path in list(by_path):
        parent = posixpath.dirname(path)
        while parent and parent not in by_path:
            by_path[parent] = directory(parent)
            parent = posixpath.dirname(parent)
        if parent and by_path[parent].kind != "dir":
            raise ValueError(f"{path!r} is inside {parent!r}, which is not a directory")
    return tuple(by_path[p] for p in sorted(by_path, key=lambda p: p.split("/")))


class _HashingWriter(io.RawIOBase):
    """A write-only stream that hashes and counts what passes through to ``out``."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self.sha256.update(data)
        self.size += len(data)
        self.out.write(data)
        return len(data)


def _tarinfo(entry: Entry, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(entry.path)
    info.mode = entry.mode
    info.uid, info.gid = entry.uid, entry.gid
    info.uname = info.gname = ""
    info.mtime = 0
    if entry.kind == "dir":
        info.type = tarfile.DIRTYPE
    elif entry.kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, entry.target
    else:
        info.type, info.size = tarfile.REGTYPE, size
    return info


def _open_content(entry: Entry) -> tuple[IO[bytes], int]:
    if entry.source is None:
        return io.BytesIO(entry.data), len(entry.data)
    handle = entry.source.open("rb")
    return handle, entry.source.stat().st_size


def write_layer(entries: Iterable[Entry], out: IO[bytes]) -> tuple[str, int]:
    """Write an uncompressed layer tar of ``entries`` to ``out``; return its digest
    (``"sha256:<hex>"``, the image config's diff_id for it) and its size in bytes."""
    hashing = _HashingWriter(out)
    with tarfile.open(fileobj=hashing, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for entry in normalized(entries):
            if entry.kind != "file":
                tar.addfile(_tarinfo(entry))
                continue
            content, size = _open_content(entry)
            with content:
                tar.addfile(_tarinfo(entry, size), content)
    return "sha256:" + hashing.sha256.hexdigest(), hashing.size


def image_config(spec: ImageSpec, diff_ids: Sequence[str], arch: str) -> dict[str, Any]:
    """The image config JSON (Docker image spec v1.2, which containerd and OCI tools read)."""
    config: dict[str, Any] = {"Env": list(spec.env), "WorkingDir": spec.workdir}
    if spec.entrypoint:
        config["Entrypoint"] = list(spec.entrypoint)
    if spec.cmd:
        config["Cmd"] = list(spec.cmd)
    if spec.user:
        config["User"] = spec.user
    if spec.exposed_ports:
        config["ExposedPorts"] = {port: {} for port in spec.exposed_ports}
    return {
        "architecture": arch,
        "os": "linux",
        "created": EPOCH,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": [
            {"created": EPOCH, "created_by": "nftpolicy controller/testing/image_archive"}
            for _ in diff_ids
        ],
    }


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    tar.addfile(_tarinfo(regular_file(name, data), len(data)), io.BytesIO(data))


def write_docker_archive(
    out: Path, spec: ImageSpec, layers: Sequence[Iterable[Entry]], arch: str
) -> str:
    """Write the docker archive of an image with ``layers`` (lowest first) to ``out``, via a
    temporary file next to it (a reader never sees half an archive); return the config digest
    (the image ID ``ctr``/``podman`` report)."""
    if not spec.tags:
        raise ValueError("an image archive needs at least one tag")
    tmp_layers = [out.with_name(f".{out.name}.layer{i}.tmp") for i in range(len(layers))]
    tmp_out = out.with_name(f".{out.name}.tmp")
    try:
        diff_ids = []
        for entries, tmp in zip(layers, tmp_layers, strict=True):
            with tmp.open("wb") as handle:
                diff_ids.append(write_layer(entries, handle)[0])
        config = _json_bytes(image_config(spec, diff_ids, arch))
        config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
        layer_names = [f"{d.removeprefix('sha256:')}.tar" for d in diff_ids]
        config_name = f"{config_digest.removeprefix('sha256:')}.json"
        manifest = [{"Config": config_name, "RepoTags": list(spec.tags), "Layers": layer_names}]
        with tarfile.open(tmp_out, "w", format=tarfile.PAX_FORMAT) as tar:
            _add_bytes(tar, config_name, config)
            for name, tmp in zip(layer_names, tmp_layers, strict=True):
                with tmp.open("rb") as handle:
                    size = tmp.stat().st_size
                    tar.addfile(_tarinfo(regular_file(name), size), handle)
            _add_bytes(tar, "manifest.json", _json_bytes(manifest))
        tmp_out.replace(out)
        return config_digest
    finally:
        for tmp in [*tmp_layers, tmp_out]:
            tmp.unlink(missing_ok=True)


# ---- checks on the binaries that go into such images -----------------------------------------

_PT_INTERP = 3


def elf_interpreter(head: bytes) -> str | None:
    """The program interpreter (dynamic loader) a 64-bit little-endian ELF executable asks for,
    from its first bytes (64 KiB is plenty); None for a static executable.

    An image without a libc can only hold static executables; a dynamic one fails only when a
    container starts, with a bare "no such file or directory", so the build checks first.
    Raises ValueError when ``head`` is not such an ELF file.
    """
    if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    phoff = int.from_bytes(head[0x20:0x28], "little")
    phentsize = int.from_bytes(head[0x36:0x38], "little")
    phnum = int.from_bytes(head[0x38:0x3A], "little")
    for i in range(phnum):
        ph = head[phoff + i * phentsize : phoff + (i + 1) * phentsize]
        if len(ph) < 0x28:
            raise ValueError("ELF program headers are beyond the bytes read")
        if int.from_bytes(ph[0:4], "little") == _PT_INTERP:
            offset = int.from_bytes(ph[0x08:0x10], "little")
            size = int.from_bytes(ph[0x20:0x28], "little")
            return head[offset : offset + size].rstrip(b"\0").decode(errors="replace")
    return None


_DOCKER_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le"}


def docker_arch(machine: str) -> str:
    """The image-config architecture for ``platform.machine()``: ``ctr images import`` keeps
    only images of the node's platform, so the config must name it as containerd does."""
    return _DOCKER_ARCH.get(machine, machine)


def archive_key(
    spec: ImageSpec,
    layers: Sequence[Iterable[Entry]],
    arch: str,
    file_digest: Callable[[Path], str],
) -> str:
    """A sha256 hex key that changes whenever the archive ``write_docker_archive`` would write
    changes: the spec, the architecture and every entry, with ``file_digest(source)`` standing
    for the content of a file taken from disk (hashing 50 MB is cheaper than re-archiving it)."""
    described: list[Any] = [FORMAT_VERSION, dataclasses.asdict(spec), arch]
    for entries in layers:
        described.append(
            [
                [e.path, e.kind, e.mode, e.uid, e.gid, e.target, _content_digest(e, file_digest)]
                for e in normalized(entries)
            ]
        )
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def _content_digest(entry: Entry, file_digest: Callable[[Path], str]) -> str:
    if entry.source is not None:
        return file_digest(entry.source)
    return hashlib.sha256(entry.data).hexdigest()
