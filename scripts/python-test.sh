#!/usr/bin/env bash
# Python bindings and the Python example: a virtualenv with maturin + pytest, one abi3 wheel
# built with `maturin build` and installed from the file, the orchestrator and agent binaries, then pytest (bindings/python/tests,
# which also runs examples/python/batch.py) against a real orchestrator on loopback.
# Idempotent; fast when warm: the venv, pip's cache and the extension's build dir live under
# ~/.cache/guildnet, and the package is reinstalled only when its sources changed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
cache="${GUILDNET_CACHE:-$HOME/.cache/guildnet}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
export PIP_CACHE_DIR="${PIP_CACHE_DIR:-$cache/pip}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
venv="${GUILDNET_PY_VENV:-$cache/venv-python}"
python="${PYTHON:-python3}"

step() { echo "== python-test (${SECONDS}s): $*"; }

# 1. Virtualenv (recreated when broken, e.g. the interpreter it was made from is gone).
if ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
  step "creating virtualenv $venv"
  # Only ever remove something that is a (broken) virtualenv.
  if [ -e "$venv" ] && [ ! -f "$venv/pyvenv.cfg" ]; then
    echo "python-test: $venv exists and is not a virtualenv; set GUILDNET_PY_VENV elsewhere" >&2
    exit 1
  fi
  rm -rf "$venv"
  if ! "$python" -m venv "$venv"; then
    echo "python-test: '$python -m venv' failed: install Python's venv module (Debian: apt-get install python3-venv)" >&2
    exit 1
  fi
fi
py="$venv/bin/python"
# maturin's build backend runs the `maturin` executable: the venv's.
export PATH="$venv/bin:$PATH"
if ! "$py" -c 'import maturin, pytest' >/dev/null 2>&1 || ! "$venv/bin/maturin" --version >/dev/null 2>&1; then
  step "installing maturin and pytest"
  "$py" -m pip install --quiet 'maturin>=1.9.4,<2' 'pytest>=7,<10'
fi

# 2. The package, as a user without a Rust toolchain gets it: one abi3 wheel (CPython >= 3.9,
#    any minor version) built by maturin, installed with pip from the file, and tested below.
#    Its build depends on the bindings and on guildnet-core (and the CRD YAML); skip it when
#    none of them changed since the last install into this venv.
stamp="$venv/.guildnet-sources"
wheels="$cache/wheels"
sources_hash=$(
  find bindings/python/src bindings/python/python bindings/python/Cargo.toml \
       bindings/python/Cargo.lock bindings/python/pyproject.toml guildnet-core/src \
       guildnet-core/Cargo.toml deploy/crd.yaml Cargo.toml -type f 2>/dev/null \
    | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -d' ' -f1
)
if [ "$(cat "$stamp" 2>/dev/null)" != "$sources_hash" ] || ! "$py" -c 'import guildnet' >/dev/null 2>&1; then
  step "maturin build: the abi3 wheel"
  rm -rf "$wheels" && mkdir -p "$wheels"
  # The extension's own cargo target dir (it is not a workspace member), outside the clone so
  # a fresh clone reuses it and leaves no target/ behind.
  CARGO_TARGET_DIR="$cache/target-python" \
    "$venv/bin/maturin" build --quiet --release --locked -m bindings/python/Cargo.toml --out "$wheels"
  wheel=$(ls "$wheels"/guildnet-*.whl)
  case "$(basename "$wheel")" in
    *-cp39-abi3-*) ;;
    *) echo "python-test: $wheel is not an abi3 (cp39-abi3) wheel" >&2; exit 1 ;;
  esac
  step "pip install $(basename "$wheel")"
  "$py" -m pip install --quiet --force-reinstall --no-deps "$wheel"
  echo "$sources_hash" > "$stamp"
else
  step "guildnet is up to date in $venv ($(ls "$wheels"/guildnet-*.whl 2>/dev/null | xargs -r basename))"
fi
# The tests must run against the installed wheel, not the source tree.
"$py" -c 'import guildnet, sys; p = guildnet.__file__; sys.exit(0 if "site-packages" in p else "guildnet imported from " + p)'

# 3. The binaries the tests start. Built with the workspace's feature set (what `cargo test
#    --workspace --all-features` builds), so after scripts/test.sh's Rust tests nothing rebuilds.
step "building guildnet-orchestrator and guildnet-agent"
cargo build --locked -q --workspace --all-features --bins
export GUILDNET_BIN_DIR="$CARGO_TARGET_DIR/debug"

# 4. Tests (including examples/python/batch.py against the real orchestrator).
step "pytest"
cd "$root/bindings/python"
"$py" -m pytest -q -p no:cacheprovider "$@"
step "done"
