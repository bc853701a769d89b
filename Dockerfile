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
#   [bootstrap:venv]    `python3 -m venv`, `pip install -q --upgrade pip`, `pip install -q ...`
# Differences, on purpose: the image installs the package itself, not editable and without
# the [test] extra; it installs only the apt packages each stage needs (build tools in the
# builder, runtime libraries in the final stage), plus python3 itself, which bootstrap.sh
# expects to be there already.

ARG DEBIAN_IMAGE=debian:bookworm-slim

# ---- builder: a virtualenv with nftpolicy and its dependencies -------------------------------
FROM ${DEBIAN_IMAGE} AS builder

# [bootstrap:apt] the build subset of APT_PACKAGES (gcc, for a dependency without a wheel)
# plus python3 and its venv module.
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        python3 python3-venv python3-dev gcc libc6-dev >/dev/null \
    && rm -rf /var/lib/apt/lists/*

# [bootstrap:python]
RUN python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { echo "need Python >= 3.11, python3 is $(python3 --version 2>&1)" >&2; exit 1; }

WORKDIR /src
COPY pyproject.toml ./
COPY controller ./controller

# [bootstrap:venv] (bootstrap.sh: `.venv/bin/pip install -q -e '.[test]'`)
RUN python3 -m venv /opt/nftpolicy \
    && /opt/nftpolicy/bin/pip install -q --no-cache-dir --upgrade pip \
    && /opt/nftpolicy/bin/pip install -q --no-cache-dir . \
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
