"""Container images for the local real-node cluster, built here without any registry.

Each image ends up as a docker-archive tar that ``ctr -n k8s.io images import FILE`` loads
into a node's containerd (kubelets then never pull: pods use ``IfNotPresent``/``Never``):

- pause: Kubernetes' static ``pause`` binary alone, tagged as the sandbox image kubelet and
  kubeadm of that release use (``test/utils/image/manifest.go``: ``registry.k8s.io/pause:X``).
- agnhost: the static ``agnhost`` binary on a busybox-static rootfs, with what upstream's
  image adds that tests use (``agnhost-2``, ``/uploads``, porter's certificates, the
  ``user-defined-in-image`` user and group), tagged as ``manifest.go`` says. Upstream's Netpol
  specs use no other image, and the e2e framework pulls none at startup.
- nftpolicy: the repository's ``Dockerfile`` built with podman, on a Debian base made with
  mmdebstrap from this machine's apt sources instead of the Dockerfile's digest-pinned Docker
  Hub base (not reachable here; ``--build-arg DEBIAN_IMAGE=<local image ID>``).

pause and agnhost are written by ``image_archive`` (no engine needed) and rebuilt only when an
input changes (binaries, busybox, certificates, tags). nftpolicy is rebuilt on every run, which
podman's layer cache makes cheap when the sources did not change, and saved only when the image
ID changed. Everything is cached under ``$NFTPOLICY_IMAGES_DIR`` (default
``~/.cache/nftpolicy/images``), podman's storage and configuration included: nothing in /etc
or in a system-wide podman store is touched.

Command line (progress on stderr, one ``<tar path>\\t<image ref>`` line per image on stdout)::

    python -m controller.testing.images --bin BIN [--nftpolicy-image nftpolicy:e2e]
        [--skip-nftpolicy] [--agnhost-alias REF ...]

where ``BIN`` holds ``pause`` and ``agnhost`` (``scripts/testenv.sh --e2e`` builds them).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import fcntl
import hashlib
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from controller.testing.image_archive import (
    Entry,
    ImageSpec,
    archive_key,
    directory,
    docker_arch,
    elf_interpreter,
    regular_file,
    symlink,
    write_docker_archive,
)

__all__ = [
    "ImageArchive",
    "ImageBuildError",
    "build_all",
    "build_nftpolicy",
    "build_pause_and_agnhost",
    "main",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_ENV = "NFTPOLICY_IMAGES_DIR"
K8S_VERSION_ENV = "NFTPOLICY_K8S_VERSION"  # the same variable scripts/testenv.sh reads
DEFAULT_K8S_VERSION = "1.34.4"
DEFAULT_NFTPOLICY_IMAGE = "nftpolicy:e2e"

# The Dockerfile's base (ARG DEBIAN_IMAGE, pinned there by the digest of Docker Hub's
# debian:bookworm-slim, which is not reachable here), made locally and imported under this name
# into our own podman store. The build gets it by image ID (--build-arg DEBIAN_IMAGE=<ID>), so
# its log names the exact base it used.
DEBIAN_IMAGE = "localhost/nftpolicy-debian-base:bookworm-slim"
DEBIAN_SUITE = "bookworm"
# What the official -slim images leave out (debuerreotype's slimify), as dpkg options: they
# stay in the rootfs (/etc/dpkg/dpkg.cfg.d), so the Dockerfile's apt-get installs obey them too.
SLIM_DPKG_OPTIONS = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/groff/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/linda/*",
    "path-exclude=/usr/share/lintian/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/man/*",
)
# apt settings of the official images (debuerreotype writes these): no .deb archives or package
# caches left behind by the Dockerfile's apt-get installs, no translations, compressed lists.
DEBIAN_APT_CONF = {
    "docker-clean": (
        'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb '
        '/var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };\n'
        'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb '
        '/var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };\n'
        'Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n'
    ),
    "docker-gzip-indexes": 'Acquire::GzipIndexes "true";\n',
    "docker-no-languages": 'Acquire::Languages "none";\n',
    "docker-autoremove-suggests": 'Apt::AutoRemove::SuggestsImportant "false";\n',
}
# mmdebstrap's hook that makes /usr merged with symlinks, as the official images are, instead
# of installing usrmerge (and with it perl, 50 MB) to convert the rootfs afterwards.
MERGED_USR_HOOKS = Path("/usr/share/mmdebstrap/hooks/merged-usr")
# The official image's config, which `podman import` of a bare rootfs lacks: without a PATH the
# Dockerfile's `ENV PATH=/opt/nftpolicy/bin:$PATH` would leave /usr/bin out.
DEBIAN_IMAGE_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    'CMD ["bash"]',
)
# Part of the Debian base's cache key: bump it when the way the base is made changes.
DEBIAN_BASE_VERSION = 2

# Where the host's pip settings appear inside `podman build` RUN steps of builder stages.
BUILD_MOUNT_DIR = "/run/nftpolicy-build"
# pip settings that decide how pip reaches its index; forwarded into the build.
PIP_NETWORK_KEYS = (
    "index-url",
    "extra-index-url",
    "trusted-host",
    "find-links",
    "no-index",
    "proxy",
    "cert",
    "client-cert",
    "timeout",
    "default-timeout",
    "retries",
)
_PIP_PATH_KEYS = ("cert", "client-cert")

# agnhost's image, as test/images/agnhost/Dockerfile builds it (minus alpine's packages).
AGNHOST_PORTS = ("80/tcp", "8080/tcp", "8081/tcp", "9376/tcp", "5000/tcp")
AGNHOST_PASSWD = """\
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
user-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh
"""
AGNHOST_GROUP = """\
root:x:0:
nobody:x:65534:
user-defined-in-image:x:1000:
group-defined-in-image:x:50000:user-defined-in-image
"""
PAUSE_USER = "65535:65535"  # build/pause/Dockerfile

_HEARTBEAT_SECONDS = 60
_LOG_TAIL_LINES = 25
_ELF_HEAD_BYTES = 1 << 16


class ImageBuildError(RuntimeError):
    """An image could not be built: a tool or input is missing, or a build step failed."""


@dataclasses.dataclass(frozen=True)
class ImageArchive:
    """A docker-archive tar and the reference its image is imported under."""

    path: Path
    ref: str

    def line(self) -> str:
        """The command's output line for this image."""
        return f"{self.path}\t{self.ref}"


# ---- pure: what goes into the images ---------------------------------------------------------


def e2e_image_refs(manifest_go: str) -> dict[str, str]:
    """Image references by ImageID name (``"Agnhost"``, ``"Pause"``, ...) from the text of
    ``test/utils/image/manifest.go``, as the e2e framework computes them without a repo list."""
    block = re.search(r"initRegistry\s*=\s*RegistryList\{(.*?)\n\s*\}", manifest_go, re.S)
    if block is None:
        raise ValueError("no initRegistry = RegistryList{...} block")
    registries = dict(re.findall(r'(\w+):\s*"([^"]+)"', block.group(1)))
    refs = {}
    pattern = r'configs\[(\w+)\]\s*=\s*Config\{list\.(\w+),\s*"([^"]+)",\s*"([^"]+)"\}'
    for name, registry, image, version in re.findall(pattern, manifest_go):
        if registry in registries:
            refs[name] = f"{registries[registry]}/{image}:{version}"
    return refs


def normalized_ref(ref: str) -> str:
    """``ref`` as containerd's CRI looks it up: ``nftpolicy:e2e`` is
    ``docker.io/library/nftpolicy:e2e``, so an archive must carry that name for a pod whose
    image is ``nftpolicy:e2e`` to find it (podman would save it as ``localhost/...``)."""
    first, _, rest = ref.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return ref
    if not rest:
        ref = f"library/{ref}"
    return f"docker.io/{ref}"


def split_tag(ref: str) -> tuple[str, str]:
    """``repo:tag`` -> ``(repo, tag)``; the tag is ``latest`` when absent (a ``:`` before the
    last ``/`` is a registry port, not a tag)."""
    repo, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:
        return ref, "latest"
    return repo, tag


def pause_image(ref: str, pause: Path) -> tuple[ImageSpec, list[list[Entry]]]:
    """The pause image: the binary alone at /pause, run as 65535 (build/pause/Dockerfile)."""
    spec = ImageSpec(tags=(ref,), entrypoint=("/pause",), user=PAUSE_USER)
    return spec, [[regular_file("pause", source=pause, mode=0o755)]]


def busybox_rootfs(busybox: Path, applets: Sequence[str]) -> list[Entry]:
    """A minimal rootfs: static busybox at /bin/busybox, a symlink per applet (the paths
    ``busybox --list-full`` prints), /tmp, /root and the users and groups agnhost's tests use."""
    entries = [
        regular_file("bin/busybox", source=busybox, mode=0o755),
        directory("tmp", 0o1777),
        directory("root", 0o700),
        directory("home/user-defined-in-image", uid=1000, gid=1000),
        regular_file("etc/passwd", AGNHOST_PASSWD.encode()),
        regular_file("etc/group", AGNHOST_GROUP.encode()),
        regular_file("etc/nsswitch.conf", b"hosts: files dns\n"),
    ]
    entries += [symlink(a, "/bin/busybox") for a in sorted(set(applets)) if a != "bin/busybox"]
    return entries


def agnhost_image(
    tags: Sequence[str],
    agnhost: Path,
    busybox: Path,
    applets: Sequence[str],
    porter_dir: Path,
) -> tuple[ImageSpec, list[list[Entry]]]:
    """agnhost as test/images/agnhost/Dockerfile builds it, on busybox instead of alpine."""
    spec = ImageSpec(
        tags=tuple(tags),
        entrypoint=("/agnhost",),
        cmd=("pause",),
        exposed_ports=AGNHOST_PORTS,
    )
    entries = busybox_rootfs(busybox, applets) + [
        regular_file("agnhost", source=agnhost, mode=0o755),
        symlink("agnhost-2", "agnhost"),  # for the entrypoint-tester specs
        directory("uploads"),  # netexec
        regular_file("localhost.crt", source=porter_dir / "localhost.crt"),  # porter
        regular_file("localhost.key", source=porter_dir / "localhost.key"),
    ]
    return spec, [entries]


def archive_file_name(ref: str, key: str) -> str:
    """``registry.k8s.io/pause:3.10.1`` + key -> ``pause_3.10.1-<key[:16]>.tar``."""
    return f"{_ref_stem(ref)}-{key[:16]}.tar"


def _ref_stem(ref: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", ref.rsplit("/", 1)[-1])


# ---- pure: podman, apt and pip settings ------------------------------------------------------


def podman_configs(root: Path, nofile: int, nproc: int) -> tuple[str, str]:
    """``containers.conf`` and ``storage.conf`` for a podman whose state lives under ``root``.

    cgroupfs and runc: crun fails on this cgroup v1 hybrid host and there is no systemd;
    events to a file (no journald); host network (nothing to isolate in a build). The ulimits
    stay within what this process has: root here lacks CAP_SYS_RESOURCE, and podman's defaults
    (nofile and nproc 1048576) make runc fail with "error setting rlimit".
    """
    containers = f"""\
[containers]
netns = "host"
default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "file"
events_logfile_path = "{root}/events.log"
tmp_dir = "{root}/tmp"
"""
    storage = f"""\
[storage]
driver = "overlay"
graphroot = "{root}/storage"
runroot = "{root}/run"
"""
    return containers, storage


def debian_sources(files: Mapping[str, str], suite: str) -> dict[str, str]:
    """The host's apt sources for ``suite`` (and ``suite-updates``, ``-security``, ...), by
    format: ``{"debian.sources": deb822 stanzas, "debian.list": one-line entries}`` (keys only
    when non-empty). ``files`` maps file names (``*.sources`` deb822, else one-line) to text.

    Other suites (a vendor's "nodistro", "cloud-sdk-bookworm") are left out: their keyrings
    are not in the new rootfs, so apt in the image could not update from them.
    """

    def wanted(suites: Sequence[str]) -> bool:
        return any(s == suite or s.startswith(suite + "-") for s in suites)

    stanzas, lines = [], []
    for name, text in sorted(files.items()):
        if name.endswith(".sources"):
            for stanza in re.split(r"\n\s*\n", text):
                fields = _deb822_fields(stanza)
                if (
                    "deb" in fields.get("types", "").split()
                    and fields.get("enabled", "yes").lower() != "no"
                    and wanted(fields.get("suites", "").split())
                ):
                    stanzas.append(stanza.strip())
            continue
        for line in text.splitlines():
            words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb" and wanted(words[2:3]):
                lines.append(line.strip())
    out = {}
    if stanzas:
        out["debian.sources"] = "\n\n".join(stanzas) + "\n"
    if lines:
        out["debian.list"] = "\n".join(lines) + "\n"
    return out


def _deb822_fields(stanza: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    key = ""
    for line in stanza.splitlines():
        if line.startswith("#"):
            continue
        if line[:1].isspace() and key:
            fields[key] += " " + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
    return fields


def parse_pip_config_list(text: str) -> dict[str, str]:
    """``pip config list`` output (``global.cert='/x'``, ``:env:.timeout='60'``) as a dict."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        try:
            parsed = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            continue
        out[key.strip()] = str(parsed)
    return out


def pip_build_settings(
    pip_config: Mapping[str, str],
    env: Mapping[str, str],
    is_file: Callable[[str], bool],
) -> tuple[str, dict[str, str]]:
    """How pip inside a builder stage reaches its index the way this machine's pip does.

    ``pip_config`` is ``parse_pip_config_list`` of the host's pip; for ``pip install``,
    environment (``:env:``) beats ``install.`` beats ``global.``. Without a ``cert`` setting
    pip (its requests) uses ``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE``, so those count too:
    a machine behind a TLS-inspecting proxy needs that CA inside the build. Only settings about
    the network are forwarded. Returns a pip.conf text and the host files it refers to, as
    ``{host path: path inside the build}``; local find-links directories are dropped.
    """
    settings: dict[str, str] = {}
    for key in PIP_NETWORK_KEYS:
        for section in (":env:", "install", "global"):
            if f"{section}.{key}" in pip_config:
                settings[key] = pip_config[f"{section}.{key}"]
                break
    if "cert" not in settings:
        bundle = env.get("REQUESTS_CA_BUNDLE") or env.get("CURL_CA_BUNDLE")
        if bundle:
            settings["cert"] = bundle
    if "find-links" in settings:
        urls = [u for u in settings.pop("find-links").split() if "://" in u]
        if urls:
            settings["find-links"] = " ".join(urls)
    mounts: dict[str, str] = {}
    for key in _PIP_PATH_KEYS:
        path = settings.get(key)
        if path is None:
            continue
        if not is_file(path):
            del settings[key]
            continue
        mounts[path] = f"{BUILD_MOUNT_DIR}/{key}-{Path(path).name}"
        settings[key] = mounts[path]
    conf = "[global]\n" + "".join(f"{k} = {v}\n" for k, v in sorted(settings.items()))
    return conf, mounts


def local_state_patterns(gitignore: str) -> list[str]:
    """Name patterns of what ``.gitignore`` lists (virtualenvs, caches), plus ``.git``: left
    out of the build-context snapshot (``.dockerignore`` then picks the context from it)."""
    patterns = [".git"]
    for line in gitignore.splitlines():
        line = line.strip().strip("/")
        if line and not line.startswith(("#", "!")):
            patterns.append(line.rsplit("/", 1)[-1])
    return patterns


def builder_stages(dockerfile: str) -> list[str]:
    """Names of the stages before the last one (``FROM x AS name``): the ones that run pip and
    get the host's pip settings mounted; the final stage is built without any mount, so that
    not even empty mount points of them end up in the image."""
    stages = re.findall(r"^\s*FROM\s+\S+(?:\s+AS\s+(\S+))?\s*$", dockerfile, re.M | re.I)
    return [name for name in stages[:-1] if name]


# ---- the shell -------------------------------------------------------------------------------


class _Progress:
    """``[images] ...`` lines on stderr, a step's duration when it ends."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def say(self, message: str) -> None:
        print(f"[images] {message}", file=self.out, flush=True)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        self.say(f"{name} ...")
        yield
        self.say(f"{name}: done in {time.monotonic() - start:.1f}s")


def _require_tool(name: str, purpose: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ImageBuildError(
            f"{name} is not installed (apt-get install {name}); it {purpose} "
            "(--skip-nftpolicy builds only pause and agnhost)"
        )
    return path


def _run_logged(
    cmd: Sequence[str],
    log: Path,
    progress: _Progress,
    what: str,
    env: Mapping[str, str] | None = None,
) -> None:
    """Run ``cmd`` with its output in ``log``, a heartbeat every minute; on failure raise with
    the log's tail and its path."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with log.open("w") as handle:
        handle.write(f"$ {' '.join(cmd)}\n")
        handle.flush()
        try:
            proc = subprocess.Popen(
                cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL
            )
        except OSError as exc:
            raise ImageBuildError(f"{what}: cannot run {cmd[0]}: {exc}") from exc
        while True:
            try:
                rc = proc.wait(timeout=_HEARTBEAT_SECONDS)
                break
            except subprocess.TimeoutExpired:
                progress.say(f"... {what} still running ({time.monotonic() - start:.0f}s)")
    if rc != 0:
        tail = log.read_text(errors="replace").splitlines()[-_LOG_TAIL_LINES:]
        raise ImageBuildError(
            f"{what} failed (exit status {rc}); last lines of {log}:\n"
            + "\n".join(f"    {line}" for line in tail)
            + f"\n  full log: {log}"
        )


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _static_binary(path: Path, hint: str) -> Path:
    """``path`` if it is a static executable; otherwise an error saying how to get one."""
    if not os.access(path, os.X_OK):
        raise ImageBuildError(f"{path} is missing or not executable; {hint}")
    with path.open("rb") as handle:
        head = handle.read(_ELF_HEAD_BYTES)
    try:
        interpreter = elf_interpreter(head)
    except ValueError as exc:
        raise ImageBuildError(f"{path}: {exc}; {hint}") from exc
    if interpreter is not None:
        raise ImageBuildError(
            f"{path} is dynamically linked (interpreter {interpreter}) and cannot run in an "
            f"image without a libc; {hint}"
        )
    return path


def cache_dir() -> Path:
    """Where archives, the Debian base, podman's store and the logs are kept."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache/nftpolicy/images")


@contextmanager
def _locked(directory: Path, progress: _Progress) -> Iterator[None]:
    """One build at a time per cache directory (the lead's script and a cluster builder may
    both ask for images)."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress.say(f"another build holds {directory}/.lock; waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def k8s_source_dir(version: str) -> Path:
    """The k8s.io/kubernetes module source of ``version`` (``go mod download``; instant when
    the module cache has it): manifest.go's image tags and porter's certificates come from it."""
    go = os.environ.get("GO") or shutil.which("go") or "/usr/local/go/bin/go"
    if not os.access(go, os.X_OK):
        raise ImageBuildError(
            "Go is not installed (looked for $GO, go in PATH, /usr/local/go/bin/go); it fetches "
            f"the k8s.io/kubernetes@v{version} source the pause and agnhost images need"
        )
    env = {**os.environ, "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"}
    with tempfile.TemporaryDirectory() as tmp:  # outside any module
        proc = subprocess.run(
            [go, "mod", "download", "-json", f"k8s.io/kubernetes@v{version}"],
            capture_output=True,
            text=True,
            cwd=tmp,
            env=env,
            check=False,
        )
    if proc.returncode != 0:  # the reason is in the JSON's "Error" (stdout) or on stderr
        raise ImageBuildError(
            f"go mod download k8s.io/kubernetes@v{version} failed: "
            f"{(proc.stdout + proc.stderr).strip()}"
        )
    directory = Path(json.loads(proc.stdout).get("Dir", ""))
    if not (directory / "test/utils/image/manifest.go").is_file():
        raise ImageBuildError(f"no test/utils/image/manifest.go in {directory}")
    return directory


def _cached_archive(
    out_dir: Path,
    spec: ImageSpec,
    layers: list[list[Entry]],
    progress: _Progress,
    name: str,
) -> ImageArchive:
    """Write the archive unless one with the same inputs exists; drop older ones of the ref."""
    arch = docker_arch(platform.machine())
    key = archive_key(spec, layers, arch, _sha256_file)
    path = out_dir / archive_file_name(spec.tags[0], key)
    if path.is_file():
        progress.say(f"{name}: cached {path}")
    else:
        with progress.step(f"{name}: writing {path.name}"):
            write_docker_archive(path, spec, layers, arch)
    for old in out_dir.glob(f"{_ref_stem(spec.tags[0])}-*.tar"):
        if old != path:
            old.unlink()
    return ImageArchive(path, spec.tags[0])


def build_pause_and_agnhost(
    bin_dir: Path,
    out_dir: Path,
    progress: _Progress,
    *,
    k8s_version: str,
    agnhost_aliases: Sequence[str] = (),
) -> list[ImageArchive]:
    """The pause and agnhost archives from ``bin_dir/pause`` and ``bin_dir/agnhost``."""
    hint = "build it with scripts/testenv.sh --e2e (and pass its bin directory as --bin)"
    pause = _static_binary(bin_dir / "pause", hint)
    agnhost = _static_binary(bin_dir / "agnhost", hint)
    busybox_path = shutil.which("busybox") or "/bin/busybox"
    busybox = _static_binary(Path(busybox_path), "install busybox-static (apt-get)")
    listing = subprocess.run(
        [str(busybox), "--list-full"], capture_output=True, text=True, check=False
    )
    if listing.returncode != 0:
        raise ImageBuildError(f"{busybox} --list-full failed: {listing.stderr.strip()}")
    applets = listing.stdout.split()
    source = k8s_source_dir(k8s_version)
    refs = e2e_image_refs((source / "test/utils/image/manifest.go").read_text())
    missing = {"Pause", "Agnhost"} - refs.keys()
    if missing:
        raise ImageBuildError(
            f"no {sorted(missing)} image in {source}/test/utils/image/manifest.go"
        )
    porter = source / "test/images/agnhost/porter"
    pause_spec, pause_layers = pause_image(refs["Pause"], pause)
    agnhost_spec, agnhost_layers = agnhost_image(
        [refs["Agnhost"], *agnhost_aliases], agnhost, busybox, applets, porter
    )
    return [
        _cached_archive(out_dir, pause_spec, pause_layers, progress, "pause"),
        _cached_archive(out_dir, agnhost_spec, agnhost_layers, progress, "agnhost"),
    ]


class _Podman:
    """podman with its configuration and storage in a directory of ours."""

    def __init__(self, root: Path, logs: Path, progress: _Progress) -> None:
        self.exe = _require_tool("podman", "builds the nftpolicy image from the Dockerfile")
        self.logs = logs
        self.progress = progress
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
        # podman runs with RLIMIT_NPROC at kernel.pid_max (seen here: 32768 while its caller
        # had 96365), and runc, started by podman, cannot raise a container's limit above it.
        pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
        for name in ("tmp", "storage", "run"):
            (root / name).mkdir(parents=True, exist_ok=True)
        containers, storage = podman_configs(
            root, _finite(nofile, 1 << 20), min(_finite(nproc, pid_max), pid_max)
        )
        (root / "containers.conf").write_text(containers)
        (root / "storage.conf").write_text(storage)
        self.env = {
            **os.environ,
            "CONTAINERS_CONF": str(root / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(root / "storage.conf"),
        }

    def run(self, args: Sequence[str], log_name: str, what: str) -> None:
        _run_logged([self.exe, *args], self.logs / log_name, self.progress, what, self.env)

    def image_id(self, ref: str) -> str | None:
        proc = subprocess.run(
            [self.exe, "image", "inspect", "--format", "{{.Id}}", ref],
            capture_output=True,
            text=True,
            env=self.env,
            check=False,
        )
        if proc.returncode != 0:
            return None
        return proc.stdout.strip() or None


def _finite(limit: int, fallback: int) -> int:
    return fallback if limit == resource.RLIM_INFINITY else limit


def _host_apt_sources() -> dict[str, str]:
    files = {}
    candidates = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in candidates:
        if path.is_file() and path.suffix in (".list", ".sources"):
            files[path.name] = path.read_text(errors="replace")
    return files


def _debian_base(podman: _Podman, out_dir: Path, progress: _Progress) -> str:
    """Make sure ``DEBIAN_IMAGE`` in our podman store is the mmdebstrap rootfs of the current
    sources, and return its image ID; the tar and the import are cached (a new import would
    change the base's ID and throw away podman's layer cache)."""
    sources = debian_sources(_host_apt_sources(), DEBIAN_SUITE)
    merged_usr = MERGED_USR_HOOKS.is_dir()
    inputs = [DEBIAN_BASE_VERSION, DEBIAN_SUITE, SLIM_DPKG_OPTIONS, DEBIAN_APT_CONF]
    key = hashlib.sha256(json.dumps([*inputs, merged_usr, sources]).encode()).hexdigest()
    base_dir = out_dir / "debian"
    base_dir.mkdir(parents=True, exist_ok=True)
    tar = base_dir / f"debian-{DEBIAN_SUITE}-{key[:16]}.tar"
    stamp = tar.with_suffix(".imported")
    if not tar.is_file():
        mmdebstrap = _require_tool("mmdebstrap", "makes the Debian base of the nftpolicy image")
        mirrors = []
        for name, text in sources.items():
            (base_dir / name).write_text(text)
            mirrors.append(str(base_dir / name))
        if not mirrors:
            progress.say(f"no {DEBIAN_SUITE} apt sources on this host; mmdebstrap's default mirror")
        tmp = tar.with_name(f".{tar.name}.tmp")
        apt_conf = base_dir / "apt.conf.d"
        apt_conf.mkdir(exist_ok=True)
        for name, text in DEBIAN_APT_CONF.items():
            (apt_conf / name).write_text(text)
        cmd = [mmdebstrap, "--variant=minbase", "--format=tar"]
        cmd += [f"--dpkgopt={opt}" for opt in SLIM_DPKG_OPTIONS]
        cmd += [f"--customize-hook=sync-in {apt_conf} /etc/apt/apt.conf.d"]
        # With docker-clean in place mmdebstrap's cleanup no longer finds apt's package
        # caches (it asks apt where they are): 70 MB that the official images do not have.
        cmd += ['--customize-hook=rm -f "$1"/var/cache/apt/*.bin']
        if merged_usr:
            cmd += [f"--hook-dir={MERGED_USR_HOOKS}"]
        with progress.step(f"mmdebstrap {DEBIAN_SUITE} (about a minute)"):
            _run_logged(
                [*cmd, DEBIAN_SUITE, str(tmp), *mirrors],
                podman.logs / "mmdebstrap.log",
                progress,
                "mmdebstrap",
            )
        tmp.replace(tar)
        for old in base_dir.glob(f"debian-{DEBIAN_SUITE}-*"):
            if old.name not in (tar.name, stamp.name):
                old.unlink()
    # mmdebstrap cannot pin a snapshot date here (snapshot.debian.org is not reachable), so
    # the base is recorded instead: the rootfs tar's digest and the image ID the build uses.
    progress.say(f"base rootfs {tar.name}: sha256 {_sha256_file(tar)}")
    current = podman.image_id(DEBIAN_IMAGE)
    if current is not None and stamp.is_file() and stamp.read_text().strip() == current:
        progress.say(f"base {DEBIAN_IMAGE}: up to date, image {current}")
        return current
    changes = [f"--change={c}" for c in DEBIAN_IMAGE_CHANGES]
    with progress.step(f"podman import {tar.name} as {DEBIAN_IMAGE}"):
        podman.run(
            ["import", *changes, str(tar), DEBIAN_IMAGE], "podman-import.log", "podman import"
        )
    imported = podman.image_id(DEBIAN_IMAGE)
    if imported is None:
        raise ImageBuildError(f"podman import did not create {DEBIAN_IMAGE}")
    stamp.write_text(imported + "\n")
    progress.say(f"base {DEBIAN_IMAGE}: imported, image {imported}")
    return imported


def _host_pip_config() -> dict[str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        capture_output=True,
        text=True,
        check=False,
    )
    return parse_pip_config_list(proc.stdout) if proc.returncode == 0 else {}


def build_nftpolicy(
    ref: str, out_dir: Path, progress: _Progress, *, context: Path = REPO_ROOT
) -> ImageArchive:
    """Build ``context/Dockerfile`` with podman as ``ref`` (normalized, see ``normalized_ref``)
    and save it as a docker archive (only when the image ID changed since the last save)."""
    logs = out_dir / "logs"
    podman = _Podman(out_dir / "podman", logs, progress)
    base_id = _debian_base(podman, out_dir, progress)
    ref = normalized_ref(ref)
    # Both builds below must see the same files, or the second one misses the first one's
    # cache and runs pip without the host's settings: build from a snapshot of the tree.
    snapshot = out_dir / "context"
    shutil.rmtree(snapshot, ignore_errors=True)
    gitignore = context / ".gitignore"
    ignored = local_state_patterns(gitignore.read_text() if gitignore.is_file() else "")
    shutil.copytree(context, snapshot, symlinks=True, ignore=shutil.ignore_patterns(*ignored))
    context = snapshot
    dockerfile = context / "Dockerfile"
    common = ["build", "--network=host", "--pull=never", "--layers", "-f", str(dockerfile)]
    common.append(f"--build-arg=DEBIAN_IMAGE={base_id}")  # instead of the Docker Hub digest
    conf, mounts = pip_build_settings(_host_pip_config(), os.environ, os.path.isfile)
    pip_conf = out_dir / "build-pip.conf"
    pip_conf.write_text(conf)
    volumes = [f"--volume={pip_conf}:/etc/pip.conf:ro"]
    volumes += [f"--volume={host}:{inside}:ro" for host, inside in sorted(mounts.items())]
    progress.say(f"pip settings for the build: {', '.join(conf.splitlines()[1:]) or 'none'}")
    for stage in builder_stages(dockerfile.read_text()):
        with progress.step(f"podman build --target {stage}"):
            # Tagged, so that the prune below keeps this stage's cache.
            stage_tag = f"{split_tag(ref)[0]}-stage:{stage}"
            podman.run(
                [*common, *volumes, f"--target={stage}", "-t", stage_tag, str(context)],
                f"podman-build-{stage}.log",
                f"podman build of stage {stage}",
            )
    with progress.step(f"podman build {ref}"):
        podman.run([*common, "-t", ref, str(context)], "podman-build.log", "podman build")
    image_id = podman.image_id(ref)
    if image_id is None:
        raise ImageBuildError(f"podman build did not tag {ref}; see {logs}/podman-build.log")
    # Earlier builds' layers (hundreds of MB per source change) are untagged now.
    podman.run(["image", "prune", "--force"], "podman-prune.log", "podman image prune")
    path = out_dir / f"{_ref_stem(ref)}.tar"
    stamp = path.with_suffix(".id")
    if path.is_file() and stamp.is_file() and stamp.read_text().strip() == image_id:
        progress.say(f"nftpolicy: image {image_id[:12]} unchanged, cached {path}")
        return ImageArchive(path, ref)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    with progress.step(f"podman save {ref}"):
        podman.run(
            ["save", "--format=docker-archive", "-o", str(tmp), ref],
            "podman-save.log",
            "podman save",
        )
    tmp.replace(path)
    stamp.write_text(image_id + "\n")
    return ImageArchive(path, ref)


def build_all(
    bin_dir: Path,
    *,
    nftpolicy_image: str | None = DEFAULT_NFTPOLICY_IMAGE,
    agnhost_aliases: Sequence[str] = (),
    k8s_version: str | None = None,
    out_dir: Path | None = None,
    stderr: IO[str] | None = None,
) -> list[ImageArchive]:
    """All images the local cluster needs: pause, agnhost and (unless ``nftpolicy_image`` is
    None) nftpolicy. Progress goes to ``stderr`` (default: this process's standard error).

    Raises:
        ImageBuildError: a tool or input is missing, or a build step failed (the message
            names the log).
    """
    progress = _Progress(stderr or sys.stderr)
    out_dir = out_dir or cache_dir()
    version = k8s_version or os.environ.get(K8S_VERSION_ENV) or DEFAULT_K8S_VERSION
    start = time.monotonic()
    with _locked(out_dir, progress):
        archives = build_pause_and_agnhost(
            bin_dir, out_dir, progress, k8s_version=version, agnhost_aliases=agnhost_aliases
        )
        if nftpolicy_image is not None:
            archives.append(build_nftpolicy(nftpolicy_image, out_dir, progress))
    for archive in archives:
        size = archive.path.stat().st_size / 1e6
        progress.say(f"{archive.ref}: {archive.path} ({size:.1f} MB)")
    progress.say(f"done in {time.monotonic() - start:.1f}s")
    return archives


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m controller.testing.images",
        description="Build (cached) docker-archive tars of the images the local cluster needs; "
        "print '<tar path>\\t<image ref>' per image.",
    )
    parser.add_argument("--bin", type=Path, required=True, help="directory with pause, agnhost")
    parser.add_argument("--nftpolicy-image", default=DEFAULT_NFTPOLICY_IMAGE, metavar="REF")
    parser.add_argument("--skip-nftpolicy", action="store_true", help="only pause and agnhost")
    parser.add_argument(
        "--agnhost-alias",
        action="append",
        default=[],
        metavar="REF",
        help="another tag for the agnhost image (e.g. one a test suite pins); repeatable",
    )
    parser.add_argument(
        "--k8s-version",
        help=f"Kubernetes release the tags come from (${K8S_VERSION_ENV}, default {DEFAULT_K8S_VERSION})",
    )
    args = parser.parse_args(argv)
    try:
        archives = build_all(
            args.bin,
            nftpolicy_image=None if args.skip_nftpolicy else args.nftpolicy_image,
            agnhost_aliases=args.agnhost_alias,
            k8s_version=args.k8s_version,
        )
    except ImageBuildError as exc:
        print(f"[images] ERROR: {exc}", file=sys.stderr)
        return 1
    for archive in archives:
        print(archive.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
