"""The supply chain as committed: hash-pinned locks that agree with pyproject.toml, installs that
go through them (scripts/bootstrap.sh and the Dockerfile alike), and a digest-pinned base image.

scripts/lock.sh regenerates the locks; these tests catch a pyproject.toml edited without it, a
hand-edited lock, and an install path that bypasses the locks.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import tomllib
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
LOCKS = REPO / "requirements"
LOCK_NAMES = ("build", "runtime", "test", "tools")
# The environment the locks must hold for: the image (Debian bookworm, CPython 3.11) and CI.
TARGET_ENV = {"python_version": "3.11", "python_full_version": "3.11.2", "sys_platform": "linux"}
TARGET_ENV |= {"platform_system": "Linux", "os_name": "posix"}
TARGET_ENV |= {"platform_python_implementation": "CPython", "implementation_name": "cpython"}
DIGEST_REF = re.compile(r"^\S+@sha256:[0-9a-f]{64}$")


@dataclasses.dataclass(frozen=True)
class Pin:
    """One requirement of a lock: ``name==version [; marker]`` and its hashes."""

    name: str
    version: Version
    marker: Marker | None
    hashes: tuple[str, ...]


def lock_requirements(text: str) -> list[str]:
    """The logical lines of a requirements file: comments dropped, ``\\`` continuations joined."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [" ".join(line.split()) for line in joined.splitlines() if line.strip()]


def parse_pin(line: str) -> Pin:
    """A lock line as a ``Pin``; ValueError when it is not ``name==version`` with hashes."""
    requirement, *options = re.split(r"\s+(?=--)", line)
    hashes = []
    for option in options:
        match = re.fullmatch(r"--hash=sha256:([0-9a-f]{64})", option.strip())
        if match is None:
            raise ValueError(f"not a sha256 hash option: {option!r} in {line!r}")
        hashes.append(match.group(1))
    req = Requirement(requirement)
    specs = list(req.specifier)
    if len(specs) != 1 or specs[0].operator != "==" or "*" in specs[0].version:
        raise ValueError(f"not pinned to one version with ==: {requirement!r}")
    if req.url or req.extras:
        raise ValueError(f"a URL or extras in a lock line: {requirement!r}")
    if not hashes:
        raise ValueError(f"no --hash for {requirement!r}")
    return Pin(canonicalize_name(req.name), Version(specs[0].version), req.marker, tuple(hashes))


def load_lock(name: str) -> dict[str, Pin]:
    pins = [parse_pin(line) for line in lock_requirements((LOCKS / f"{name}.lock").read_text())]
    by_name = {pin.name: pin for pin in pins}
    assert len(by_name) == len(pins), f"{name}.lock pins a package twice"
    return by_name


def pyproject() -> dict[str, object]:
    with (REPO / "pyproject.toml").open("rb") as handle:
        return tomllib.load(handle)


def assert_satisfied(requirements: list[str], lock: str) -> None:
    """Every requirement (a pyproject.toml entry) is pinned in ``lock`` to a version it allows,
    without a marker that leaves it out of the target environment."""
    pins = load_lock(lock)
    for text in requirements:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate(TARGET_ENV):
            continue
        pin = pins.get(canonicalize_name(req.name))
        assert pin is not None, f"{req.name} (pyproject.toml) is missing from {lock}.lock"
        assert req.specifier.contains(pin.version, prereleases=True), (
            f"{lock}.lock pins {pin.name}=={pin.version}, pyproject.toml wants {req}: "
            "run scripts/lock.sh"
        )
        assert pin.marker is None or pin.marker.evaluate(TARGET_ENV), (
            f"{lock}.lock installs {pin.name} only where {pin.marker}"
        )


def test_lock_lines_parse_as_hashed_pins() -> None:
    line = "kopf==1.45.2 \\\n    --hash=sha256:" + "a" * 64 + "\n    # via nftpolicy\n"
    assert parse_pin(lock_requirements(line)[0]) == Pin(
        "kopf", Version("1.45.2"), None, ("a" * 64,)
    )
    for bad in (
        "kopf==1.45.2",
        "kopf>=1.37 --hash=sha256:" + "a" * 64,
        "kopf==1.45.2 --hash=md5:x",
    ):
        with pytest.raises(ValueError):
            parse_pin(bad)


@pytest.mark.parametrize("name", LOCK_NAMES)
def test_every_lock_line_is_an_exact_pin_with_hashes(name: str) -> None:
    pins = load_lock(name)  # parse_pin raises on an unpinned or unhashed line
    assert pins, f"{name}.lock pins nothing"


def test_runtime_lock_satisfies_project_dependencies() -> None:
    project = pyproject()["project"]
    assert isinstance(project, dict)
    assert_satisfied(project["dependencies"], "runtime")


def test_test_lock_satisfies_dependencies_and_test_extra() -> None:
    project = pyproject()["project"]
    assert isinstance(project, dict)
    assert_satisfied(project["dependencies"] + project["optional-dependencies"]["test"], "test")


def test_build_lock_satisfies_build_system_and_pins_pip() -> None:
    build_system = pyproject()["build-system"]
    assert isinstance(build_system, dict)
    assert_satisfied([*build_system["requires"], "pip"], "build")


def test_image_and_test_venv_run_the_same_versions() -> None:
    runtime, test = load_lock("runtime"), load_lock("test")
    differing = {
        name: (pin.version, test[name].version if name in test else None)
        for name, pin in runtime.items()
        if name not in test or test[name].version != pin.version
    }
    assert not differing, f"runtime.lock and test.lock disagree: {differing}; run scripts/lock.sh"


def dockerfile_bases(text: str) -> list[str]:
    """The image each ``FROM`` of a Dockerfile builds on, with ARG defaults substituted; stages
    named earlier (``FROM builder``) are left out."""
    args: dict[str, str] = {}
    stages: set[str] = set()
    bases = []
    for line in re.sub(r"\\\n", " ", text).splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        if words[0].upper() == "ARG" and "=" in words[1]:
            key, _, value = words[1].partition("=")
            args.setdefault(key, value)
        elif words[0].upper() == "FROM":
            words = [w for w in words[1:] if not w.startswith("--")]
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m[1] or m[2]], words[0])
            if len(words) == 3 and words[1].upper() == "AS":
                stages.add(words[2])
            if image not in stages:
                bases.append(image)
    return bases


def test_dockerfile_bases_are_pinned_by_digest() -> None:
    bases = dockerfile_bases((REPO / "Dockerfile").read_text())
    assert bases, "no FROM in the Dockerfile"
    unpinned = [base for base in bases if not DIGEST_REF.match(base)]
    assert not unpinned, f"Dockerfile bases without @sha256:<digest>: {unpinned}"


def test_dockerfile_bases_substitutes_args_and_skips_stages() -> None:
    text = "ARG B=debian:bookworm-slim\nFROM ${B} AS builder\nFROM builder\nFROM $B\n"
    assert dockerfile_bases(text) == ["debian:bookworm-slim", "debian:bookworm-slim"]


def pip_installs(text: str) -> list[list[str]]:
    """The arguments of every ``pip install`` in a shell script or Dockerfile."""
    installs = []
    for line in re.sub(r"\\\n", " ", text).splitlines():
        for command in re.split(r"&&|\|\||;", line.split("#", 1)[0]):
            words = command.split()
            for i, word in enumerate(words[:-1]):
                if word.endswith("pip") and words[i + 1] == "install":
                    installs.append(words[i + 2 :])
    return installs


@pytest.mark.parametrize(
    ("path", "lock"), [("scripts/bootstrap.sh", "test"), ("Dockerfile", "runtime")]
)
def test_every_pip_install_goes_through_the_locks(path: str, lock: str) -> None:
    """Each install is hash-checked wheels from a lock, or the package itself without
    dependencies and without an isolated build environment (whose setuptools pip would fetch
    unhashed); both the build lock and the path's dependency lock are installed."""
    text = (REPO / path).read_text()
    installed = []
    for args in pip_installs(text):
        if "-r" in args:
            assert "--require-hashes" in args and "--only-binary" in args, f"{path}: {args}"
            assert args[args.index("--only-binary") + 1] == ":all:", f"{path}: {args}"
            installed.append(args[args.index("-r") + 1])
        else:
            assert "--no-deps" in args and "--no-build-isolation" in args, f"{path}: {args}"
    assert installed == ["requirements/build.lock", f"requirements/{lock}.lock"], path


def test_bootstrap_reinstalls_when_a_lock_changes() -> None:
    text = (REPO / "scripts/bootstrap.sh").read_text()
    stamp = re.search(r"^stamp=(.*)$", text, re.M)
    assert stamp is not None, "no stamp= line in scripts/bootstrap.sh"
    locks = [args[args.index("-r") + 1] for args in pip_installs(text) if "-r" in args]
    assert locks, "scripts/bootstrap.sh installs no lock"
    for lock in locks:
        assert lock in stamp.group(1), f"{lock} is not in the stamp: {stamp.group(0)}"
