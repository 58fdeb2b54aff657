#!/usr/bin/env bash
# cargo-fuzz over GuildNet's parsers and validators (fuzz/fuzz_targets): names, parse_json,
# context, sse. Needs the nightly toolchain (rustup) and cargo-fuzz (installed from crates.io
# when missing). Not part of scripts/test.sh: a fuzz run is open-ended.
#
#   bash scripts/fuzz.sh             # 45 s per target
#   SECONDS_PER_TARGET=600 bash scripts/fuzz.sh names parse_json
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR_FUZZ:-$HOME/.cache/guildnet/target-fuzz}"
per="${SECONDS_PER_TARGET:-45}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(names parse_json context sse)
for t in "${targets[@]}"; do
  echo "== $t (${per}s)"
  cargo +nightly fuzz run "$t" -- -max_total_time="$per"
done
