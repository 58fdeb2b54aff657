#!/usr/bin/env bash
# The project's test command (README "Set-up", step 2). Runs every test in the workspace,
# including the end-to-end tests that start the real binaries and upstream servers on loopback,
# then the Python package's pytest suite (and the Python example) against a real orchestrator.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/guildnet/target}"
# The real upstream servers the integration tests start (kube-apiserver, etcd, kwok, headscale,
# tailscaled, code-server, chromium, talosctl and the Talos node emulator, and for the real node containerd, kubelet, the
# registry and the pause and busybox images; helm for the Helm chart). Skips what is installed: about 0.2 s when warm,
# 17 to 91 min on a fresh machine (2 cores; the high end shared with other builds). See docs/TESTBED.md.
bash scripts/testbed/install.sh
cargo test --workspace --all-features --locked "$@"
# Python bindings: a cached virtualenv, `pip install ./bindings/python`, pytest. Skip with
# GUILDNET_SKIP_PYTHON=1 (e.g. while iterating on Rust only).
if [ "${GUILDNET_SKIP_PYTHON:-0}" != 1 ]; then
  bash scripts/python-test.sh
fi
