"""Image archives without an engine (controller.testing.image_archive) and the pure parts of
the image builder (controller.testing.images): read the archives back, check the digests, the
manifest and the config a container runtime reads; the settings handed to podman, apt and pip.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import tarfile
import tomllib
from pathlib import Path
from typing import Any

import pytest

from controller.testing import images
from controller.testing.image_archive import (
    ImageSpec,
    archive_key,
    directory,
    docker_arch,
    elf_interpreter,
    image_config,
    normalized,
    regular_file,
    symlink,
    write_docker_archive,
    write_layer,
)

# ---- layers ----------------------------------------------------------------------------------


def _layer(entries: list[Any]) -> tuple[bytes, str]:
    out = io.BytesIO()
    digest, size = write_layer(entries, out)
    assert size == len(out.getvalue())
    return out.getvalue(), digest


def test_layer_holds_entries_with_owners_modes_and_fixed_mtimes(tmp_path: Path) -> None:
    binary = tmp_path / "tool"
    binary.write_bytes(b"\x7fELF static")
    data, digest = _layer(
        [
            regular_file("/usr/bin/tool", source=binary, mode=0o755),
            symlink("bin/tool2", "tool"),
            regular_file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n"),
            directory("tmp", 0o1777),
            directory("home/u", uid=1000, gid=1000),
        ]
    )
    assert digest == "sha256:" + hashlib.sha256(data).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert list(members) == [
            "bin",
            "bin/tool2",
            "etc",
            "etc/passwd",
            "home",
            "home/u",
            "tmp",
            "usr",
            "usr/bin",
            "usr/bin/tool",
        ]
        assert all(m.mtime == 0 and m.uname == "" for m in members.values())
        tool = members["usr/bin/tool"]
        assert tool.isfile() and tool.mode == 0o755 and (tool.uid, tool.gid) == (0, 0)
        assert tar.extractfile(tool).read() == b"\x7fELF static"  # type: ignore[union-attr]
        assert members["bin/tool2"].issym() and members["bin/tool2"].linkname == "tool"
        assert members["tmp"].isdir() and members["tmp"].mode == 0o1777
        assert (members["home/u"].uid, members["home/u"].gid) == (1000, 1000)
        assert members["usr"].isdir() and members["usr"].mode == 0o755  # added parent
        passwd = tar.extractfile(members["etc/passwd"]).read()  # type: ignore[union-attr]
        assert passwd == b"root:x:0:0::/root:/bin/sh\n"


def test_layer_bytes_depend_on_contents_only() -> None:
    entries = [regular_file("a", b"1"), directory("d"), symlink("d/l", "/a")]
    assert _layer(entries) == _layer(list(reversed(entries)))
    assert _layer(entries)[1] != _layer([regular_file("a", b"2"), *entries[1:]])[1]


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([regular_file("a", b""), regular_file("/a/", b"")], "twice"),
        ([regular_file("../etc/passwd", b"")], "invalid path"),
        ([regular_file("", b"")], "invalid path"),
        ([regular_file("f", b""), regular_file("f/g", b"")], "not a directory"),
    ],
)
def test_invalid_layers_are_refused(entries: list[Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        normalized(entries)


# ---- archives --------------------------------------------------------------------------------


def _read_archive(path: Path) -> tuple[list[dict[str, Any]], dict[str, bytes]]:
    with tarfile.open(path) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    return json.loads(files["manifest.json"]), files


def test_docker_archive_has_manifest_config_and_layers_that_match(tmp_path: Path) -> None:
    spec = ImageSpec(
        tags=("registry.k8s.io/e2e-test-images/agnhost:2.56", "example/agnhost:alias"),
        entrypoint=("/agnhost",),
        cmd=("pause",),
        user="65535:65535",
        exposed_ports=("80/tcp",),
    )
    layers = [[regular_file("agnhost", b"bin", mode=0o755)], [directory("uploads")]]
    out = tmp_path / "agnhost.tar"
    image_id = write_docker_archive(out, spec, layers, "amd64")

    manifest, files = _read_archive(out)
    assert len(manifest) == 1
    assert manifest[0]["RepoTags"] == list(spec.tags)
    config_bytes = files[manifest[0]["Config"]]
    assert image_id == "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    assert manifest[0]["Config"] == image_id.removeprefix("sha256:") + ".json"
    config = json.loads(config_bytes)
    layer_digests = [
        "sha256:" + hashlib.sha256(files[n]).hexdigest() for n in manifest[0]["Layers"]
    ]
    assert config["rootfs"] == {"type": "layers", "diff_ids": layer_digests}
    assert len(config["history"]) == 2
    assert (config["architecture"], config["os"]) == ("amd64", "linux")
    assert config["config"] == {
        "Entrypoint": ["/agnhost"],
        "Cmd": ["pause"],
        "User": "65535:65535",
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "WorkingDir": "/",
        "ExposedPorts": {"80/tcp": {}},
    }
    with tarfile.open(fileobj=io.BytesIO(files[manifest[0]["Layers"][1]])) as layer:
        assert layer.getnames() == ["uploads"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agnhost.tar"]  # no temporary files

    first = out.read_bytes()
    assert write_docker_archive(out, spec, layers, "amd64") == image_id
    assert out.read_bytes() == first


def test_archive_without_tags_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tag"):
        write_docker_archive(tmp_path / "x.tar", ImageSpec(tags=()), [[]], "amd64")
    assert list(tmp_path.iterdir()) == []


def test_config_leaves_out_what_the_spec_does_not_set() -> None:
    config = image_config(ImageSpec(tags=("t",)), ["sha256:ab"], "arm64")["config"]
    assert set(config) == {"Env", "WorkingDir"}


def test_archive_key_follows_every_input(tmp_path: Path) -> None:
    pause = tmp_path / "pause"
    spec = ImageSpec(tags=("registry.k8s.io/pause:3.10.1",), user="65535:65535")
    layers = [[regular_file("pause", source=pause, mode=0o755)]]
    digests = {pause: "aa"}
    key = archive_key(spec, layers, "amd64", digests.__getitem__)
    assert key == archive_key(spec, layers, "amd64", digests.__getitem__)
    digests[pause] = "bb"
    assert archive_key(spec, layers, "amd64", digests.__getitem__) != key
    digests[pause] = "aa"
    other_mode = [[regular_file("pause", source=pause, mode=0o700)]]
    assert archive_key(spec, other_mode, "amd64", digests.__getitem__) != key
    other_spec = ImageSpec(tags=("registry.k8s.io/pause:3.10",), user="65535:65535")
    assert archive_key(other_spec, layers, "amd64", digests.__getitem__) != key
    assert archive_key(spec, layers, "arm64", digests.__getitem__) != key


# ---- ELF checks ------------------------------------------------------------------------------


def _elf(interpreter: bytes | None) -> bytes:
    """A 64-bit little-endian ELF header, one program header (PT_LOAD or PT_INTERP)."""
    phoff, phentsize = 64, 56
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header = ident + struct.pack(
        "<HHIQQQIHHHHHH", 2, 62, 1, 0, phoff, 0, 0, 64, phentsize, 1, 0, 0, 0
    )
    data_offset = phoff + phentsize
    if interpreter is None:
        ph = struct.pack("<IIQQQQQQ", 1, 5, 0, 0, 0, 0, 0, 0x1000)
        return header + ph
    path = interpreter + b"\0"
    ph = struct.pack("<IIQQQQQQ", 3, 4, data_offset, 0, 0, len(path), len(path), 1)
    return header + ph + path


def test_elf_interpreter_tells_static_from_dynamic() -> None:
    assert elf_interpreter(_elf(None)) is None
    assert elf_interpreter(_elf(b"/lib64/ld-linux-x86-64.so.2")) == "/lib64/ld-linux-x86-64.so.2"
    with pytest.raises(ValueError, match="ELF"):
        elf_interpreter(b"#!/bin/sh\n")


def test_docker_arch_names_platforms_as_containerd_does() -> None:
    assert docker_arch("x86_64") == "amd64"
    assert docker_arch("aarch64") == "arm64"
    assert docker_arch("s390x") == "s390x"


# ---- image contents --------------------------------------------------------------------------

MANIFEST_GO = """
var (
	initRegistry = RegistryList{
		// TODO: https://github.com/kubernetes/kubernetes/issues/130271
		GcAuthenticatedRegistry: "gcr.io/authenticated-image-pulling",
		PromoterE2eRegistry:     "registry.k8s.io/e2e-test-images",
		GcRegistry:              "registry.k8s.io",
	}
)

func initImageConfigs(list RegistryList) (map[ImageID]Config, map[ImageID]Config) {
	configs := map[ImageID]Config{}
	configs[Agnhost] = Config{list.PromoterE2eRegistry, "agnhost", "2.56"}
	configs[AuthenticatedAlpine] = Config{list.GcAuthenticatedRegistry, "alpine", "3.7"}
	configs[Pause] = Config{list.GcRegistry, "pause", "3.10.1"}
	configs[Unknown] = Config{list.NoSuchRegistry, "x", "1"}
"""


def test_e2e_image_refs_as_the_framework_computes_them() -> None:
    assert images.e2e_image_refs(MANIFEST_GO) == {
        "Agnhost": "registry.k8s.io/e2e-test-images/agnhost:2.56",
        "AuthenticatedAlpine": "gcr.io/authenticated-image-pulling/alpine:3.7",
        "Pause": "registry.k8s.io/pause:3.10.1",
    }
    with pytest.raises(ValueError, match="initRegistry"):
        images.e2e_image_refs("package image\n")


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("nftpolicy:e2e", "docker.io/library/nftpolicy:e2e"),
        ("me/nftpolicy:e2e", "docker.io/me/nftpolicy:e2e"),
        ("localhost/nftpolicy:e2e", "localhost/nftpolicy:e2e"),
        ("registry.k8s.io/pause:3.10.1", "registry.k8s.io/pause:3.10.1"),
        ("localhost:5000/x:1", "localhost:5000/x:1"),
    ],
)
def test_normalized_ref_is_what_the_cri_looks_up(ref: str, expected: str) -> None:
    assert images.normalized_ref(ref) == expected


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("docker.io/library/nftpolicy:e2e", ("docker.io/library/nftpolicy", "e2e")),
        ("localhost:5000/nftpolicy", ("localhost:5000/nftpolicy", "latest")),
        ("localhost:5000/nftpolicy:1", ("localhost:5000/nftpolicy", "1")),
        ("nftpolicy", ("nftpolicy", "latest")),
    ],
)
def test_split_tag(ref: str, expected: tuple[str, str]) -> None:
    assert images.split_tag(ref) == expected


def _by_path(layers: list[list[Any]]) -> dict[str, Any]:
    (entries,) = layers
    return {e.path: e for e in normalized(entries)}


def test_pause_image_is_the_binary_run_as_65535(tmp_path: Path) -> None:
    spec, layers = images.pause_image("registry.k8s.io/pause:3.10.1", tmp_path / "pause")
    assert spec.tags == ("registry.k8s.io/pause:3.10.1",)
    assert (spec.entrypoint, spec.user) == (("/pause",), "65535:65535")
    (pause,) = _by_path(layers).values()
    assert (pause.path, pause.mode, pause.source) == ("pause", 0o755, tmp_path / "pause")


def test_agnhost_image_has_what_upstream_tests_use(tmp_path: Path) -> None:
    applets = ["bin/sh", "bin/busybox", "usr/bin/wget", "sbin/ip", "bin/sh"]
    spec, layers = images.agnhost_image(
        ["registry.k8s.io/e2e-test-images/agnhost:2.56", "alias:1"],
        tmp_path / "agnhost",
        tmp_path / "busybox",
        applets,
        tmp_path / "porter",
    )
    assert spec.tags == ("registry.k8s.io/e2e-test-images/agnhost:2.56", "alias:1")
    assert (spec.entrypoint, spec.cmd, spec.user) == (("/agnhost",), ("pause",), "")
    assert "8080/tcp" in spec.exposed_ports
    entries = _by_path(layers)
    assert entries["agnhost"].source == tmp_path / "agnhost"
    assert entries["agnhost-2"].target == "agnhost"
    assert entries["uploads"].kind == "dir"
    assert entries["localhost.crt"].source == tmp_path / "porter/localhost.crt"
    assert entries["localhost.key"].source == tmp_path / "porter/localhost.key"
    assert entries["bin/busybox"].source == tmp_path / "busybox"
    assert entries["bin/sh"].target == entries["sbin/ip"].target == "/bin/busybox"
    assert entries["tmp"].mode == 0o1777
    home = entries["home/user-defined-in-image"]
    assert (home.uid, home.gid) == (1000, 1000)
    assert "user-defined-in-image:x:1000:1000:" in entries["etc/passwd"].data.decode()
    groups = entries["etc/group"].data.decode().splitlines()
    assert "group-defined-in-image:x:50000:user-defined-in-image" in groups


def test_archive_file_name_is_readable_and_keyed() -> None:
    name = images.archive_file_name("registry.k8s.io/pause:3.10.1", "0123456789abcdef" * 4)
    assert name == "pause_3.10.1-0123456789abcdef.tar"


def test_image_archive_line_is_path_tab_ref() -> None:
    archive = images.ImageArchive(Path("/c/pause.tar"), "registry.k8s.io/pause:3.10.1")
    assert archive.line() == "/c/pause.tar\tregistry.k8s.io/pause:3.10.1"


# ---- podman, apt, pip ------------------------------------------------------------------------


def test_podman_configs_keep_state_under_root_and_limits_within_ours() -> None:
    containers, storage = images.podman_configs(Path("/cache/podman"), 20000, 32768)
    conf = tomllib.loads(containers)
    assert conf["containers"] == {
        "netns": "host",
        "default_ulimits": ["nofile=20000:20000", "nproc=32768:32768"],
    }
    assert conf["engine"]["cgroup_manager"] == "cgroupfs"
    assert conf["engine"]["runtime"] == "runc"
    assert conf["engine"]["events_logger"] == "file"
    assert conf["engine"]["tmp_dir"].startswith("/cache/podman/")
    store = tomllib.loads(storage)["storage"]
    assert store == {
        "driver": "overlay",
        "graphroot": "/cache/podman/storage",
        "runroot": "/cache/podman/run",
    }


DEBIAN_SOURCES = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main

Types: deb
URIs: http://deb.debian.org/debian-security
Suites:
 bookworm-security
Components: main

Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Enabled: no
"""


def test_debian_sources_keep_the_suite_and_leave_vendors_out() -> None:
    files = {
        "debian.sources": DEBIAN_SOURCES,
        "nodesource.sources": "Types: deb\nURIs: https://deb.nodesource.com/node_20.x\n"
        "Suites: nodistro\nComponents: main\n",
        "google.list": "deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n",
        "sources.list": "# deb http://old/ bullseye main\n"
        "deb [arch=amd64] http://mirror.example/debian bookworm main\n"
        "deb-src http://mirror.example/debian bookworm main\n",
    }
    out = images.debian_sources(files, "bookworm")
    assert out["debian.list"] == "deb [arch=amd64] http://mirror.example/debian bookworm main\n"
    stanzas = out["debian.sources"].split("\n\n")
    assert len(stanzas) == 2
    assert "Suites: bookworm bookworm-updates" in stanzas[0]
    assert "debian-security" in stanzas[1]
    assert images.debian_sources({"x.sources": "Types: deb\nSuites: sid\n"}, "bookworm") == {}


def test_pip_settings_follow_pips_precedence_and_mount_the_ca(tmp_path: Path) -> None:
    listed = images.parse_pip_config_list(
        "global.cert='/etc/ssl/certs/ca-certificates.crt'\n"
        "global.index-url='https://global.example/simple'\n"
        "install.index-url='https://install.example/simple'\n"
        ":env:.default-timeout='180'\n"
        ":env:.find-links='/opt/wheels https://wheels.example/'\n"
        ":env:.disable-pip-version-check='1'\n"
        "garbage line\n"
    )
    assert listed["global.cert"] == "/etc/ssl/certs/ca-certificates.crt"
    conf, mounts = images.pip_build_settings(listed, {}, lambda path: True)
    inside = f"{images.BUILD_MOUNT_DIR}/cert-ca-certificates.crt"
    assert mounts == {"/etc/ssl/certs/ca-certificates.crt": inside}
    assert conf == (
        "[global]\n"
        f"cert = {inside}\n"
        "default-timeout = 180\n"
        "find-links = https://wheels.example/\n"
        "index-url = https://install.example/simple\n"
    )


def test_pip_settings_fall_back_to_the_requests_ca_bundle() -> None:
    env = {"REQUESTS_CA_BUNDLE": "/etc/proxy-ca.pem"}
    conf, mounts = images.pip_build_settings({}, env, lambda path: True)
    assert mounts == {"/etc/proxy-ca.pem": f"{images.BUILD_MOUNT_DIR}/cert-proxy-ca.pem"}
    conf, mounts = images.pip_build_settings({}, env, lambda path: False)
    assert (conf, mounts) == ("[global]\n", {})


def test_builder_stages_are_the_named_stages_before_the_last() -> None:
    dockerfile = (
        "ARG DEBIAN_IMAGE=debian:bookworm-slim\n"
        "FROM ${DEBIAN_IMAGE} AS builder\nRUN x\n"
        "from ${DEBIAN_IMAGE} as tools\n"
        "FROM ${DEBIAN_IMAGE}\nCOPY --from=builder /a /a\n"
    )
    assert images.builder_stages(dockerfile) == ["builder", "tools"]
    assert images.builder_stages((images.REPO_ROOT / "Dockerfile").read_text()) == ["builder"]


def test_local_state_patterns_come_from_gitignore() -> None:
    gitignore = ".venv/\n__pycache__/\n# comment\n*.egg-info/\n!keep\n/build/\n"
    assert images.local_state_patterns(gitignore) == [
        ".git",
        ".venv",
        "__pycache__",
        "*.egg-info",
        "build",
    ]


# ---- the command's failures ------------------------------------------------------------------


def test_missing_binary_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(images.CACHE_ENV, str(tmp_path / "cache"))
    assert images.main(["--bin", str(tmp_path), "--skip-nftpolicy"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"{tmp_path}/pause is missing" in captured.err
    assert "scripts/testenv.sh --e2e" in captured.err


def test_dynamic_binary_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(images.CACHE_ENV, str(tmp_path / "cache"))
    pause = tmp_path / "pause"
    pause.write_bytes(_elf(b"/lib64/ld-linux-x86-64.so.2"))
    pause.chmod(0o755)
    assert images.main(["--bin", str(tmp_path), "--skip-nftpolicy"]) == 1
    assert "dynamically linked (interpreter /lib64/ld-linux-x86-64.so.2)" in capsys.readouterr().err
