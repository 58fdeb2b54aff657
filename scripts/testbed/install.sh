#!/usr/bin/env bash
# Builds/installs the real upstream servers that GuildNet's integration tests start, into a
# cache outside the repository clone. Idempotent: an item whose stamp matches its pinned
# version (scripts/testbed/versions.env) and whose files are present is skipped.
#
#   scripts/testbed/install.sh                 # every item
#   scripts/testbed/install.sh etcd kube       # only these items
#   scripts/testbed/install.sh --force kwok    # rebuild even if the stamp matches
#   scripts/testbed/install.sh --list          # print the items and their versions
#
# Items: etcd kube kwok headscale tailscale talosctl talos-emulator code-server chromium gitea aider
#        containerd kubelet node-deps registry pause busybox-image tailscale-image (the real node)
#        images (the cached bases of GuildNet's own images, scripts/images/build.sh --prepare)
#        postgres nginx (the PostgreSQL store, and a load balancer in front of its replicas)
#        helm (checks deploy/helm/guildnet: lint, template, install into the testbed's apiserver)
# Cache: ${GUILDNET_TESTBED_DIR:-$HOME/.cache/guildnet/testbed}, binaries in bin/; the repo gets
# a symlink .cache/testbed -> the cache (.cache/ is git-ignored). Details: docs/TESTBED.md.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"
# shellcheck source=scripts/testbed/versions.env
source "$SCRIPT_DIR/versions.env"

TESTBED_DIR="${GUILDNET_TESTBED_DIR:-$HOME/.cache/guildnet/testbed}"
BIN="$TESTBED_DIR/bin"
STAMPS="$TESTBED_DIR/stamps"
SRC="$TESTBED_DIR/src"   # generated wrapper Go modules
LOGS="$TESTBED_DIR/logs"

ALL_ITEMS=(etcd kube kwok headscale tailscale talosctl talos-emulator code-server chromium gitea aider
  containerd kubelet node-deps registry pause busybox-image tailscale-image images postgres nginx helm)

# Bump an item's recipe number when its build steps change (not its version), to force a rebuild.
declare -A RECIPE=([etcd]=1 [kube]=1 [kwok]=2 [headscale]=1 [tailscale]=1 [talosctl]=1 [talos-emulator]=1 [code-server]=1 [chromium]=1
  [gitea]=1 [aider]=1
  [containerd]=1 [kubelet]=1 [node-deps]=1 [registry]=1 [pause]=1 [busybox-image]=1 [tailscale-image]=2 [images]=2 [postgres]=1 [nginx]=1 [helm]=1)

# Go: never fetch another toolchain; keep the default module/build caches (~/go/pkg/mod,
# ~/.cache/go-build) so rebuilds after a version bump are cheap.
export GOTOOLCHAIN=local
[[ " ${GOFLAGS:-} " == *" -buildvcs=false "* ]] || export GOFLAGS="${GOFLAGS:+$GOFLAGS }-buildvcs=false"
GO_LDFLAGS_BASE="-s -w"

log() { printf '[testbed] %s\n' "$*"; }
die() { printf '[testbed] ERROR: %s\n' "$*" >&2; exit 1; }

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }

item_version() {
  case "$1" in
    etcd) echo "$ETCD_VERSION" ;;
    kube) echo "$K8S_VERSION" ;;
    kwok) echo "$KWOK_VERSION" ;;
    headscale) echo "$HEADSCALE_VERSION" ;;
    tailscale) echo "$TAILSCALE_VERSION" ;;
    talosctl) echo "$TALOS_VERSION" ;;
    talos-emulator) echo "$TALOS_VERSION-src.$(talos_emulator_hash)" ;;
    code-server) echo "$CODE_SERVER_VERSION" ;;
    chromium) echo "debian" ;;
    gitea) echo "$GITEA_VERSION" ;;
    aider) echo "$AIDER_VERSION" ;;
    containerd) echo "$CONTAINERD_VERSION" ;;
    kubelet) echo "$K8S_VERSION" ;;
    node-deps) echo "debian" ;;
    registry) echo "$REGISTRY_VERSION" ;;
    pause) echo "$PAUSE_VERSION" ;;
    busybox-image) echo "debian" ;;
    tailscale-image) echo "$TAILSCALE_VERSION" ;;
    images) echo "debian-$CODE_SERVER_VERSION" ;;
    postgres) echo "$POSTGRES_MAJOR" ;;
    nginx) echo "debian" ;;
    helm) echo "$HELM_VERSION" ;;
    *) return 1 ;;
  esac
}

# Files that must exist (in bin/) for an item to count as installed.
item_outputs() {
  case "$1" in
    etcd) echo "etcd" ;;
    kube) echo "kube-apiserver kube-controller-manager kube-scheduler" ;;
    kwok) echo "kwok" ;;
    headscale) echo "headscale" ;;
    tailscale) echo "tailscale tailscaled" ;;
    talosctl) echo "talosctl" ;;
    talos-emulator) echo "talos-emulator" ;;
    code-server) echo "code-server" ;;
    chromium) echo "chromium chromedriver" ;;
    gitea) echo "gitea" ;;
    aider) echo "aider" ;;
    containerd) echo "containerd containerd-shim-runc-v2 ctr" ;;
    kubelet) echo "kubelet kubectl" ;;
    node-deps) echo "runc skopeo" ;;
    registry) echo "registry" ;;
    postgres) echo "initdb postgres pg_isready psql" ;;
    nginx) echo "nginx" ;;
    tailscale-image) echo "containerboot" ;;
    helm) echo "helm" ;;
  esac
}

# Files other than binaries (relative to the cache dir) that must exist for an item to count
# as installed.
item_files() {
  case "$1" in
    kwok) echo "share/kwok/stages-fast.yaml" ;;
    gitea) echo "share/gitea/options" ;;
    pause) echo "share/images/pause.oci.tar" ;;
    busybox-image) echo "share/images/busybox.oci.tar" ;;
    tailscale-image) echo "share/images/tailscale.oci.tar" ;;
  esac
}

stamp_value() { echo "$1 $(item_version "$1") recipe=${RECIPE[$1]}"; }

is_installed() {
  local item=$1 f
  [[ -f "$STAMPS/$item" && "$(cat "$STAMPS/$item")" == "$(stamp_value "$item")" ]] || return 1
  for f in $(item_outputs "$item"); do [[ -x "$BIN/$f" ]] || return 1; done
  for f in $(item_files "$item"); do [[ -e "$TESTBED_DIR/$f" ]] || return 1; done
}

# go build into a temp name, then rename, so an interrupted build never leaves a binary behind.
go_build_to() { # go_build_to OUT LDFLAGS PKG  (run inside the module dir)
  local out=$1 ldflags=$2 pkg=$3
  go build -trimpath -ldflags="$ldflags" -o "$out.tmp" "$pkg"
  mv -f "$out.tmp" "$out"
}

# Prints a field ("GoMod", "Dir", ...) of `go mod download -json MODULE@VERSION`.
go_mod_field() { # go_mod_field MODULE@VERSION FIELD
  local json
  json="$(go mod download -json "$1")" || die "go mod download $1 failed: $json"
  sed -n 's/^[[:space:]]*"'"$2"'": "\(.*\)",\{0,1\}$/\1/p' <<<"$json"
}

# Every "X => Y" line of a go.mod's replace directives, one per line, without leading space.
go_mod_replaces() { # go_mod_replaces GOMOD
  awk '
    /^replace[[:space:]]*\($/ {inblk=1; next}
    inblk && /^\)/ {inblk=0; next}
    inblk && /=>/ {print; next}
    /^replace .*=>/ {sub(/^replace[[:space:]]+/, ""); print}
  ' "$1" | sed -e 's#^[[:space:]]*##' -e 's#[[:space:]]*//.*$##'
}

# Writes a wrapper module in DIR that requires MODULE@VERSION, lists TOOL packages (go.mod
# `tool` directives keep `go mod tidy` from pruning them), carries REPLACES (one "X => Y V" a
# line, may be empty), starts its go.sum from MODULE's own go.sum (so replaced forks are checked
# against upstream's recorded hashes rather than looked up in the checksum database), and tidies.
# Why a wrapper and not `go install M/cmd/x@V`: go install refuses a module whose go.mod has
# replace directives (k8s.io/kubernetes, talos, etcd's root module).
go_wrapper() { # go_wrapper DIR MODULE VERSION REPLACES TOOL...
  local dir=$1 mod=$2 ver=$3 repl=$4 srcdir; shift 4
  srcdir="$(go_mod_field "$mod@$ver" Dir)"
  [[ -d "$srcdir" ]] || die "could not download $mod@$ver"
  rm -rf "$dir" && mkdir -p "$dir"
  {
    printf '// Generated by scripts/testbed/install.sh; do not edit.\nmodule guildnet.local/testbed/wrapper\n\ngo 1.26\n\nrequire %s %s\n\ntool (\n' "$mod" "$ver"
    printf '\t%s\n' "$@"
    printf ')\n'
    if [[ -n "$repl" ]]; then
      printf '\nreplace (\n'
      sed -e '/^[[:space:]]*$/d' -e 's/^/\t/' <<<"$repl"
      printf ')\n'
    fi
  } >"$dir/go.mod"
  if [[ -f "$srcdir/go.sum" ]]; then cp "$srcdir/go.sum" "$dir/go.sum" && chmod u+w "$dir/go.sum"; fi
  (cd "$dir" && go mod tidy)
}

# `go install PKG@VERSION` for each PKG of MODULE into bin/ (one PKG at a time: 2 cores).
# go install also asks the proxy for MODULE's version list (to report deprecations), which
# the proxy refuses here for some modules (headscale: "403 ... This module version is not
# available"). So the module cache's download dir, which holds that list once
# `go mod download MODULE@VERSION` has run, goes first in GOPROXY; anything not in the cache
# falls through to the usual proxy, and checksums are still checked against the checksum
# database (through the proxy, as before).
go_install_pinned() { # go_install_pinned MODULE VERSION LDFLAGS PKG...
  local mod=$1 ver=$2 ldflags=$3 tmp pkg proxy; shift 3
  go_mod_field "$mod@$ver" Dir >/dev/null
  proxy="file://$(go env GOMODCACHE)/cache/download,$(go env GOPROXY)"
  tmp="$(mktemp -d "$TESTBED_DIR/.gobin.XXXXXX")"
  for pkg in "$@"; do
    GOPROXY="$proxy" GOSUMDB="$(go env GOSUMDB)" GOBIN="$tmp" \
      go install -trimpath -ldflags="$ldflags" "$pkg@$ver"
    mv -f "$tmp/${pkg##*/}" "$BIN/${pkg##*/}"
  done
  rm -rf "$tmp"
}

# Checks that CMD... runs and that its output contains WANT.
verify() { # verify WANT CMD...
  local want=$1 out; shift
  out="$("$@" 2>&1)" || die "'$*' failed: $out"
  printf '         %s\n' "$(head -n 3 <<<"$out" | tr '\n' ' ')"
  grep -qF -- "$want" <<<"$out" || die "'$*' did not print '$want': $out"
}

# ---------------------------------------------------------------------------------------------
# etcd: the etcd server's main() is in the root module go.etcd.io/etcd/v3 (main.go calls
# go.etcd.io/etcd/server/v3/etcdmain.Main), whose go.mod has replace directives (./server, ./api,
# ...), so `go install` cannot build it. The wrapper module has the same two-line main.
install_etcd() {
  local dir="$SRC/etcd-$ETCD_VERSION"
  rm -rf "$dir" && mkdir -p "$dir"
  cat >"$dir/go.mod" <<EOF
// Generated by scripts/testbed/install.sh; do not edit.
module guildnet.local/testbed/etcd

go 1.26

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
EOF
  cat >"$dir/main.go" <<'EOF'
// Generated by scripts/testbed/install.sh: the same main as go.etcd.io/etcd/v3's main.go.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
  (
    cd "$dir"
    go mod tidy
    go_build_to "$BIN/etcd" "$GO_LDFLAGS_BASE -X go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION" .
  )
  verify "etcd Version: ${ETCD_VERSION#v}" "$BIN/etcd" --version
}

# ---------------------------------------------------------------------------------------------
# kube-apiserver, kube-controller-manager, kube-scheduler (kwok simulates nodes and pod status
# but does not bind pods to nodes; the scheduler does). k8s.io/kubernetes's go.mod requires its
# staging modules (k8s.io/api, apimachinery, ...) at v0.0.0 and replaces them with
# ./staging/src/..., so `go install` fails. The wrapper replaces every staging module with its
# published tag v0.<minor>.<patch>; the list is read from k8s.io/kubernetes's own go.mod.
# kube_build DIR CMD... writes that wrapper in DIR with a `tool` line per CMD (k8s.io/kubernetes/
# cmd/CMD) and builds each CMD into bin/, version-stamped. The kube and kubelet items share it.
kube_build() { # kube_build DIR CMD...
  local v=$K8S_VERSION dir=$1 gomod staging_ver minor major ldflags repl kv pkg cmd tools=()
  shift
  gomod="$(go_mod_field "k8s.io/kubernetes@$v" GoMod)"
  [[ -f "$gomod" ]] || die "could not download k8s.io/kubernetes@$v"
  IFS=. read -r major minor _ <<<"${v#v}"
  staging_ver="v0.${v#v1.}"
  repl="$(go_mod_replaces "$gomod" |
    sed -n 's#^\(k8s\.io/[A-Za-z0-9._-]*\) => \./staging/src/.*$#\1 => \1 '"$staging_ver"'#p')"
  [[ -n "$repl" ]] || die "no staging replace lines found in $gomod"
  if go_mod_replaces "$gomod" | grep -v '=> \./staging/' | grep -q .; then
    die "k8s.io/kubernetes@$v has replace lines this script does not handle: $(go_mod_replaces "$gomod" | grep -v '=> \./staging/')"
  fi
  for cmd in "$@"; do tools+=("k8s.io/kubernetes/cmd/$cmd"); done
  go_wrapper "$dir" k8s.io/kubernetes "$v" "$repl" "${tools[@]}"
  # Same -X values as kubernetes' hack/lib/version.sh, so /version and --version report v1.x.y.
  ldflags="$GO_LDFLAGS_BASE"
  for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    for kv in "gitVersion=$v" "gitMajor=$major" "gitMinor=$minor" "gitTreeState=clean"; do
      ldflags+=" -X $pkg.$kv"
    done
  done
  for cmd in "$@"; do
    (cd "$dir" && go_build_to "$BIN/$cmd" "$ldflags" "k8s.io/kubernetes/cmd/$cmd")
  done
}

install_kube() {
  local cmd
  kube_build "$SRC/kube-$K8S_VERSION" kube-apiserver kube-controller-manager kube-scheduler
  for cmd in kube-apiserver kube-controller-manager kube-scheduler; do
    verify "Kubernetes $K8S_VERSION" "$BIN/$cmd" --version
  done
}

# kubelet + kubectl for the real testbed node (testbed/src/node.rs). Its own item and wrapper
# dir, so machines that have the kube item do not rebuild the control plane.
install_kubelet() {
  kube_build "$SRC/kubelet-$K8S_VERSION" kubelet kubectl
  verify "Kubernetes $K8S_VERSION" "$BIN/kubelet" --version
  verify "Client Version: $K8S_VERSION" "$BIN/kubectl" version --client
}

# ---------------------------------------------------------------------------------------------
# kwok, headscale, tailscale: modules without replace directives, so plain
# `go install MODULE/cmd/x@VERSION` (the module's own go.mod and go.sum decide every dependency).
# kwok starts only with Stage configs ("Execute exit: no stages found"); kwokctl passes its
# "fast" set (kustomize/stage/fast = node/fast + node/heartbeat-with-lease + pod/fast). The
# same YAML, from the module source, goes to share/kwok/stages-fast.yaml for the tests:
#   kwok --config <that file> --node-lease-duration-seconds 40 ...
install_kwok() {
  local src out f
  go_install_pinned sigs.k8s.io/kwok "$KWOK_VERSION" "$GO_LDFLAGS_BASE" sigs.k8s.io/kwok/cmd/kwok
  src="$(go_mod_field "sigs.k8s.io/kwok@$KWOK_VERSION" Dir)/kustomize/stage"
  out="$TESTBED_DIR/share/kwok/stages-fast.yaml"
  mkdir -p "${out%/*}"
  {
    echo "# Generated by scripts/testbed/install.sh from sigs.k8s.io/kwok@$KWOK_VERSION kustomize/stage/{node/fast,node/heartbeat-with-lease,pod/fast}"
    for f in "$src"/node/fast/*.yaml "$src"/node/heartbeat-with-lease/*.yaml "$src"/pod/fast/*.yaml; do
      [[ ${f##*/} == kustomization.yaml ]] && continue
      echo "---"
      cat "$f"
    done
  } >"$out.tmp"
  grep -q '^kind: Stage' "$out.tmp" || die "kwok: no Stage found under $src"
  mv -f "$out.tmp" "$out"
  verify "${KWOK_VERSION}" "$BIN/kwok" --version
}

install_headscale() {
  # headscale reports the main module's version from its build info, which go install sets.
  go_install_pinned github.com/juanfont/headscale "$HEADSCALE_VERSION" "$GO_LDFLAGS_BASE" \
    github.com/juanfont/headscale/cmd/headscale
  verify "headscale version $HEADSCALE_VERSION" "$BIN/headscale" version
}

install_tailscale() {
  local short=${TAILSCALE_VERSION#v} ldflags
  # Stamp the version like tailscale's build_dist.sh does (otherwise it reports x.y.z-ERR-BuildInfo).
  ldflags="$GO_LDFLAGS_BASE -X tailscale.com/version.shortStamp=$short -X tailscale.com/version.longStamp=$short-guildnet-testbed"
  go_install_pinned tailscale.com "$TAILSCALE_VERSION" "$ldflags" tailscale.com/cmd/tailscale tailscale.com/cmd/tailscaled
  verify "$short" "$BIN/tailscale" version
  verify "$short" "$BIN/tailscaled" --version
}

# helm: helm.sh/helm/v3 has no replace directives, so `go install .../cmd/helm@VERSION`. The
# ldflags are those of helm's Makefile for a release tag: the version (else `helm version` says
# "v3.21" with no patch), and the Kubernetes version that `helm lint`/`helm template` assume
# (Capabilities.KubeVersion: client-go's v0.X.Y is Kubernetes 1.X, read from helm's go.mod).
install_helm() {
  local gomod k8s_minor ldflags p
  gomod="$(go_mod_field "helm.sh/helm/v3@$HELM_VERSION" GoMod)"
  [[ -f "$gomod" ]] || die "could not download helm.sh/helm/v3@$HELM_VERSION"
  k8s_minor="$(sed -n 's#^[[:space:]]*k8s.io/client-go v0\.\([0-9]*\)\..*#\1#p' "$gomod")"
  [[ -n "$k8s_minor" ]] || die "helm: no k8s.io/client-go in $gomod"
  ldflags="$GO_LDFLAGS_BASE -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  for p in pkg/lint/rules pkg/chartutil; do
    ldflags+=" -X helm.sh/helm/v3/$p.k8sVersionMajor=1 -X helm.sh/helm/v3/$p.k8sVersionMinor=$k8s_minor"
  done
  CGO_ENABLED=0 go_install_pinned helm.sh/helm/v3 "$HELM_VERSION" "$ldflags" helm.sh/helm/v3/cmd/helm
  verify "$HELM_VERSION" "$BIN/helm" version --short
}

# ---------------------------------------------------------------------------------------------
# talosctl: github.com/siderolabs/talos's go.mod has replace directives (forks of coredns,
# ethtool, kobject, wgctrl-go, containerd, yaml, dhcp; pkg/machinery => ./pkg/machinery), so
# `go install` fails. The wrapper copies them, pointing ./pkg/* at the published module of the
# same version, and seeds go.sum from talos's go.sum (the checksum database does not answer for
# some forks here). The version strings come from pkg/machinery/gendata/data/* (committed).
install_talosctl() {
  local v=$TALOS_VERSION dir gomod repl
  dir="$SRC/talosctl-$v"
  gomod="$(go_mod_field "github.com/siderolabs/talos@$v" GoMod)"
  [[ -f "$gomod" ]] || die "could not download github.com/siderolabs/talos@$v"
  repl="$(go_mod_replaces "$gomod" |
    sed -e 's#^\(github.com/siderolabs/talos/[^ ]*\) => \./.*$#\1 => \1 '"$v"'#')"
  if grep -q '=> \.' <<<"$repl"; then die "unhandled local replace in $gomod: $repl"; fi
  go_wrapper "$dir" github.com/siderolabs/talos "$v" "$repl" github.com/siderolabs/talos/cmd/talosctl
  (cd "$dir" && go_build_to "$BIN/talosctl" "$GO_LDFLAGS_BASE" github.com/siderolabs/talos/cmd/talosctl)
  verify "Tag:         $v" "$BIN/talosctl" version --client
}

# ---------------------------------------------------------------------------------------------
# talos-emulator: GuildNet's own Talos node emulator (testbed/talos-emulator, a Go module in this
# repository) for the tests that drive the real talosctl. It uses the API types of
# github.com/siderolabs/talos/pkg/machinery at TALOS_VERSION (the talosctl's version; go.mod pins
# it and carries machinery's own replace lines). Its stamp records a hash of its sources, so an
# edit rebuilds it. See testbed/talos-emulator/README.md.
TALOS_EMULATOR_SRC="$REPO_ROOT/testbed/talos-emulator"
talos_emulator_hash() {
  (cd "$TALOS_EMULATOR_SRC" && cat go.mod go.sum ./*.go) | sha256sum | cut -c1-12
}

install_talos_emulator() {
  local want
  want="$(sed -n 's#^[[:space:]]*github.com/siderolabs/talos/pkg/machinery \(v[^ ]*\).*#\1#p' "$TALOS_EMULATOR_SRC/go.mod" | head -n1)"
  [[ "$want" == "$TALOS_VERSION" ]] ||
    die "talos-emulator: go.mod requires machinery $want, versions.env has TALOS_VERSION=$TALOS_VERSION"
  (cd "$TALOS_EMULATOR_SRC" && CGO_ENABLED=0 go_build_to "$BIN/talos-emulator" "$GO_LDFLAGS_BASE" .)
  [[ -x "$BIN/talos-emulator" ]] || die "talos-emulator: the build wrote no binary"
  local out
  out="$("$BIN/talos-emulator" 2>&1 || true)" # no flags: prints its usage and exits 2
  grep -q "usage: talos-emulator" <<<"$out" || die "talos-emulator: the binary does not run: $out"
}

# ---------------------------------------------------------------------------------------------
# The real testbed node (testbed/src/node.rs, docs/TESTBED.md "A real node"): containerd, its
# runc shim and ctr. The module has no replace directives, so plain go install. CGO off and the
# same tags as containerd's Makefile minus what needs C (btrfs); version stamped like the Makefile.
install_containerd() {
  local v=$CONTAINERD_VERSION pkg=github.com/containerd/containerd/v2 ldflags
  ldflags="$GO_LDFLAGS_BASE -X $pkg/version.Version=$v -X $pkg/version.Package=$pkg"
  CGO_ENABLED=0 GOFLAGS="$GOFLAGS -tags=no_btrfs,urfave_cli_no_docs" \
    go_install_pinned "$pkg" "$v" "$ldflags" \
    "$pkg/cmd/containerd" "$pkg/cmd/containerd-shim-runc-v2" "$pkg/cmd/ctr"
  verify "containerd $pkg $v" "$BIN/containerd" --version
  verify "ctr $pkg $v" "$BIN/ctr" --version
  verify "$v" "$BIN/containerd-shim-runc-v2" -v
}

# Debian packages the node uses: runc (containerd's runtime; 1.1.5 works), the CNI plugins
# (/usr/lib/cni: bridge, host-local, loopback), iptables (the kubelet looks for it), skopeo
# (pushes OCI archives to the testbed registry), and, for the image items, umoci, jq and
# busybox-static. Not pinned: whatever bookworm ships.
install_node_deps() {
  local p
  apt_install runc containernetworking-plugins iptables skopeo umoci jq busybox-static
  for p in /usr/lib/cni/bridge /usr/lib/cni/host-local /usr/lib/cni/loopback; do
    [[ -x $p ]] || die "node-deps: $p is missing after installing containernetworking-plugins"
  done
  ln -sfn /usr/sbin/runc "$BIN/runc"
  ln -sfn /usr/bin/skopeo "$BIN/skopeo"
  verify "runc version" "$BIN/runc" --version
  verify "skopeo version" "$BIN/skopeo" --version
}

# distribution's registry (the OCI registry that Docker Hub and most private registries run).
# No replace directives; version stamped like its Makefile.
install_registry() {
  local v=$REGISTRY_VERSION pkg=github.com/distribution/distribution/v3
  go_install_pinned "$pkg" "$v" \
    "$GO_LDFLAGS_BASE -X $pkg/version.version=$v -X $pkg/version.mainpkg=$pkg" \
    "$pkg/cmd/registry"
  verify "$v" "$BIN/registry" --version
}

# oci_archive LAYOUT NAME TAG OUT: names the image in an umoci layout for containerd
# (io.containerd.image.name) and tars the layout into OUT: an OCI archive for
# `ctr images import` and for `skopeo copy oci-archive:OUT`.
oci_archive() {
  local layout=$1 name=$2 tag=$3 out=$4
  jq --arg n "$name:$tag" '.manifests[0].annotations["io.containerd.image.name"] = $n' \
    "$layout/index.json" >"$layout/index.json.tmp"
  mv -f "$layout/index.json.tmp" "$layout/index.json"
  umoci gc --layout "$layout"   # drop the blobs of the intermediate manifests
  mkdir -p "${out%/*}"
  tar -C "$layout" -cf "$out.tmp" .
  mv -f "$out.tmp" "$out"
  tar -tf "$out" | grep -q '^\./index\.json$' || die "no index.json in $out"
}

# The Debian bases of GuildNet's own images (agent: git, TLS roots, Node.js and code-server;
# operator: glibc only; orchestrator: the operator's + tailscaled built from TAILSCALE_VERSION),
# cached by scripts/images/build.sh under ~/.cache/guildnet/images keyed by their inputs, so the
# tests that build the images only add the binary layer. Needs the code-server item (its npm
# prefix goes into the agent image).
install_images() {
  [[ -d "$TESTBED_DIR/code-server/node_modules/code-server" ]] ||
    die "images: code-server is not installed (install.sh code-server)"
  GUILDNET_TESTBED_DIR="$TESTBED_DIR" bash "$REPO_ROOT/scripts/images/build.sh" --prepare --images agent,operator,orchestrator
}

# The pod sandbox ("pause") image. There is no registry.k8s.io here, so: a static Go program that
# sleeps until SIGTERM/SIGINT and reaps children (what a pause container does), packed as an OCI
# image with umoci. testbed/src/node.rs imports it into containerd and pins it as the sandbox.
install_pause() {
  local dir="$SRC/pause-$PAUSE_VERSION" tmp="$TESTBED_DIR/.tmp-pause" ref
  ref="$tmp/oci:$PAUSE_VERSION"
  apt_install umoci jq
  rm -rf "$dir" && mkdir -p "$dir"
  printf '// Generated by scripts/testbed/install.sh; do not edit.\nmodule guildnet.local/testbed/pause\n\ngo 1.26\n' >"$dir/go.mod"
  cat >"$dir/main.go" <<'GO'
// Generated by scripts/testbed/install.sh: the testbed's pod sandbox ("pause") process. It holds
// the pod's namespaces open, exits on SIGTERM or SIGINT, and reaps the zombies it inherits when
// the pod shares its PID namespace.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
GO
  (cd "$dir" && CGO_ENABLED=0 go_build_to "$dir/pause" "$GO_LDFLAGS_BASE" .)
  rm -rf "$tmp" && mkdir -p "$tmp"
  umoci init --layout "$tmp/oci"
  umoci new --image "$ref"
  umoci insert --image "$ref" "$dir/pause" /pause
  umoci config --image "$ref" --os linux --architecture "$(go env GOARCH)" \
    --config.entrypoint /pause --config.user 65535:65535
  oci_archive "$tmp/oci" "$PAUSE_IMAGE" "$PAUSE_VERSION" "$TESTBED_DIR/share/images/pause.oci.tar"
  rm -rf "$tmp"
}

# A tiny image for the node smoke tests: Debian's static busybox (sh, httpd, wget, ...) as the
# only layer, /bin/sh -> busybox. The tests push it to the testbed registry, so pods pull it.
install_busybox_image() {
  local tmp="$TESTBED_DIR/.tmp-busybox-image" tag=1 ref
  ref="$tmp/oci:$tag"
  apt_install busybox-static umoci jq
  rm -rf "$tmp" && mkdir -p "$tmp/root/bin" "$tmp/root/www" "$tmp/root/tmp"
  cp /bin/busybox "$tmp/root/bin/busybox"
  ln -s busybox "$tmp/root/bin/sh"
  echo "hello from the testbed busybox image" >"$tmp/root/www/index.html"
  umoci init --layout "$tmp/oci"
  umoci new --image "$ref"
  umoci insert --image "$ref" "$tmp/root" /
  umoci config --image "$ref" --os linux --architecture "$(go env GOARCH)" \
    --config.entrypoint /bin/sh --config.env PATH=/bin
  oci_archive "$tmp/oci" guildnet.local/testbed/busybox "$tag" "$TESTBED_DIR/share/images/busybox.oci.tar"
  rm -rf "$tmp"
}

# The agents' tailscale sidecar image for the real node (issue 22): what tailscale/tailscale is
# (containerboot as the entrypoint, tailscale and tailscaled on PATH), built from the pinned
# tailscale source (the Docker Hub image cannot be pulled here). Static Go binaries only.
install_tailscale_image() {
  local tmp="$TESTBED_DIR/.tmp-tailscale-image" ref short ldflags
  ref="$tmp/oci:$TAILSCALE_VERSION"
  short="${TAILSCALE_VERSION#v}"
  ldflags="$GO_LDFLAGS_BASE -X tailscale.com/version.shortStamp=$short -X tailscale.com/version.longStamp=$short-guildnet-testbed"
  apt_install umoci jq file
  CGO_ENABLED=0 go_install_pinned tailscale.com "$TAILSCALE_VERSION" "$ldflags" tailscale.com/cmd/containerboot
  rm -rf "$tmp" && mkdir -p "$tmp/root/usr/local/bin" "$tmp/root/tmp" "$tmp/root/var/lib/tailscale"
  # Static builds for the image (the testbed's own tailscale/tailscaled link glibc, which the
  # image does not have); they are not installed into bin/.
  local p proxy
  proxy="file://$(go env GOMODCACHE)/cache/download,$(go env GOPROXY)"
  for p in tailscale tailscaled; do
    CGO_ENABLED=0 GOPROXY="$proxy" GOSUMDB="$(go env GOSUMDB)" GOBIN="$tmp/root/usr/local/bin" \
      go install -trimpath -ldflags="$ldflags" "tailscale.com/cmd/$p@$TAILSCALE_VERSION"
  done
  cp "$BIN/containerboot" "$tmp/root/usr/local/bin/"
  file "$tmp/root/usr/local/bin/"* | grep -v 'statically linked' && die "a binary of the tailscale image is not static"
  chmod 1777 "$tmp/root/tmp"
  umoci init --layout "$tmp/oci"
  umoci new --image "$ref"
  umoci insert --image "$ref" "$tmp/root" /
  umoci config --image "$ref" --os linux --architecture "$(go env GOARCH)" \
    --config.entrypoint /usr/local/bin/containerboot --config.env PATH=/usr/local/bin:/bin
  oci_archive "$tmp/oci" guildnet.local/testbed/tailscale "$TAILSCALE_VERSION" "$TESTBED_DIR/share/images/tailscale.oci.tar"
  rm -rf "$tmp"
}

# Installs Debian packages that are not installed yet (apt-get update at most once per run).
apt_install() { # apt_install PKG...
  local missing=() p sudo=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [[ ${#missing[@]} -gt 0 ]] || return 0
  [[ $(id -u) -eq 0 ]] || sudo=(sudo)
  if [[ ! -e "$APT_UPDATED_MARK" ]]; then
    "${sudo[@]}" apt-get update
    touch "$APT_UPDATED_MARK"
  fi
  log "apt-get install ${missing[*]}"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
}

# ---------------------------------------------------------------------------------------------
# code-server from npm. Its postinstall runs `npm install` in lib/vscode, which builds native
# modules with node-gyp against the local Node headers (kerberos needs libkrb5-dev), and
# @vscode/ripgrep's postinstall downloads rg from GitHub, which cannot work here. So:
#  1. npm install --ignore-scripts (unpacks code-server and its own dependencies only);
#  2. seed @vscode/ripgrep's download cache ($TMPDIR/vscode-ripgrep-cache-<pkg version>/
#     ripgrep-<rg tag>-<target>.tar.gz, which it uses instead of downloading) with Debian's rg
#     (ripgrep 13.0.0, the same upstream version as the v13.0.0-N prebuilt it wants);
#  3. npm rebuild: runs every install script (argon2's node-gyp build, code-server's postinstall).
# Root needs npm_config_unsafe_perm=true, or code-server's postinstall refuses to run; node-pty's
# postinstall runs `npx node-gyp ...`, which a user npmrc with `yes=false` cancels, hence
# npm_config_yes=true.
install_code_server() {
  local prefix="$TESTBED_DIR/code-server" tmp rgpkg rgtag rgtarget rgcache
  apt_install g++ make python3 pkg-config libkrb5-dev ripgrep
  rm -rf "$prefix" && mkdir -p "$prefix"
  tmp="$TESTBED_DIR/.tmp-code-server"
  rm -rf "$tmp" && mkdir -p "$tmp/pack"
  npm install --prefix "$prefix" --no-audit --no-fund --omit=dev --ignore-scripts "code-server@$CODE_SERVER_VERSION"

  rgpkg="$(node -e '
    const s = require(process.argv[1]);
    const p = (s.packages || {})["node_modules/@vscode/ripgrep"] || (s.dependencies || {})["@vscode/ripgrep"];
    if (p) console.log(p.version);' "$prefix/node_modules/code-server/lib/vscode/npm-shrinkwrap.json")"
  if [[ -n "$rgpkg" ]]; then
    (cd "$tmp/pack" && npm pack --silent "@vscode/ripgrep@$rgpkg" >/dev/null && tar xzf ./*.tgz)
    rgtag="$(sed -n "s/^const VERSION = '\(.*\)';.*/\1/p" "$tmp/pack/package/lib/postinstall.js")"
    case "$(uname -m)" in
      x86_64) rgtarget=x86_64-unknown-linux-musl ;;
      aarch64) rgtarget=aarch64-unknown-linux-musl ;;
      *) die "code-server: no ripgrep target for $(uname -m)" ;;
    esac
    [[ -n "$rgtag" ]] || die "code-server: could not read the ripgrep tag from @vscode/ripgrep@$rgpkg"
    rgcache="$tmp/vscode-ripgrep-cache-$rgpkg"
    mkdir -p "$rgcache/rg"
    cp /usr/bin/rg "$rgcache/rg/rg"
    tar czf "$rgcache/ripgrep-$rgtag-$rgtarget.tar.gz" -C "$rgcache/rg" rg
    log "code-server: seeded @vscode/ripgrep@$rgpkg's cache with Debian's rg as ripgrep-$rgtag-$rgtarget"
  fi

  (
    cd "$prefix"
    TMPDIR="$tmp" npm_config_unsafe_perm=true npm_config_yes=true npm rebuild --foreground-scripts
  )
  rm -rf "$tmp"
  [[ -x "$prefix/node_modules/code-server/lib/vscode/node_modules/@vscode/ripgrep/bin/rg" ]] ||
    die "code-server: @vscode/ripgrep/bin/rg is missing after the install"
  ln -sfn ../code-server/node_modules/.bin/code-server "$BIN/code-server"
  # code-server writes a default config.yaml on every start: keep it out of the user's ~/.config.
  mkdir -p "$tmp"
  verify "$CODE_SERVER_VERSION" env XDG_CONFIG_HOME="$tmp" XDG_DATA_HOME="$tmp" "$BIN/code-server" --version
  rm -rf "$tmp"
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL server from Debian (postgresql-$POSTGRES_MAJOR), for the PostgreSQL state store's
# tests. Only the binaries are used: guildnet-testbed runs initdb in a temp dir and starts its
# own server on a loopback port as an unprivileged system user (PostgreSQL refuses root), so the
# package's own cluster (if Debian created one) is stopped and left alone.
install_postgres() {
  local v=$POSTGRES_MAJOR pgbin
  pgbin="/usr/lib/postgresql/$v/bin"
  if [[ ! -x "$pgbin/postgres" ]]; then
    apt_install "postgresql-$v"
  fi
  # Debian's postinst may start a cluster on port 5432; the testbed does not need it.
  if command -v pg_ctlcluster >/dev/null 2>&1 && pg_lsclusters -h 2>/dev/null | grep -q "^$v main .* online"; then
    pg_ctlcluster "$v" main stop || true
  fi
  for b in initdb postgres pg_isready psql pg_ctl; do
    ln -sfn "$pgbin/$b" "$BIN/$b"
  done
  verify "(PostgreSQL) $v" "$BIN/postgres" --version
}

# ---------------------------------------------------------------------------------------------
# nginx from Debian (package `nginx`: /usr/sbin/nginx), the load balancer in front of several
# orchestrator replicas in the chaos test. The .deb is downloaded with `apt-get download` and
# unpacked with `dpkg-deb -x` into the cache: no root-only step (no dpkg install, no postinst,
# no service, nothing under /etc or /var). guildnet-testbed writes its own config and starts it
# with -p/-c/-e on loopback. Runtime libraries (libc, libcrypt, libpcre2, libssl3, zlib) are the
# base system's; `nginx -v` below fails if one is missing. Not pinned: whatever bookworm ships.
install_nginx() {
  local dir="$TESTBED_DIR/nginx" tmp
  tmp="$(mktemp -d "$TESTBED_DIR/.tmp-nginx.XXXXXX")"
  if [[ $(id -u) -eq 0 && ! -e "$APT_UPDATED_MARK" ]]; then
    apt-get update && touch "$APT_UPDATED_MARK"
  fi
  # apt-get download writes into the current dir (as root, _apt may not enter a private
  # temp dir: the download then runs unsandboxed, which apt warns about and allows).
  (cd "$tmp" && apt-get download nginx)
  rm -rf "$dir" && mkdir -p "$dir"
  dpkg-deb -x "$tmp"/nginx_*.deb "$dir"
  rm -rf "$tmp"
  ln -sfn "$dir/usr/sbin/nginx" "$BIN/nginx"
  verify "nginx/" "$BIN/nginx" -v
}

# ---------------------------------------------------------------------------------------------
# chromium + chromedriver from Debian (apt). Not pinned: whatever Debian ships.
install_chromium() {
  if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
    log "chromium: /usr/bin/chromium and /usr/bin/chromedriver already present"
  else
    apt_install chromium chromium-driver
  fi
  ln -sfn /usr/bin/chromium "$BIN/chromium"
  ln -sfn /usr/bin/chromedriver "$BIN/chromedriver"
  verify "Chromium" "$BIN/chromium" --version
  verify "ChromeDriver" "$BIN/chromedriver" --version
}

# ---------------------------------------------------------------------------------------------
# gitea: a real git forge (HTTP git + the REST API for pull requests) for the agent's delivery
# tests. code.gitea.io/gitea's go.mod has replace directives, so a wrapper module (like
# talosctl's) builds its root package (main.go) with the tags of its Makefile's release build
# minus `bindata`: `sqlite sqlite_unlock_notify` (mattn/go-sqlite3, cgo). `bindata` embeds
# public/, templates/ and options/ after `go generate` in a writable source tree, and public/
# would still lack the frontend (built with pnpm + vite, not part of the module zip). Without
# it Gitea reads templates/, options/ and public/ from STATIC_ROOT_PATH, so those directories
# are copied from the module to share/gitea/ (the REST API and git over HTTP need only options/
# for repository init and locales; templates/ for mail and a few API answers).
# v1.27.3 on the proxy declares its module path as gitea.dev (not code.gitea.io/gitea), so it
# cannot be required under the path it is served at; v1.26.0 is the newest usable tag.
install_gitea() {
  local v=$GITEA_VERSION dir gomod srcdir repl share="$TESTBED_DIR/share/gitea" d
  dir="$SRC/gitea-$v"
  gomod="$(go_mod_field "code.gitea.io/gitea@$v" GoMod)"
  srcdir="$(go_mod_field "code.gitea.io/gitea@$v" Dir)"
  [[ -f "$gomod" && -d "$srcdir" ]] || die "could not download code.gitea.io/gitea@$v"
  repl="$(go_mod_replaces "$gomod")"
  if grep -q '=> \.' <<<"$repl"; then die "unhandled local replace in $gomod: $repl"; fi
  go_wrapper "$dir" code.gitea.io/gitea "$v" "$repl" code.gitea.io/gitea
  (cd "$dir" && CGO_ENABLED=1 go build -trimpath -tags 'sqlite sqlite_unlock_notify' \
    -ldflags="$GO_LDFLAGS_BASE -X main.Version=${v#v} -X 'main.Tags=sqlite sqlite_unlock_notify'" \
    -o "$BIN/gitea.tmp" code.gitea.io/gitea && mv -f "$BIN/gitea.tmp" "$BIN/gitea")
  rm -rf "$share.tmp" && mkdir -p "$share.tmp"
  for d in options templates public; do cp -r "$srcdir/$d" "$share.tmp/$d"; done
  chmod -R u+w "$share.tmp"
  rm -rf "$share" && mv "$share.tmp" "$share"
  verify "gitea version ${v#v} " "$BIN/gitea" --version
}

# ---------------------------------------------------------------------------------------------
# aider: a real open-source coding CLI (PyPI aider-chat) that the agent runs as its runner in
# the tests, against a local OpenAI-compatible endpoint the test serves. Installed with pip into
# its own virtualenv (aider-chat pins its whole dependency tree; it supports Python 3.10-3.12).
# pip's cache (~/.cache/pip) makes a reinstall cheap.
install_aider() {
  local venv="$TESTBED_DIR/aider" py="" c
  for c in python3 python3.12 python3.11 python3.10; do
    if command -v "$c" >/dev/null 2>&1 &&
      "$c" -c 'import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 12) else 1)' 2>/dev/null; then
      py="$c"; break
    fi
  done
  [[ -n "$py" ]] || die "aider: needs Python 3.10, 3.11 or 3.12 (aider-chat's requires-python)"
  rm -rf "$venv"
  "$py" -m venv "$venv"
  "$venv/bin/pip" install --no-input --disable-pip-version-check --quiet "aider-chat==$AIDER_VERSION"
  ln -sfn ../aider/bin/aider "$BIN/aider"
  verify "aider ${AIDER_VERSION}" env HOME="$TESTBED_DIR" "$BIN/aider" --version
}

# ---------------------------------------------------------------------------------------------
main() {
  local force=0 items=() a item
  for a in "$@"; do
    case "$a" in
      -h | --help) usage; exit 0 ;;
      -f | --force) force=1 ;;
      --list)
        for item in "${ALL_ITEMS[@]}"; do printf '%-12s %s\n' "$item" "$(item_version "$item")"; done
        exit 0 ;;
      all) items+=("${ALL_ITEMS[@]}") ;;
      -*) die "unknown option $a (see --help)" ;;
      *) item_version "$a" >/dev/null || die "unknown item '$a'; items: ${ALL_ITEMS[*]}"; items+=("$a") ;;
    esac
  done
  [[ ${#items[@]} -gt 0 ]] || items=("${ALL_ITEMS[@]}")

  mkdir -p "$BIN" "$STAMPS" "$SRC" "$LOGS"
  cp -f "$SCRIPT_DIR/versions.env" "$TESTBED_DIR/versions.env"

  # Repo-local, git-ignored symlink to the cache (CI clones anew, the cache outlives clones).
  mkdir -p "$REPO_ROOT/.cache"
  if [[ -e "$REPO_ROOT/.cache/testbed" && ! -L "$REPO_ROOT/.cache/testbed" ]]; then
    log "warning: $REPO_ROOT/.cache/testbed exists and is not a symlink; leaving it alone"
  else
    ln -sfn "$TESTBED_DIR" "$REPO_ROOT/.cache/testbed"
  fi

  # One run at a time per cache (a developer and CI may share the machine).
  exec 9>"$TESTBED_DIR/.lock"
  if ! flock -n 9; then log "waiting for another install.sh run to finish..."; flock 9; fi

  rm -rf "$TESTBED_DIR"/.gobin.* "$TESTBED_DIR"/.tmp-*   # left by an interrupted run

  APT_UPDATED_MARK="$(mktemp)" && rm -f "$APT_UPDATED_MARK"
  export APT_UPDATED_MARK
  trap 'rm -f "$APT_UPDATED_MARK"' EXIT

  log "cache: $TESTBED_DIR ($(go version 2>/dev/null || echo 'go: not found'))"
  # The Rust test support runs `openssl genrsa` for the API server's service-account key.
  command -v openssl >/dev/null 2>&1 || apt_install openssl
  local start_all=$SECONDS failed=() summary=() item t0 rc status
  for item in "${items[@]}"; do
    t0=$SECONDS
    if [[ $force -eq 0 ]] && is_installed "$item"; then
      summary+=("$(printf '%-12s %-10s %5ss  skipped (stamp ok)' "$item" "$(item_version "$item")" $((SECONDS - t0)))")
      continue
    fi
    log "$item $(item_version "$item"): installing (log: $LOGS/$item.log)"
    rm -f "$STAMPS/$item"
    # Subshell with errexit, not in a conditional context (which would disable set -e).
    set +e
    (
      set -euo pipefail
      "install_${item//-/_}" 2>&1 | tee "$LOGS/$item.log" | sed -u 's/^/    | /'
    )
    rc=$?
    set -e
    if [[ $rc -eq 0 ]]; then
      stamp_value "$item" >"$STAMPS/$item"
      status="installed"
    else
      failed+=("$item")
      status="FAILED (rc=$rc, see $LOGS/$item.log)"
    fi
    summary+=("$(printf '%-12s %-10s %5ss  %s' "$item" "$(item_version "$item")" $((SECONDS - t0)) "$status")")
    log "$item: $status in $((SECONDS - t0))s"
  done

  log "summary (total $((SECONDS - start_all))s, cache $(du -sh "$TESTBED_DIR" 2>/dev/null | cut -f1)):"
  printf '    %s\n' "${summary[@]}"
  if [[ ${#failed[@]} -gt 0 ]]; then
    die "failed: ${failed[*]}"
  fi
}

main "$@"
