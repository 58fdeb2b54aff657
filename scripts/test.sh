#!/usr/bin/env bash
# The project's test command (README "Set-up", step 2). Runs every test in the workspace,
# including the end-to-end tests that start the real binaries on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/guildnet/target}"
cargo test --workspace --all-features --locked "$@"
