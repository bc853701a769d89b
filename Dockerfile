# syntax=docker/dockerfile:1
#
# nftpolicy: one image, two commands; the first argument chooses:
#   docker run IMAGE operator [--default-deny ...]      (the chart's Deployment)
#   docker run IMAGE agent --node NAME [...]            (the chart's DaemonSet; root + NET_ADMIN)
#
# The install steps are those of scripts/bootstrap.sh, so that building this image in CI
# exercises them. Each step below is marked with the bootstrap step it mirrors:
#   [bootstrap:apt]     APT_PACKAGES, installed with
#                       `apt-get update -qq; apt-get install -y -qq --no-install-recommends ...`
#   [bootstrap:python]  the "need Python >= 3.11" check (Debian bookworm's python3 is 3.11)
#   [bootstrap:venv]    `python3 -m venv`, then `pip install --require-hashes --only-binary :all:`
#                       of requirements/build.lock (pip, setuptools) and of a dependency lock,
#                       then the package itself with `--no-deps --no-build-isolation`
# Differences, on purpose: the image installs requirements/runtime.lock (bootstrap.sh:
# requirements/test.lock, the same versions plus the test tools) and the package itself not
# editable; it installs only the apt packages each stage needs, plus python3 itself, which
# bootstrap.sh expects to be there already. Every Python file is hash-checked against the locks
# and is a wheel, so no build step fetches anything (scripts/lock.sh writes the locks).

# The base, pinned by the digest of its multi-arch index (debian:bookworm-20260824-slim, as
# published on Docker Hub) so that a moved tag cannot change the image. To update it, take the
# index digest of the new tag (`docker buildx imagetools inspect debian:bookworm-slim`, or
# `crane digest`) and replace it here. The local e2e build (controller/testing/images.py)
# overrides it with a base made by mmdebstrap (--build-arg DEBIAN_IMAGE=...).
ARG DEBIAN_IMAGE=debian:bookworm-slim@sha256:88200866dfff7ea7f5cbcb6ec7c8a701889efe6fe859fe64d6990e4b07ea4171

# ---- builder: a virtualenv with nftpolicy and its dependencies -------------------------------
FROM ${DEBIAN_IMAGE} AS builder

# [bootstrap:apt] python3 and its venv module; no compiler: the locks hold wheels only.
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        python3 python3-venv >/dev/null \
    && rm -rf /var/lib/apt/lists/*

# [bootstrap:python]
RUN python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "need Python >= 3.11, python3 is $(python3 --version 2>&1)" >&2; exit 1; }

WORKDIR /src
# [bootstrap:venv] the locked dependencies first (their layer stays cached while only the
# sources change), then the package
COPY requirements/build.lock requirements/runtime.lock ./requirements/
RUN python3 -m venv /opt/nftpolicy \
    && /opt/nftpolicy/bin/pip install -q --no-cache-dir --require-hashes --only-binary :all: \
        -r requirements/build.lock \
    && /opt/nftpolicy/bin/pip install -q --no-cache-dir --require-hashes --only-binary :all: \
        -r requirements/runtime.lock
COPY pyproject.toml ./
COPY controller ./controller
RUN /opt/nftpolicy/bin/pip install -q --no-cache-dir --no-deps --no-build-isolation \
        --check-build-dependencies . \
    && /opt/nftpolicy/bin/nftpolicy --help >/dev/null

# ---- runtime: python3, libnftables1 and the virtualenv; no compiler, no pip cache ------------
FROM ${DEBIAN_IMAGE}

# [bootstrap:apt] the runtime subset of APT_PACKAGES: libnftables1 (loaded by the pip-nftables
# bindings through ctypes), nftables (the `nft` command, for inspecting a node's table with
# kubectl exec), conntrack (optional: the agent cleans conntrack up over netlink itself; the
# tool is for debugging), iproute2 (debugging); plus python3, the interpreter the venv uses.
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        python3 libnftables1 nftables conntrack iproute2 >/dev/null \
    && rm -rf /var/lib/apt/lists/*

# [bootstrap:python] the same check against the runtime interpreter
RUN python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'

COPY --from=builder /opt/nftpolicy /opt/nftpolicy

# The bindings find libnftables.so.1 and the agent's kernel feature probe passes its dry runs.
RUN /opt/nftpolicy/bin/python -c 'import nftables; nftables.Nftables()' \
    && /opt/nftpolicy/bin/nftpolicy operator --help >/dev/null \
    && /opt/nftpolicy/bin/nftpolicy agent --help >/dev/null

# A non-root default user: the operator runs as it; the agent's pod sets runAsUser: 0 (it needs
# NET_ADMIN, which Kubernetes grants to root processes only).
RUN groupadd --system --gid 65532 nftpolicy \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin nftpolicy
USER 65532:65532

ENV PATH=/opt/nftpolicy/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

LABEL org.opencontainers.image.title="nftpolicy" \
      org.opencontainers.image.description="Kubernetes NetworkPolicy enforcement on nftables"

ENTRYPOINT ["nftpolicy"]
CMD ["--help"]
