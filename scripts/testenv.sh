#!/usr/bin/env bash
# Build (once) and cache the control-plane binaries the API-server integration tests run:
# etcd, kube-apiserver, helm, and kubectl when the installed one is missing or too old.
# With --e2e, also what the real-node e2e tier (scripts/e2e.sh) runs, in the same bin directory:
#   kubelet kube-proxy kube-controller-manager kube-scheduler
#   e2e-netpol.test upstream's NetworkPolicy e2e specs alone (test/e2e/network/netpol): exactly the
#                   specs the full e2e.test runs with --ginkgo.focus=Netpol, with its harness and
#                   flags (less those of other suites and cloud providers); built from
#                   scripts/e2e-netpol/netpol_test.go, and again when that file changes
#   ginkgo          the CLI at the version k8s.io/kubernetes requires, for parallel runs:
#                   `ginkgo --procs=N e2e-netpol.test -- --kubeconfig=... --provider=local ...`
#   agnhost         the e2e test image's binary (test/images/agnhost, static, its VERSION)
#   pause           the pod sandbox's binary: gcc -static of build/pause/linux/pause.c from the
#                   k8s.io/kubernetes module (needs gcc and libc6-dev); its image tag is the TAG in
#                   build/pause/Makefile, `pause -v` prints it
#
# Everything is built from Go modules (the only outside source this project's machines reach):
#   etcd            go.etcd.io/etcd/server/v3 through a wrapper module (its go.mod has replace
#                   lines, so `go install pkg@version` refuses it)
#   kube-apiserver  k8s.io/kubernetes/cmd/kube-apiserver through a wrapper module that pins every
#   (kubectl)       k8s.io staging module (required at v0.0.0 by k8s.io/kubernetes) to v0.<minor>.<patch>,
#                   with the version ldflags that `make` would set; the --e2e binaries are built
#                   in the same wrapper module, so they share its versions and compiled packages
#   helm            go install helm.sh/helm/v3/cmd/helm@vX with the version ldflag
#
# Cache: ${NFTPOLICY_TESTENV_DIR:-$HOME/.cache/nftpolicy/testenv}/<versions>/bin. A second run
# with the same versions only reports the cached binaries. Progress goes to stderr; the bin
# directory is the last line of stdout:
#     BIN=$(scripts/testenv.sh | tail -1)
#     BIN=$(scripts/testenv.sh --e2e | tail -1)
# Times on 2 cores with a cold Go build cache (module cache warm), measured while other work
# loaded the machine (load average 5 to 28; idle is about twice as fast): 16 min, then --e2e
# 12 min more (the four commands 9.5 min, e2e-netpol.test 2 min, agnhost, ginkgo and pause 45 s;
# the full e2e.test would take about 3 times as long as e2e-netpol.test). Cached: about a second.
#
# Environment: NFTPOLICY_K8S_VERSION, NFTPOLICY_ETCD_VERSION, NFTPOLICY_HELM_VERSION (versions
# without the leading v), NFTPOLICY_TESTENV_DIR (cache root), NFTPOLICY_TESTENV_JOBS (go build -p,
# default 2), GO (go binary). Options: --e2e: also build the e2e tier's binaries listed above;
# --rebuild: throw the cached binaries of these versions away (all of them, --e2e ones included).
# Exit status: 0 ok, 3 Go not installed, 4 Go too old, 1 any other failure.
set -euo pipefail

# Patch releases whose every staging module the module proxy and checksum database serve: with
# v1.34.9 the checksum database had no k8s.io/externaljwt@v0.34.9 ("verifying module ... 404").
K8S_VERSION=${NFTPOLICY_K8S_VERSION:-1.34.4}
ETCD_VERSION=${NFTPOLICY_ETCD_VERSION:-3.6.16}
HELM_VERSION=${NFTPOLICY_HELM_VERSION:-3.19.5}
JOBS=${NFTPOLICY_TESTENV_JOBS:-2}
GO_MIN=1.24 # k8s 1.34, etcd 3.6 and helm 3.19 all declare go 1.24.x in their go.mod
ROOT=${NFTPOLICY_TESTENV_DIR:-$HOME/.cache/nftpolicy/testenv}
DIR=$ROOT/k8s-v${K8S_VERSION}_etcd-v${ETCD_VERSION}_helm-v${HELM_VERSION}
BIN=$DIR/bin
K8S_MINOR=$(cut -d. -f2 <<<"$K8S_VERSION")
K8S_MOD=$DIR/build/k8s # the wrapper module for k8s.io/kubernetes packages, shared within a run
# --e2e: the binaries, and the Netpol-only e2e suite's source with the stamp of the one built.
E2E_CMDS=(kubelet kube-proxy kube-controller-manager kube-scheduler)
E2E_BINS=("${E2E_CMDS[@]}" e2e-netpol.test agnhost ginkgo pause)
NETPOL_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/e2e-netpol/netpol_test.go
NETPOL_STAMP=$DIR/e2e-netpol.test.sha256

log() { printf '[testenv] %s\n' "$*" >&2; }
die() { printf '[testenv] ERROR: %s\n' "$*" >&2; exit 1; }
die_code() { printf '[testenv] ERROR: %s\n' "${*:2}" >&2; exit "$1"; } # 3: no Go, 4: Go too old
mmss() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

for arg in "$@"; do
    case $arg in
        --rebuild) REBUILD=1 ;;
        --e2e) E2E=1 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 0 ;;
        *) die "unknown argument: $arg (see --help)" ;;
    esac
done

# kubectl: the installed one is used when its minor version is within the supported skew
# (one minor) of the kube-apiserver built here; otherwise one is built next to kube-apiserver.
kubectl_ok() {
    local k=$1 minor
    [[ -x $k ]] || k=$(command -v "$k" 2>/dev/null) || return 1
    minor=$("$k" version --client -o json 2>/dev/null |
        sed -n 's/^ *"minor": *"\([0-9]*\).*/\1/p' | head -1) || return 1
    [[ -n $minor ]] && ((minor >= K8S_MINOR - 1))
}

need_kubectl() { [[ ! -x $BIN/kubectl ]] && ! kubectl_ok kubectl; }

report() {
    log "etcd:           $("$BIN/etcd" --version 2>&1 | head -1)"
    log "kube-apiserver: $("$BIN/kube-apiserver" --version 2>&1 | head -1)"
    log "helm:           $("$BIN/helm" version --short 2>&1 | head -1)"
    if [[ -x $BIN/kubectl ]]; then
        log "kubectl:        $("$BIN/kubectl" version --client 2>&1 | head -1) (built)"
    else
        log "kubectl:        $(kubectl version --client 2>&1 | head -1) (installed: $(command -v kubectl))"
    fi
}

# The stamp holds the sha256 of the source e2e-netpol.test was built from.
netpol_sum() { sha256sum <"$NETPOL_SRC" | cut -d' ' -f1; }
netpol_current() { [[ -x $BIN/e2e-netpol.test && $(cat "$NETPOL_STAMP" 2>/dev/null) == "$(netpol_sum)" ]]; }

e2e_complete() {
    local b
    for b in "${E2E_BINS[@]}"; do [[ -x $BIN/$b ]] || return 1; done
    netpol_current
}

report_e2e() {
    local c
    for c in "${E2E_CMDS[@]}"; do
        log "$(printf '%-24s' "$c:") $("$BIN/$c" --version 2>&1 | head -1)"
    done
    log "e2e-netpol.test:         $("$BIN/e2e-netpol.test" --version 2>&1 | head -1) (NetworkPolicy specs only)"
    log "agnhost:                 $("$BIN/agnhost" --version 2>&1 | head -1)"
    log "ginkgo:                  $("$BIN/ginkgo" version 2>&1 | head -1)"
    log "pause:                   $("$BIN/pause" -v 2>&1 | head -1)"
}

complete() {
    [[ -x $BIN/etcd && -x $BIN/kube-apiserver && -x $BIN/helm ]] && ! need_kubectl &&
        { [[ -z ${E2E:-} ]] || e2e_complete; }
}

if [[ -n ${E2E:-} && ! -f $NETPOL_SRC ]]; then
    die "$NETPOL_SRC is missing: --e2e builds the Netpol e2e binary from it (run the scripts/testenv.sh of a full checkout)"
fi

if [[ -z ${REBUILD:-} ]] && complete; then
    log "cached binaries in $BIN"
    report
    [[ -z ${E2E:-} ]] || report_e2e
    echo "$BIN"
    exit 0
fi

# --- Go toolchain -----------------------------------------------------------------------------
GO=${GO:-$(command -v go 2>/dev/null || true)}
[[ -z $GO && -x /usr/local/go/bin/go ]] && GO=/usr/local/go/bin/go
if [[ -n ${GO:-} && ! -x $GO ]]; then
    die_code 3 "Go is not installed: GO=$GO is not executable; Go >= $GO_MIN is needed to build the test control plane"
fi
[[ -n $GO ]] || die_code 3 "Go is not installed (looked for 'go' in PATH and /usr/local/go/bin/go); Go >= $GO_MIN is needed to build the test control plane"
GOVER=$(GOTOOLCHAIN=local "$GO" env GOVERSION) || die "'$GO env GOVERSION' failed"
gv=${GOVER#go}
if ! printf '%s\n%s\n' "$GO_MIN" "${gv%%[-+ ]*}" | sort -V -C; then
    die_code 4 "$GO is $GOVER; Go >= $GO_MIN is needed to build kube-apiserver v$K8S_VERSION, etcd v$ETCD_VERSION and helm v$HELM_VERSION"
fi
PATH="$(dirname "$GO"):$PATH"
export PATH
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
command -v flock >/dev/null || die "flock (util-linux) is missing"
if [[ -n ${E2E:-} && ! -x $BIN/pause ]] && ! command -v gcc >/dev/null; then
    die "gcc is missing: --e2e compiles pause (the pod sandbox) from Kubernetes' C source; install gcc and libc6-dev (apt-get install gcc libc6-dev)"
fi

mkdir -p "$DIR/logs" "$BIN"
exec 9>"$DIR/.lock"
if ! flock -n 9; then
    log "another testenv.sh is building in $DIR; waiting for it"
    flock 9
fi
if [[ -n ${REBUILD:-} ]]; then
    log "--rebuild: removing cached binaries in $BIN"
    rm -f "$BIN"/*
fi
rm -rf "$DIR/build" # what a failed run left
renice -n 10 -p $$ >/dev/null 2>&1 || true # keep the machine usable while compiling
log "building into $BIN with $GOVER, go build -p $JOBS, logs in $DIR/logs"

# Runs "$@" (a build function), its output to stderr and to a log, with a heartbeat while it runs.
run_step() {
    local name=$1 start=$SECONDS hb rc=0
    shift
    # The heartbeat's sleep is killed with it: left behind, it would hold the lock and the output
    # pipes for up to a minute after the script ends ($(testenv.sh | tail -1) would wait for it).
    (
        exec 9>&-
        trap 'kill "$s" 2>/dev/null; exit 0' TERM
        while sleep 60 & s=$! && wait "$s"; do log "... $name still building ($(mmss $((SECONDS - start))) so far)"; done
    ) &
    hb=$!
    # In the background so that `set -e` applies inside (it is ignored in an `||` context).
    # The go command's per-module lines go to the log only.
    ("$@") > >(tee -a "$DIR/logs/$name.log" |
        grep --line-buffered -v -E '^go: (downloading|added|upgraded|finding|found) ' >&2) 2>&1 &
    wait $! || rc=$?
    kill "$hb" 2>/dev/null || true
    wait "$hb" 2>/dev/null || true
    if ((rc != 0)); then
        if grep -q 'sumdb.*404 Not Found\|not available' "$DIR/logs/$name.log"; then
            log "a module version above is missing from the module proxy or its checksum database;"
            log "pick another patch release (NFTPOLICY_K8S_VERSION / _ETCD_ / _HELM_VERSION)"
        fi
        die "building $name failed (exit $rc) after $(mmss $((SECONDS - start))); see $DIR/logs/$name.log"
    fi
    log "built $name in $(mmss $((SECONDS - start)))"
}

# Sets the wrapper module's default GODEBUG to the dependency's language version: in a build the
# main module's go line (here the local Go's) decides the GODEBUG defaults, so without this the
# binaries would run with newer defaults than upstream's releases.
pin_godebug() { # <dependency go.mod file>
    local gd gover
    gd=$(awk '$1 == "godebug" && $2 ~ /^default=/ {print $2}' "$1")
    gover=$(awk '$1 == "go" {print $2}' "$1")
    if [[ -n $gd ]]; then
        go mod edit -godebug="$gd"
    elif [[ -n $gover ]]; then
        go mod edit -godebug="default=go$(cut -d. -f1,2 <<<"$gover")"
    fi
}

modfield() { # <field> <module@version>: a field of `go mod download -json` (GoMod, Dir, ...)
    go mod download -json "$2" | sed -n "s/^[[:space:]]*\"$1\": \"\(.*\)\",\{0,1\}\$/\1/p"
}
modfile() { modfield GoMod "$1"; }

build_etcd() {
    local w=$DIR/build/etcd
    rm -rf "$w" && mkdir -p "$w" && cd "$w"
    go mod init local/etcdbin
    pin_godebug "$(modfile "go.etcd.io/etcd/server/v3@v$ETCD_VERSION")"
    go get "go.etcd.io/etcd/server/v3@v$ETCD_VERSION"
    # The version is a constant in go.etcd.io/etcd/api/v3/version (GitSHA, an ldflag, stays
    # "Not provided": a module download has no commit).
    go build -p "$JOBS" -trimpath -ldflags "-s -w" \
        -o "$BIN/.etcd.tmp" go.etcd.io/etcd/server/v3
    mv -f "$BIN/.etcd.tmp" "$BIN/etcd"
}

# Enters the wrapper module that builds k8s.io/kubernetes packages, making it on first use in a run:
# every k8s build of the run then resolves the same versions and reuses the same compiled packages.
k8s_module() {
    local gomod m staging=0
    if [[ -f $K8S_MOD/go.mod ]]; then
        cd "$K8S_MOD"
        return
    fi
    mkdir -p "$K8S_MOD" && cd "$K8S_MOD"
    go mod init local/k8sbin
    gomod=$(modfile "k8s.io/kubernetes@v$K8S_VERSION")
    [[ -f $gomod ]] || die "could not download the go.mod of k8s.io/kubernetes@v$K8S_VERSION"
    # k8s.io/kubernetes requires each staging module at v0.0.0 and maps it with a replace to
    # ./staging/..., which is ignored in a dependency; staging tag v0.Y.Z is Kubernetes v1.Y.Z.
    for m in $(awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" {print $1}' "$gomod"); do
        go mod edit -replace="$m=$m@v0.${K8S_VERSION#1.}"
        staging=$((staging + 1))
    done
    ((staging > 0)) || die "found no k8s.io staging modules at v0.0.0 in $gomod"
    log "pinned $staging k8s.io staging modules to v0.${K8S_VERSION#1.}"
    pin_godebug "$gomod"
    # Every build below resolves its dependencies against k8s.io/kubernetes's requirements.
    go get "k8s.io/kubernetes@v$K8S_VERSION"
}

# What hack/lib/version.sh sets (without the git commit, which a module download lacks).
k8s_ldflags() {
    local ld="-s -w" p
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ld+=" -X $p.gitVersion=v$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$K8S_MINOR"
        ld+=" -X $p.gitTreeState=clean -X $p.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    done
    echo "$ld"
}

build_k8s() { # <cmd>...: k8s.io/kubernetes commands to build
    local c pkgs=()
    k8s_module
    for c in "$@"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
    go get "${pkgs[@]/%/@v$K8S_VERSION}"
    go build -p "$JOBS" -trimpath -ldflags "$(k8s_ldflags)" -o "$K8S_MOD/out/" "${pkgs[@]}"
    for c in "$@"; do mv -f "$K8S_MOD/out/$c" "$BIN/$c"; done
}

# The test package is scripts/e2e-netpol/netpol_test.go copied into the wrapper module; `go get`
# of the netpol package brings the go.sum lines of everything it imports.
build_e2e_netpol() {
    local sum
    k8s_module
    sum=$(netpol_sum)
    mkdir -p e2enetpol && cp "$NETPOL_SRC" e2enetpol/
    go get "k8s.io/kubernetes/test/e2e/network/netpol@v$K8S_VERSION"
    go test -c -vet=off -p "$JOBS" -trimpath -ldflags "$(k8s_ldflags)" -o "$BIN/.e2e-netpol.test.tmp" ./e2enetpol
    mv -f "$BIN/.e2e-netpol.test.tmp" "$BIN/e2e-netpol.test"
    echo "$sum" >"$NETPOL_STAMP"
}

# As test/images/agnhost's Makefile does: static, main.Version from the VERSION file.
build_agnhost() {
    local src ver
    k8s_module
    src=$(modfield Dir "k8s.io/kubernetes@v$K8S_VERSION")/test/images/agnhost
    ver=$(cat "$src/VERSION") || die "no VERSION file in $src"
    log "agnhost $ver"
    go get "k8s.io/kubernetes/test/images/agnhost@v$K8S_VERSION"
    go build -p "$JOBS" -trimpath -ldflags "-s -w -X main.Version=$ver" -o "$K8S_MOD/out/" \
        k8s.io/kubernetes/test/images/agnhost
    mv -f "$K8S_MOD/out/agnhost" "$BIN/agnhost"
}

# The CLI must match the ginkgo library linked into e2e-netpol.test: the version k8s.io/kubernetes
# requires (which is also the one the wrapper module resolves).
build_ginkgo() {
    local ver
    k8s_module
    ver=$(awk '$1 == "github.com/onsi/ginkgo/v2" {print $2; exit}' "$(modfile "k8s.io/kubernetes@v$K8S_VERSION")")
    [[ -n $ver ]] || die "k8s.io/kubernetes@v$K8S_VERSION does not require github.com/onsi/ginkgo/v2"
    log "ginkgo $ver (the version k8s.io/kubernetes v$K8S_VERSION requires)"
    go get "github.com/onsi/ginkgo/v2/ginkgo@$ver"
    go build -p "$JOBS" -trimpath -ldflags "-s -w" -o "$K8S_MOD/out/" github.com/onsi/ginkgo/v2/ginkgo
    mv -f "$K8S_MOD/out/ginkgo" "$BIN/ginkgo"
}

# As build/pause/Makefile does (CFLAGS, then strip), with the module's source. Its VERSION is
# v<TAG>-<git describe --contains>; a module download has no git, its release stands in for that.
build_pause() {
    local src tag
    mkdir -p "$DIR/build/pause" && cd "$DIR/build/pause"
    src=$(GOFLAGS='' modfield Dir "k8s.io/kubernetes@v$K8S_VERSION")/build/pause
    tag=$(awk '$1 == "TAG" && $2 == "?=" {print $3; exit}' "$src/Makefile")
    [[ -n $tag ]] || die "no 'TAG ?= ...' line in $src/Makefile"
    log "pause $tag (image tag registry.k8s.io/pause:$tag)"
    gcc -Os -Wall -Werror -static -DVERSION="v$tag-v$K8S_VERSION" -o pause "$src/linux/pause.c"
    strip pause
    mv -f pause "$BIN/pause"
}

build_helm() {
    local w=$DIR/build/helm gomod cg major minor ld p
    rm -rf "$w" && mkdir -p "$w/bin" && cd "$w"
    # Helm's Makefile also sets the Kubernetes version that `helm template`/`lint` assume without
    # a cluster (.Capabilities.KubeVersion; default v1.20.0, which fails charts whose kubeVersion
    # needs more) from its k8s.io/client-go requirement v0.Y.Z: major 1, minor Y.
    gomod=$(GOFLAGS='' modfile "helm.sh/helm/v3@v$HELM_VERSION")
    cg=$(awk '$1 == "k8s.io/client-go" {print $2; exit}' "$gomod")
    [[ $cg =~ ^v0\.([0-9]+)\. ]] || die "no k8s.io/client-go v0.Y.Z requirement in $gomod"
    major=1 minor=${BASH_REMATCH[1]}
    ld="-s -w -X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION"
    ld+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
    for p in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
        ld+=" -X $p.k8sVersionMajor=$major -X $p.k8sVersionMinor=$minor"
    done
    # `go install pkg@version` builds outside any main module (-mod=mod does not apply there).
    GOFLAGS='' GOBIN=$w/bin go install -p "$JOBS" -trimpath -ldflags "$ld" \
        "helm.sh/helm/v3/cmd/helm@v$HELM_VERSION"
    mv -f "$w/bin/helm" "$BIN/helm"
}

total=$SECONDS
if [[ ! -x $BIN/etcd ]]; then
    log "building etcd v$ETCD_VERSION (about 2 min on 2 cores)"
    run_step etcd build_etcd
fi
k8s_cmds=()
[[ -x $BIN/kube-apiserver ]] || k8s_cmds+=(kube-apiserver)
if need_kubectl; then
    log "installed kubectl is missing or older than v1.$((K8S_MINOR - 1)); building kubectl v$K8S_VERSION too"
    k8s_cmds+=(kubectl)
fi
e2e_cmds=()
if [[ -n ${E2E:-} ]]; then
    for c in "${E2E_CMDS[@]}"; do [[ -x $BIN/$c ]] || e2e_cmds+=("$c"); done
fi
if ((${#k8s_cmds[@]} > 0)); then
    log "building ${k8s_cmds[*]} v$K8S_VERSION (about 5 min on 2 cores, 10 with kubectl and a cold module cache)"
fi
if ((${#e2e_cmds[@]} > 0)); then
    log "building ${e2e_cmds[*]} v$K8S_VERSION (about 5 min on 2 cores, 10 under load)"
    k8s_cmds+=("${e2e_cmds[@]}") # one go build: its packages compile once, its links run in parallel
fi
if ((${#k8s_cmds[@]} > 0)); then
    run_step "$(IFS=+; echo "${k8s_cmds[*]}")" build_k8s "${k8s_cmds[@]}"
fi
if [[ ! -x $BIN/helm ]]; then
    log "building helm v$HELM_VERSION (about 2 min on 2 cores)"
    run_step helm build_helm
fi
if [[ -n ${E2E:-} ]]; then
    if ! netpol_current; then
        log "building e2e-netpol.test v$K8S_VERSION, the NetworkPolicy e2e specs (1 to 2 min)"
        run_step e2e-netpol.test build_e2e_netpol
    fi
    if [[ ! -x $BIN/agnhost ]]; then
        log "building agnhost from k8s.io/kubernetes v$K8S_VERSION (about 30 s)"
        run_step agnhost build_agnhost
    fi
    if [[ ! -x $BIN/ginkgo ]]; then
        log "building the ginkgo CLI (about 15 s)"
        run_step ginkgo build_ginkgo
    fi
    if [[ ! -x $BIN/pause ]]; then
        log "building pause from k8s.io/kubernetes v$K8S_VERSION (seconds)"
        run_step pause build_pause
    fi
fi
rm -rf "$DIR/build"
log "done in $(mmss $((SECONDS - total))); binaries in $BIN"
ls -l "$BIN" >&2
report
[[ -z ${E2E:-} ]] || report_e2e
echo "$BIN"
