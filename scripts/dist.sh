#!/usr/bin/env bash
# Release binaries with their debug info kept beside them, the way distributions ship them.
#
#   scripts/dist.sh [OUT_DIR]                 # default: dist/
#   DIST_PROFILE=dev scripts/dist.sh OUT_DIR   # the same split on the dev build (a quick check)
#   DIST_NO_BUILD=1 ...                        # split binaries already built
#
# Builds the `release-debug` profile (the release profile's code plus DWARF, see Cargo.toml),
# then for each binary writes:
#   OUT_DIR/<bin>         without DWARF (symbol table kept), with a .gnu_debuglink to
#   OUT_DIR/<bin>.debug   the DWARF alone (objcopy --only-keep-debug, zlib-compressed)
# gdb and perf find the .debug file next to the binary (or under /usr/lib/debug/.build-id/ by the
# build id printed below, or through debuginfod). The last step checks it: gdb resolves a
# function of the shipped binary to its source file through the .debug file.
# `cargo build --release` alone gives binaries of the same size without the .debug files.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-dist}"
profile="${DIST_PROFILE:-release-debug}"
target="${CARGO_TARGET_DIR:-$PWD/target}"
profile_dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
bins=(guildnet guildnet-orchestrator guildnet-agent guildnet-operator guildnet-dashboard)

for tool in objcopy readelf; do
  command -v "$tool" >/dev/null || { echo "dist: $tool is missing (Debian: apt-get install binutils)" >&2; exit 1; }
done

args=()
for b in "${bins[@]}"; do args+=(--bin "$b"); done
if [ -z "${DIST_NO_BUILD:-}" ]; then
  cargo build --locked --profile "$profile" -p guildnet-bin "${args[@]}"
fi

mkdir -p "$out"
printf '%-24s %12s %12s %12s  %s\n' BINARY WITH-DWARF SHIPPED .debug BUILD-ID
for b in "${bins[@]}"; do
  src="$target/$profile_dir/$b"
  rm -f "$out/$b" "$out/$b.debug"
  objcopy --only-keep-debug --compress-debug-sections=zlib "$src" "$out/$b.debug"
  # --add-gnu-debuglink records the .debug file's name and CRC; run it from OUT_DIR so the
  # link is the bare file name (gdb looks next to the binary).
  (cd "$out" && objcopy --strip-debug --add-gnu-debuglink="$b.debug" "$src" "$b")
  chmod 0755 "$out/$b"
  chmod 0644 "$out/$b.debug"
  if readelf -S "$out/$b" | grep -q '\.debug_info'; then
    echo "dist: $out/$b still has .debug_info" >&2
    exit 1
  fi
  id=$(readelf -n "$out/$b" | awk '/Build ID/ {print $3}')
  printf '%-24s %12s %12s %12s  %s\n' "$b" "$(stat -c %s "$src")" "$(stat -c %s "$out/$b")" \
    "$(stat -c %s "$out/$b.debug")" "${id:-none}"
done

if command -v gdb >/dev/null && command -v nm >/dev/null; then
  # The symbol table stays in the shipped binary; the source line comes from the .debug file.
  addr=$(nm "$out/guildnet-agent" | awk '/guildnet_agent4main/ && !found {print $1; found = 1}')
  [ -n "$addr" ] || { echo "dist: no guildnet_agent::main symbol in $out/guildnet-agent" >&2; exit 1; }
  line=$(gdb -nx -batch -ex "info line *0x$addr" "$out/guildnet-agent" 2>&1 | grep '^Line' || true)
  if ! grep -q 'agent.rs' <<<"$line"; then
    echo "dist: gdb did not find the source line of guildnet_agent::main through $out/guildnet-agent.debug" >&2
    exit 1
  fi
  echo "dist: gdb, through guildnet-agent.debug: ${line%% starts at*}"
fi
