#!/usr/bin/env bash
# GuildNet's benchmarks in one command: runs the schedule bench and the suite bench (agents at
# scale, idle agent RSS), optionally the operator bench, and prints one table of figures and
# their ratio to the targets (ratio <= 1 meets it). See docs/BENCHMARKS.md.
#
#   bash scripts/bench.sh                  # default: a few minutes
#   bash scripts/bench.sh --full           # schedule bench at full length
#   bash scripts/bench.sh --operator       # also the operator bench (1,000 AgentTasks, ~10 min)
#   bash scripts/bench.sh --agents 2000    # simulated agent count (default 10000)
#   bash scripts/bench.sh --secs 60        # steady heartbeat seconds (default 30)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/guildnet/target}"

quick="--quick"
operator=0
suite_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --full) quick="" ;;
    --operator) operator=1 ;;
    --agents|--secs|--ramp-secs|--tasks) suite_args+=("$1" "$2"); shift ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
echo "date: $(date -u +%Y-%m-%dT%H:%MZ), commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"

cargo bench -p guildnet-bin --bench schedule --locked -- $quick | tee "$out/schedule.txt"
agent_args=()
for ((i = 0; i < ${#suite_args[@]}; i += 2)); do
  [ "${suite_args[i]}" = "--tasks" ] || agent_args+=("${suite_args[i]}" "${suite_args[i+1]}")
done
cargo bench -p guildnet-bin --bench suite --locked -- "${agent_args[@]}" | tee "$out/suite.txt"
if [ "$operator" = 1 ]; then
  op_args=()
  for ((i = 0; i < ${#suite_args[@]}; i += 2)); do
    [ "${suite_args[i]}" = "--tasks" ] && op_args+=(--tasks "${suite_args[i+1]}")
  done
  cargo bench -p guildnet-bin --bench operator --locked -- "${op_args[@]}" | tee "$out/operator.txt"
fi

echo
echo "================================ GuildNet benchmarks ================================"
printf '%-44s %10s %-6s %14s %s\n' "figure" "value" "unit" "target" "ratio"
cat "$out"/schedule.txt "$out"/suite.txt | grep -E ' ratio +[0-9.]+ \(' || true
if [ "$operator" = 1 ]; then
  grep -iE 'ratio|RSS|Running|children' "$out/operator.txt" | sed 's/^/operator: /' || true
else
  echo "operator (1,000 AgentTasks vs bare client): not run; bash scripts/bench.sh --operator (docs/BENCHMARKS.md has the last figures)"
fi
grep -h 'SHORTFALL' "$out"/*.txt || true
