#!/usr/bin/env bash
# GuildNet's benchmarks in one command: the schedule bench, the suite bench (agents at scale,
# idle agent RSS), the dashboard's SSE fan-out, the editor proxy against direct and nginx, and
# the mesh timings; optionally the operator bench. Prints one table of figures and their ratio
# to the targets (ratio <= 1 meets it). See docs/BENCHMARKS.md.
#
#   bash scripts/bench.sh                  # default: about 8 minutes after the release build
#   bash scripts/bench.sh --quick          # the same (the schedule bench's short mode)
#   bash scripts/bench.sh --full           # schedule bench at full length (3 rounds of 5 s)
#   bash scripts/bench.sh --only schedule  # GuildNet beside the in-memory reference handler
#   bash scripts/bench.sh --baseline-exe P # also another build of the schedule bench (before/after)
#   bash scripts/bench.sh --operator       # also the operator bench (1,000 AgentTasks, ~10 min)
#   bash scripts/bench.sh --pods           # also schedule -> claimed on real pods (real node, ~6 min):
#                                          # cold (image pulled), image cached, warm pool
#   bash scripts/bench.sh --only pods --cold 0 --pool 50   # only image cached + warm pool
#   bash scripts/bench.sh --only replicas  # SQLite 1 replica vs PostgreSQL 1 and 2 replicas (behind
#                                          # nginx): schedule, 10,000-agent claim/heartbeat, failover
#   bash scripts/bench.sh --only suite     # one bench: schedule, suite, replicas, sse, editor, mesh, pods
#   bash scripts/bench.sh --agents 2000    # simulated agent count (default 10000)
#   bash scripts/bench.sh --secs 60        # steady heartbeat seconds (default 30)
#   bash scripts/bench.sh --keep-alive     # simulated agents keep their connections
#
# The editor and mesh benches use the testbed's code-server, headscale and tailscaled
# (scripts/testbed/install.sh); the editor bench's nginx column needs Debian's nginx-light.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/guildnet/target}"

quick="--quick"
operator=0
pods=0
only=""
keep_alive=()
suite_args=()
schedule_args=()
pod_extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --full) quick="" ;;
    --quick) quick="--quick" ;;
    --baseline-exe) schedule_args+=(--baseline-exe "$2"); shift ;;
    --operator) operator=1 ;;
    --pods) pods=1 ;;
    --only) only="$2"; shift ;;
    --keep-alive) keep_alive=(--keep-alive) ;;
    --agents|--secs|--ramp-secs|--tasks) suite_args+=("$1" "$2"); shift ;;
    --cold|--pool) pod_extra+=("$1" "$2"); shift ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
want() { [ -z "$only" ] || [ "$only" = "$1" ]; }
# The schedule bench needs no upstream server; the others need the testbed's.
if [ "$only" != schedule ]; then bash scripts/testbed/install.sh >/dev/null; fi

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
echo "date: $(date -u +%Y-%m-%dT%H:%MZ), commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"

# One feature set for every bench (as CI's tests use), so nothing is rebuilt between them.
bench() { cargo bench --workspace --all-features --locked --bench "$@"; }
touch "$out/schedule.txt" "$out/suite.txt" "$out/replicas.txt" "$out/sse.txt" "$out/editor.txt" "$out/mesh.txt" "$out/pods.txt"
if want schedule; then bench schedule -- $quick "${schedule_args[@]}" | tee "$out/schedule.txt"; fi
agent_args=()
for ((i = 0; i < ${#suite_args[@]}; i += 2)); do
  [ "${suite_args[i]}" = "--tasks" ] || agent_args+=("${suite_args[i]}" "${suite_args[i+1]}")
done
if want suite; then bench suite -- "${agent_args[@]}" "${keep_alive[@]}" | tee "$out/suite.txt"; fi
if want replicas; then bench replicas -- "${agent_args[@]}" | tee "$out/replicas.txt"; fi
if want sse; then bench sse | tee "$out/sse.txt"; fi
if want editor; then bench editor_proxy | tee "$out/editor.txt"; fi
if want mesh; then bench mesh | tee "$out/mesh.txt"; fi
if [ "$pods" = 1 ] || [ "$only" = pods ]; then
  pod_args=()
  for ((i = 0; i < ${#suite_args[@]}; i += 2)); do
    [ "${suite_args[i]}" = "--tasks" ] && pod_args+=(--tasks "${suite_args[i+1]}")
  done
  bench pod_start -- "${pod_args[@]}" "${pod_extra[@]}" | tee "$out/pods.txt"
fi
if [ "$operator" = 1 ]; then
  op_args=()
  for ((i = 0; i < ${#suite_args[@]}; i += 2)); do
    [ "${suite_args[i]}" = "--tasks" ] && op_args+=(--tasks "${suite_args[i+1]}")
  done
  bench operator -- "${op_args[@]}" | tee "$out/operator.txt"
fi

echo
echo "================================ GuildNet benchmarks ================================"
# The schedule bench's side-by-side table (reference handler | GuildNet | ratio).
awk '/^figure +reference/ {on=1} on && /^$/ {exit} on' "$out/schedule.txt"
printf '%-44s %10s %-6s %14s %s\n' "figure" "value" "unit" "target" "ratio"
cat "$out"/schedule.txt "$out"/suite.txt "$out"/replicas.txt "$out"/sse.txt "$out"/editor.txt "$out"/pods.txt |
  grep -E ' ratio +[0-9.]+ \(' || true
grep -E 'create -> first node online|node start -> its HTTP service' "$out/mesh.txt" | sed 's/^/mesh: /' || true
if [ "$pods" = 0 ] && [ "$only" != pods ]; then
  echo "pods (schedule -> claimed on real pods: cold, image cached, warm pool): not run; bash scripts/bench.sh --pods (docs/BENCHMARKS.md has the last figures)"
fi
if [ "$operator" = 1 ]; then
  grep -iE 'ratio|RSS|Running|children' "$out/operator.txt" | sed 's/^/operator: /' || true
else
  echo "operator (1,000 AgentTasks vs bare client): not run; bash scripts/bench.sh --operator (docs/BENCHMARKS.md has the last figures)"
fi
grep -h 'SHORTFALL' "$out"/*.txt || true
