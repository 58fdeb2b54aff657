#!/usr/bin/env bash
# Builds GuildNet's container images without Docker: a Debian base made by mmdebstrap from the
# Debian archive, layers and config added with umoci, images pushed with skopeo. Output: OCI
# images (archives and/or pushed to a registry), non-root, labelled, with stripped binaries.
#
#   scripts/images/build.sh                                  # release build; OCI archives in target/images
#   scripts/images/build.sh --push registry.example/guildnet --tag 0.1.0
#   scripts/images/build.sh --binaries DIR --push 127.0.0.1:5000 --insecure --tag t1 --no-archive
#   scripts/images/build.sh --prepare                        # only build the cached bases
#
# Options:
#   --images LIST     comma-separated: agent, operator, orchestrator, dashboard (default
#                     agent,operator)
#   --binaries DIR    take the guildnet-* binaries from DIR (stripped copies are used) instead of
#                     `cargo build --release`
#   --tag TAG         image tag (default: the workspace version)
#   --out DIR         where OCI archives go (default <repo>/target/images)
#   --no-archive      do not write OCI archives (use with --push)
#   --push PREFIX     push each image as PREFIX/guildnet-<image>:TAG (skopeo; credentials from
#                     REGISTRY_AUTH_FILE or ~/.docker/config.json)
#   --insecure        push over plain HTTP without TLS verification (a registry on loopback)
#   --code-server DIR npm prefix holding node_modules/code-server (default: the testbed's,
#                     ${GUILDNET_TESTBED_DIR:-~/.cache/guildnet/testbed}/code-server)
#   --node PATH       the Node.js binary code-server runs on (default: `command -v node`; its
#                     major version must match code-server's engines.node)
#   --prepare         build only the cached bases (agent and operator), no binaries needed
#                     (and the orchestrator's tailscaled stage when orchestrator is asked for)
#   --refresh         rebuild the cached bases even if their key matches
#
# The orchestrator image also holds tailscaled (with the tailscale CLI linked in, `tailscale` a
# symlink to it), for the mesh set with PUT /mesh: built with Go (CGO_ENABLED=0) from
# tailscale.com at TAILSCALE_VERSION of scripts/testbed/versions.env (the version the testbed and
# the agents' sidecar image use), unused features left out (TAILSCALE_TAGS below); the module
# comes from the local Go module cache, else GOPROXY.
#
# Cache: ${GUILDNET_IMAGES_CACHE:-~/.cache/guildnet/images}. The Debian base of each image, the
# agent's code-server stage and the orchestrator's tailscaled stage are keyed by their inputs
# (suite, mirror, package list, this script's recipe number; Node's and code-server's versions
# and checksums; tailscale's version and build tags), so reruns only add the binary layer. The
# Debian archive moves on: --refresh picks up new security updates.
# Missing Debian tools (mmdebstrap, umoci, skopeo, jq) are installed with apt-get.
# Details: docs/KUBERNETES.md ("Building the images").
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"
CACHE="${GUILDNET_IMAGES_CACHE:-$HOME/.cache/guildnet/images}"
TESTBED_DIR="${GUILDNET_TESTBED_DIR:-$HOME/.cache/guildnet/testbed}"

# Bump when the steps that make a cached base or stage change, so the caches are rebuilt.
RECIPE=2
SUITE="${GUILDNET_IMAGES_SUITE:-bookworm}"
MIRROR="${GUILDNET_IMAGES_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${GUILDNET_IMAGES_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
# The agent's base: a minimal Debian (the Essential packages: sh, coreutils, ...) plus git, TLS
# roots, and the C++ runtime Node.js needs. The operator's: only the C library and libgcc (for
# unwinding), unpacked without maintainer scripts; it talks to nothing but the API server.
AGENT_PACKAGES="git,ca-certificates,libstdc++6,openssh-client,procps"
OPERATOR_PACKAGES="libc6,libgcc-s1,base-files,netbase"
AGENT_UID=1000
OPERATOR_UID=65532
# tailscale for the orchestrator image: the testbed's pinned version. One static binary (the
# upstream "box" build, build_dist.sh --box: ts_include_cli) without the features a userspace
# node in a container never uses (`go run ./cmd/featuretags --list` in tailscale's source):
# kept are netstack, the SOCKS5/HTTP proxies, DNS, DERP, the CLI, debug (`tailscale debug prefs`).
TAILSCALE_VERSION="$(sed -n 's/^TAILSCALE_VERSION=//p' "$REPO_ROOT/scripts/testbed/versions.env")"
TAILSCALE_OMIT="aws bird tap kube ssh drive taildrop webclient systray synology networkmanager dbus
  resolved clientupdate capture wakeonlan tpm relayserver desktop_sessions completion_scripts
  completion qrcodes advertiseexitnode appconnectors serve posture doctor netlog linkspeed
  tundevstats osrouter iptables webbrowser"
TAILSCALE_TAGS="ts_include_cli$(for f in $TAILSCALE_OMIT; do printf ',ts_omit_%s' "$f"; done)"

log() { printf '[images] %s\n' "$*" >&2; }
die() { printf '[images] ERROR: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,41p' "$0" | sed 's/^# \{0,1\}//'; }

IMAGES="agent,operator" BINARIES="" TAG="" OUT="$REPO_ROOT/target/images" ARCHIVE=1 PUSH=""
INSECURE=0 CODE_SERVER_PREFIX="$TESTBED_DIR/code-server" NODE_BIN="" PREPARE=0 REFRESH=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --images) IMAGES=$2; shift 2 ;;
    --binaries) BINARIES=$2; shift 2 ;;
    --tag) TAG=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --no-archive) ARCHIVE=0; shift ;;
    --push) PUSH=${2%/}; shift 2 ;;
    --insecure) INSECURE=1; shift ;;
    --code-server) CODE_SERVER_PREFIX=$2; shift 2 ;;
    --node) NODE_BIN=$2; shift 2 ;;
    --prepare) PREPARE=1; shift ;;
    --refresh) REFRESH=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
[[ $ARCHIVE -eq 1 || -n $PUSH || $PREPARE -eq 1 ]] || die "--no-archive without --push builds nothing"
IFS=',' read -r -a WANT <<<"$IMAGES"
for i in "${WANT[@]}"; do
  case "$i" in agent|operator|orchestrator|dashboard) ;; *) die "unknown image $i (agent, operator, orchestrator, dashboard)" ;; esac
done
if [[ -z $TAG ]]; then
  TAG="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$REPO_ROOT/Cargo.toml")"
fi
[[ $TAG =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "--tag $TAG is not a valid image tag"

now_s() { date +%s.%N; }
secs_since() { awk -v a="$1" -v b="$(now_s)" 'BEGIN { printf "%.1f", b - a }'; }
human() { awk -v b="$1" 'BEGIN { split("B KB MB GB", u); i = 1; while (b >= 1000 && i < 4) { b /= 1000; i++ } printf (i == 1 ? "%d %s" : "%.1f %s"), b, u[i] }'; }
sha() { sha256sum | cut -c1-16; }

# apt-get install of the tools that are missing (as scripts/testbed/install.sh does).
apt_install() {
  local missing=() p sudo=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [[ ${#missing[@]} -gt 0 ]] || return 0
  [[ $(id -u) -eq 0 ]] || sudo=(sudo)
  log "apt-get install ${missing[*]}"
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}
# Everything but the IMAGE lines (fd 3) goes to stderr.
exec 3>&1 1>&2
apt_install mmdebstrap umoci skopeo jq binutils

mkdir -p "$CACHE"
# One build at a time per cache (a developer's and a test's, say).
exec 9>"$CACHE/.lock"
flock 9

WORK="$(mktemp -d "${TMPDIR:-/tmp}/gn-images.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# ---------------------------------------------------------------------------------------------
# Debian bases (cached tars).

dpkg_slim=(
  --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-include=/usr/share/locale/locale.alias'
  --dpkgopt='path-exclude=/usr/share/lintian/*'
)
sources=("deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" "deb $SECURITY_MIRROR $SUITE-security main")

base_key() { # base_key agent|operator
  local pk
  case "$1" in agent) pk="essential $AGENT_PACKAGES uid=$AGENT_UID" ;; *) pk="extract $OPERATOR_PACKAGES uid=$OPERATOR_UID" ;; esac
  printf '%s\n' "recipe=$RECIPE" "$SUITE" "${sources[@]}" "$pk" "${dpkg_slim[@]}" | sha
}

# build_base agent|operator DIR: DIR/oci is a one-layer OCI layout (tag "stage") holding a root
# filesystem from the Debian archive; DIR/bytes its uncompressed size. mmdebstrap writes a
# directory and umoci makes the layer from it (umoci's tar is what containerd expects).
build_base() {
  local kind=$1 dir=$2 t0 rootfs=$WORK/rootfs-$1
  t0=$(now_s)
  log "building the $kind base with mmdebstrap ($SUITE) ..."
  rm -rf "$rootfs" "$dir"
  case "$kind" in
    agent)
      mmdebstrap --quiet --variant=essential --include="$AGENT_PACKAGES" "${dpkg_slim[@]}" \
        --customize-hook='echo "coder:x:'"$AGENT_UID:$AGENT_UID"':GuildNet agent:/home/coder:/bin/bash" >>"$1/etc/passwd"' \
        --customize-hook='echo "coder:x:'"$AGENT_UID"':" >>"$1/etc/group"' \
        --customize-hook='echo "coder:*:19000:0:99999:7:::" >>"$1/etc/shadow"' \
        --customize-hook='mkdir -p "$1/home/coder/workspace" "$1/home/coder/.guildnet/state" && chown -R '"$AGENT_UID:$AGENT_UID"' "$1/home/coder" && chmod 0755 "$1/home/coder"' \
        --customize-hook='rm -rf "$1"/var/log/* "$1"/var/cache/debconf/*-old "$1"/var/lib/dpkg/*-old' \
        --format=directory "$SUITE" "$rootfs" "${sources[@]}"
      ;;
    operator)
      # extract: packages unpacked, no maintainer scripts, no dpkg database; the users the
      # image runs as are written here (base-passwd's postinst does not run).
      mmdebstrap --quiet --variant=extract --include="$OPERATOR_PACKAGES" "${dpkg_slim[@]}" \
        --customize-hook='printf "root:x:0:0:root:/root:/usr/sbin/nologin\nnonroot:x:'"$OPERATOR_UID:$OPERATOR_UID"':nonroot:/home/nonroot:/usr/sbin/nologin\n" >"$1/etc/passwd"' \
        --customize-hook='printf "root:x:0:\nnonroot:x:'"$OPERATOR_UID"':\n" >"$1/etc/group"' \
        --customize-hook='mkdir -p "$1/home/nonroot" "$1/tmp" && chown '"$OPERATOR_UID:$OPERATOR_UID"' "$1/home/nonroot" && chmod 1777 "$1/tmp"' \
        --customize-hook='rm -rf "$1"/var/lib/dpkg "$1"/var/log/* "$1"/var/cache/*' \
        --format=directory "$SUITE" "$rootfs" "${sources[@]}"
      ;;
  esac
  # The runtime mounts /dev: no device nodes in the image.
  find "$rootfs/dev" -mindepth 1 -delete
  mkdir -p "$dir"
  umoci init --layout "$dir/oci"
  umoci new --image "$dir/oci:stage"
  umoci insert --image "$dir/oci:stage" "$rootfs" /
  umoci gc --layout "$dir/oci"
  du -sb --apparent-size "$rootfs" | cut -f1 >"$dir/bytes"
  rm -rf "$rootfs"
  log "$kind base: $(human "$(cat "$dir/bytes")") uncompressed, $(secs_since "$t0") s"
}

# base_dir agent|operator: prints the cached base's dir, building it if needed.
base_dir() {
  local kind=$1 key dir
  key=$(base_key "$kind")
  dir="$CACHE/base-$kind-$key"
  if [[ $REFRESH -eq 1 || ! -f $dir/bytes ]]; then
    rm -rf "$CACHE/base-$kind-"*
    build_base "$kind" "$dir.tmp" >&2
    mv "$dir.tmp" "$dir"
  fi
  echo "$dir"
}

# ---------------------------------------------------------------------------------------------
# Stages: cached OCI layouts (base layer, and for the agent Node.js + code-server) that each
# build copies (hard links: blobs are content-addressed and never rewritten) and adds to.

node_bin() {
  local n=${NODE_BIN:-$(command -v node || true)}
  [[ -n $n && -x $n ]] || die "no Node.js binary (install nodejs 20 or pass --node)"
  readlink -f "$n"
}

code_server_version() {
  jq -r .version "$CODE_SERVER_PREFIX/node_modules/code-server/package.json" 2>/dev/null ||
    die "no code-server under $CODE_SERVER_PREFIX (run scripts/testbed/install.sh code-server, or pass --code-server)"
}

stage_key() { # stage_key agent
  local node
  node=$(node_bin)
  printf '%s\n' "recipe=$RECIPE" "$(base_key agent)" "$(sha256sum <"$node" | cut -c1-16)" \
    "$(code_server_version)" "$(sha256sum <"$CODE_SERVER_PREFIX/package-lock.json" | cut -c1-16)" | sha
}

# build_stage agent DIR: the agent's base with Node.js and code-server added (DIR/oci, tag
# "stage"; DIR/bytes the uncompressed size of its layers).
build_stage() {
  local dir=$1 base t0 root layout=$1/oci bytes node cs_major node_major
  base=$(base_dir agent)
  t0=$(now_s)
  rm -rf "$dir"
  mkdir -p "$dir"
  # Hard links (blobs are content-addressed and never rewritten); index.json is rewritten by
  # umoci, so it gets a copy of its own.
  cp -al "$base/oci" "$layout" 2>/dev/null || cp -a "$base/oci" "$layout"
  rm -f "$layout/index.json" && cp "$base/oci/index.json" "$layout/index.json"
  bytes=$(cat "$base/bytes")
  node=$(node_bin)
  node_major=$("$node" --version | sed 's/^v\([0-9]*\).*/\1/')
  cs_major=$(jq -r '.engines.node' "$CODE_SERVER_PREFIX/node_modules/code-server/package.json" | tr -dc '0-9' | cut -c1-2)
  [[ $node_major == "$cs_major" ]] || die "code-server $(code_server_version) wants Node $cs_major, $node is $node_major"
  root="$WORK/stage-root"
  mkdir -p "$root/usr/local/bin" "$root/usr/local/lib"
  cp "$node" "$root/usr/local/bin/node"
  cp -a "$CODE_SERVER_PREFIX" "$root/usr/local/lib/code-server"
  ln -s ../lib/code-server/node_modules/.bin/code-server "$root/usr/local/bin/code-server"
  # Owned by root, readable by the agent's user whatever umask the install ran with.
  chown -R 0:0 "$root"
  chmod -R a+rX,go-w "$root"
  bytes=$((bytes + $(du -sb --apparent-size "$root" | cut -f1)))
  umoci insert --image "$layout:stage" "$root" /
  rm -rf "$root"
  umoci gc --layout "$layout"
  echo "$bytes" >"$dir/bytes"
  log "agent stage (Node.js + code-server): $(human "$bytes") uncompressed, $(secs_since "$t0") s"
}

orchestrator_stage_key() {
  printf '%s\n' "recipe=$RECIPE" "$(base_key operator)" "tailscale.com@$TAILSCALE_VERSION" \
    "$TAILSCALE_TAGS" "$(go version 2>/dev/null)" "license=/usr/share/doc/tailscale" | sha
}

# build_orchestrator_stage DIR: the operator's base with tailscaled added (DIR/oci, tag "stage";
# DIR/bytes the uncompressed size of its layers; DIR/tailscale the version line).
build_orchestrator_stage() {
  local dir=$1 base t0 layout=$1/oci bytes root short ldflags proxy
  [[ -n $TAILSCALE_VERSION ]] || die "no TAILSCALE_VERSION in scripts/testbed/versions.env"
  command -v go >/dev/null || die "the orchestrator image needs Go to build tailscaled $TAILSCALE_VERSION"
  base=$(base_dir operator)
  t0=$(now_s)
  rm -rf "$dir"
  mkdir -p "$dir"
  cp -al "$base/oci" "$layout" 2>/dev/null || cp -a "$base/oci" "$layout"
  rm -f "$layout/index.json" && cp "$base/oci/index.json" "$layout/index.json"
  root="$WORK/stage-root"
  mkdir -p "$root/usr/local/bin"
  short=${TAILSCALE_VERSION#v}
  # The version stamp as scripts/testbed/install.sh and tailscale's build_dist.sh set it.
  ldflags="-s -w -X tailscale.com/version.shortStamp=$short -X tailscale.com/version.longStamp=$short-guildnet"
  proxy="file://$(go env GOMODCACHE)/cache/download,$(go env GOPROXY)"
  log "building tailscaled $TAILSCALE_VERSION (tags $TAILSCALE_TAGS) ..."
  GOTOOLCHAIN=local GOFLAGS=-buildvcs=false CGO_ENABLED=0 GOPROXY="$proxy" GOBIN="$root/usr/local/bin" \
    go install -trimpath -tags "$TAILSCALE_TAGS" -ldflags="$ldflags" "tailscale.com/cmd/tailscaled@$TAILSCALE_VERSION"
  ln -s tailscaled "$root/usr/local/bin/tailscale"
  # Its BSD-3-Clause license and patent grant, where Debian keeps its packages' copyright files.
  mkdir -p "$root/usr/share/doc/tailscale"
  cp "$(go env GOMODCACHE)/tailscale.com@$TAILSCALE_VERSION/LICENSE" "$root/usr/share/doc/tailscale/copyright"
  cp "$(go env GOMODCACHE)/tailscale.com@$TAILSCALE_VERSION/PATENTS" "$root/usr/share/doc/tailscale/PATENTS"
  "$root/usr/local/bin/tailscale" version | head -1 | grep -qx "$short" ||
    die "the tailscale CLI in the built tailscaled does not report $short"
  "$root/usr/local/bin/tailscaled" --version | head -1 >"$dir/tailscale"
  chown -R 0:0 "$root"
  chmod -R a+rX,go-w "$root"
  bytes=$(($(cat "$base/bytes") + $(du -sb --apparent-size "$root" | cut -f1)))
  umoci insert --image "$layout:stage" "$root" /
  rm -rf "$root"
  umoci gc --layout "$layout"
  echo "$bytes" >"$dir/bytes"
  log "orchestrator stage (the operator base + tailscaled $(cat "$dir/tailscale")): $(human "$bytes") uncompressed, $(secs_since "$t0") s"
}

# cached_stage NAME KEY BUILD: prints the dir of stage NAME for KEY, built there by the function
# BUILD when it is missing (or with --refresh); older stages of NAME go.
cached_stage() {
  local name=$1 key=$2 build=$3
  local dir="$CACHE/stage-$name-$key"
  if [[ $REFRESH -eq 1 || ! -f $dir/bytes ]]; then
    rm -rf "$CACHE/stage-$name-"*
    "$build" "$dir.tmp" >&2
    mv "$dir.tmp" "$dir"
  fi
  echo "$dir"
}

# stage_dir KIND: prints the dir of the cached layout an image of KIND starts from: the agent's
# stage, the orchestrator's (the operator's base + tailscaled), or the operator's base (which
# the dashboard image shares).
stage_dir() {
  local kind=$1 key
  [[ $kind == dashboard ]] && kind=operator
  case $kind in
    operator) base_dir operator ;;
    orchestrator)
      key=$(orchestrator_stage_key)
      cached_stage orchestrator "$key" build_orchestrator_stage
      ;;
    *)
      key=$(stage_key agent)
      cached_stage agent "$key" build_stage
      ;;
  esac
}

if [[ $PREPARE -eq 1 ]]; then
  t0=$(now_s)
  for kind in "${WANT[@]}"; do stage_dir "$kind" >/dev/null; done
  log "bases ready in $CACHE ($(secs_since "$t0") s)"
  exit 0
fi

# ---------------------------------------------------------------------------------------------
# Binaries.

bin_name() { echo "guildnet-$1"; }
if [[ -z $BINARIES ]]; then
  bins=()
  for i in "${WANT[@]}"; do bins+=(--bin "$(bin_name "$i")"); done
  log "cargo build --release ${bins[*]}"
  t0=$(now_s)
  (cd "$REPO_ROOT" && cargo build --release --locked -p guildnet-bin "${bins[@]}")
  log "cargo build: $(secs_since "$t0") s"
  BINARIES="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release"
fi
mkdir -p "$WORK/bin"
for i in "${WANT[@]}"; do
  b="$BINARIES/$(bin_name "$i")"
  [[ -x $b ]] || die "$b is missing (build it, or pass --binaries DIR)"
  strip --strip-all -o "$WORK/bin/$(bin_name "$i")" "$b"
  chmod 0755 "$WORK/bin/$(bin_name "$i")"
done

REVISION="$(git -C "$REPO_ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
if [[ -n ${SOURCE_DATE_EPOCH:-} ]]; then
  CREATED="$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)"
else
  CREATED="$(git -C "$REPO_ROOT" log -1 --format=%cd --date=format-local:%Y-%m-%dT%H:%M:%SZ 2>/dev/null || date -u +%Y-%m-%dT%H:%M:%SZ)"
fi
SOURCE="$(sed -n '/^\[workspace.package\]/,/^\[/s/^repository = "\(.*\)"/\1/p' "$REPO_ROOT/Cargo.toml")"

# ---------------------------------------------------------------------------------------------
# Images.

summary=()
for kind in "${WANT[@]}"; do
  t0=$(now_s)
  stage=$(stage_dir "$kind")
  layout="$WORK/oci-$kind"
  # Hard links (blobs are content-addressed and never rewritten); index.json is rewritten by
  # umoci, so it gets a copy of its own.
  cp -al "$stage/oci" "$layout" 2>/dev/null || cp -a "$stage/oci" "$layout"
  rm -f "$layout/index.json" && cp "$stage/oci/index.json" "$layout/index.json"
  ref="$layout:stage"
  name="guildnet-$kind"
  root="$WORK/root-$kind"
  mkdir -p "$root/usr/local/bin"
  chmod 0755 "$root" "$root/usr" "$root/usr/local" "$root/usr/local/bin"
  cp "$WORK/bin/$name" "$root/usr/local/bin/$name"
  umoci insert --image "$ref" "$root" /
  common=(
    --os linux --architecture "$(dpkg --print-architecture)" --created "$CREATED"
    --author "GuildNet"
    --config.label "org.opencontainers.image.title=$name"
    --config.label "org.opencontainers.image.version=$TAG"
    --config.label "org.opencontainers.image.revision=$REVISION"
    --config.label "org.opencontainers.image.created=$CREATED"
    --config.label "org.opencontainers.image.licenses=Apache-2.0"
    --config.label "org.opencontainers.image.base.name=debian:$SUITE (mmdebstrap)"
    --config.env "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    --config.entrypoint "/usr/local/bin/$name"
  )
  [[ -z $SOURCE ]] || common+=(--config.label "org.opencontainers.image.source=$SOURCE")
  case "$kind" in
    agent)
      umoci config --image "$ref" "${common[@]}" \
        --config.label "org.opencontainers.image.description=GuildNet agent: runs one task's coding CLI, ships its log, serves code-server on :8443" \
        --config.user "$AGENT_UID:$AGENT_UID" --config.workingdir /home/coder/workspace \
        --config.env HOME=/home/coder \
        --config.env GUILDNET_CODE_SERVER=/usr/local/bin/code-server \
        --config.env GUILDNET_EDITOR_ADDR=0.0.0.0:8443 \
        --config.env GUILDNET_HEALTH_ADDR=0.0.0.0:8081 \
        --config.env GUILDNET_WORKSPACE=/home/coder/workspace \
        --config.env GUILDNET_STATE_DIR=/home/coder/.guildnet/state \
        --config.exposedports 8443/tcp --config.exposedports 8081/tcp
      ;;
    operator)
      umoci config --image "$ref" "${common[@]}" \
        --config.label "org.opencontainers.image.description=GuildNet operator: reconciles AgentTasks into agent pods" \
        --config.user "$OPERATOR_UID:$OPERATOR_UID" --config.workingdir /home/nonroot \
        --config.env HOME=/home/nonroot --config.exposedports 8080/tcp
      ;;
    orchestrator)
      umoci config --image "$ref" "${common[@]}" \
        --config.label "org.opencontainers.image.description=GuildNet orchestrator (REST API, scheduler; tailscaled for PUT /mesh)" \
        --config.label "io.guildnet.tailscale.version=$TAILSCALE_VERSION" \
        --config.label "io.guildnet.tailscale.source=tailscale.com/cmd/tailscaled@$TAILSCALE_VERSION (CGO_ENABLED=0, -trimpath)" \
        --config.label "io.guildnet.tailscale.tags=$TAILSCALE_TAGS" \
        --config.user "$OPERATOR_UID:$OPERATOR_UID" --config.workingdir /home/nonroot \
        --config.env HOME=/home/nonroot --config.env GUILDNET_LISTEN=0.0.0.0:8080 \
        --config.exposedports 8080/tcp
      ;;
    dashboard)
      umoci config --image "$ref" "${common[@]}" \
        --config.label "org.opencontainers.image.description=GuildNet dashboard (web UI over the orchestrator)" \
        --config.user "$OPERATOR_UID:$OPERATOR_UID" --config.workingdir /home/nonroot \
        --config.env HOME=/home/nonroot --config.env GUILDNET_DASHBOARD_LISTEN=0.0.0.0:8090 \
        --config.exposedports 8090/tcp
      ;;
  esac
  umoci tag --image "$ref" "$TAG"
  umoci rm --image "$ref"
  umoci gc --layout "$layout"
  jq --arg n "$name:$TAG" '.manifests[0].annotations["io.containerd.image.name"] = $n' \
    "$layout/index.json" >"$layout/index.json.tmp" && mv -f "$layout/index.json.tmp" "$layout/index.json"

  # Sizes: compressed (what a node pulls) from the manifest, uncompressed from the layers.
  manifest_digest=$(jq -r '.manifests[0].digest' "$layout/index.json")
  manifest="$layout/blobs/${manifest_digest/://}"
  compressed=$(jq '[.layers[].size] | add' "$manifest")
  layers=$(jq '.layers | length' "$manifest")
  top=$(jq -r '.layers[-1].digest' "$manifest")
  uncompressed=$(($(cat "$stage/bytes") + $(gzip -dc "$layout/blobs/${top/://}" | wc -c)))
  built=$(secs_since "$t0")

  if [[ $ARCHIVE -eq 1 ]]; then
    mkdir -p "$OUT"
    tar -C "$layout" -cf "$OUT/$name.oci.tar.tmp" .
    mv -f "$OUT/$name.oci.tar.tmp" "$OUT/$name.oci.tar"
    log "wrote $OUT/$name.oci.tar"
  fi
  pushed=""
  if [[ -n $PUSH ]]; then
    t1=$(now_s)
    dest="$PUSH/$name:$TAG"
    tls=(); [[ $INSECURE -eq 0 ]] || tls=(--dest-tls-verify=false)
    TMPDIR="$WORK" skopeo --insecure-policy copy --quiet "${tls[@]}" "oci:$layout:$TAG" "docker://$dest"
    pushed=$dest
    log "pushed $dest in $(secs_since "$t1") s"
  fi
  summary+=("$name:$TAG  $layers layers  $(human "$compressed") compressed  $(human "$uncompressed") uncompressed  binary $(human "$(stat -c %s "$WORK/bin/$name")")  built in $built s")
  # Machine-readable line for callers (the testbed's image helper).
  printf 'IMAGE %s %s %s %s %s\n' "$kind" "${pushed:-$name:$TAG}" "$manifest_digest" "$compressed" "$uncompressed" >&3
  rm -rf "$layout" "$root"
done
for s in "${summary[@]}"; do log "$s"; done
