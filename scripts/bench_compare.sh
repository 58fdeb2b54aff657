#!/usr/bin/env bash
# Two builds of the benches side by side in one run (before/after a change), on the same
# machine at the same time: the suite bench (N simulated agents: claim and heartbeat latency,
# orchestrator RSS) and the dashboard's SSE fan-out, alternating the two builds run after run
# (base, new, then new, base, ...), then the schedule bench once with the base build as its
# `--baseline-exe` (it rotates the servers itself). Prints one table: per figure the median and
# range of each build and the ratio new/base (above 1 is worse for every figure here).
#
#   bash scripts/bench_compare.sh BASE_DIR NEW_DIR [--runs 3] [--start 1] [--agents 10000]
#                                 [--secs 30] [--ramp-secs 10] [--schedule-rounds 2] [--no-schedule]
#
# BASE_DIR and NEW_DIR each hold the release bench executables named `suite`, `sse` and
# `schedule`, copied from `target/release/deps/<name>-<hash>` after
# `cargo bench -p guildnet-bin -p guildnet-dashboard --all-features --bench schedule --bench suite
# --bench sse --no-run` in each checkout. The suite bench's last figure (idle agent RSS) starts
# the `guildnet-agent` its build's target dir held at build time, so it is left out unless both
# builds had target dirs of their own. Each run's output goes to $BENCH_COMPARE_OUT (default: a
# temp dir, printed); the table covers every run found there, so `--start 4` with the same
# directory adds runs 4, 5, ... to earlier ones. The schedule bench runs in its quick mode with
# `--schedule-rounds` rounds and is stopped after its side-by-side table (the phases after it
# are GuildNet alone).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { sed -n 2,18p "$0" >&2; exit 2; }
base="$(cd "$1" && pwd)"
new="$(cd "$2" && pwd)"
shift 2
runs=3
start=1
rounds=2
schedule=1
suite_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs="$2"; shift ;;
    --start) start="$2"; shift ;;
    --schedule-rounds) rounds="$2"; shift ;;
    --agents|--secs|--ramp-secs) suite_args+=("$1" "$2"); shift ;;
    --no-schedule) schedule=0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
for d in "$base" "$new"; do
  for b in suite sse; do [ -x "$d/$b" ] || { echo "missing $d/$b" >&2; exit 2; }; done
done
out="${BENCH_COMPARE_OUT:-$(mktemp -d)}"
mkdir -p "$out"
echo "outputs in $out"
echo "machine: $(nproc) cores; date: $(date -u +%Y-%m-%dT%H:%MZ)"

one() { # build-name dir bench run
  local log="$out/$3-$1-$4.txt"
  echo "load $(cut -d' ' -f1-3 /proc/loadavg)" >"$log"
  case "$3" in
    suite) "$2/suite" "${suite_args[@]}" >>"$log" 2>&1 ;;
    sse) "$2/sse" >>"$log" 2>&1 ;;
  esac
  echo "load $(cut -d' ' -f1-3 /proc/loadavg)" >>"$log"
  echo "  $3 $1 run $4 done ($(date -u +%H:%M:%S), load $(cut -d' ' -f1 /proc/loadavg))"
}
for ((i = start; i < start + runs; i++)); do
  for bench in suite sse; do
    if ((i % 2)); then one base "$base" "$bench" "$i"; one new "$new" "$bench" "$i"
    else one new "$new" "$bench" "$i"; one base "$base" "$bench" "$i"; fi
  done
done

python3 - "$out" <<'PY'
import re, statistics, sys
from pathlib import Path

out = Path(sys.argv[1])
ROW = re.compile(r"^(.{44}) +(-?[0-9.]+|NaN|nan) (\S+) +target ")
DUR = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1e3}

def dur_ms(text):
    m = re.match(r"([0-9.]+)(ns|µs|us|ms|s)$", text)
    return float(m.group(1)) * DUR[m.group(2)] if m else float("nan")

def figures(path):
    figs, loads = {}, []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("load "):
            loads.append(float(line.split()[1]))
        m = ROW.match(line)
        if m and "idle agent RSS" not in m.group(1):
            figs[f"{m.group(1).strip()} ({m.group(3)})"] = float(m.group(2))
        m = re.search(r"delivery latency .*: p50 (\S+)\s+p99 (\S+)", line)
        if m:
            figs["SSE delivery p50 (ms)"] = dur_ms(m.group(1))
    return figs, loads

print(f"\n{'bench: figure':<52} {'base median [range]':>26} {'new median [range]':>26} {'new/base':>8}")
for bench in ("suite", "sse"):
    per = {"base": {}, "new": {}}
    loads = []
    for who in per:
        for f in sorted(out.glob(f"{bench}-{who}-*.txt")):
            figs, l = figures(f)
            loads += l
            for k, v in figs.items():
                per[who].setdefault(k, []).append(v)
    for k in per["new"]:
        b, n = per["base"].get(k, []), per["new"][k]
        if not b:
            continue
        cell = lambda v: f"{statistics.median(v):.2f} [{min(v):.2f}-{max(v):.2f}]"
        ratio = statistics.median(n) / statistics.median(b) if statistics.median(b) else float("nan")
        print(f"{bench + ': ' + k:<52} {cell(b):>26} {cell(n):>26} {ratio:>8.2f}")
    if loads:
        count = len(list(out.glob(f"{bench}-new-*.txt")))
        print(f"  ({bench}: {count} runs of each build; load average during them {min(loads):.2f}-{max(loads):.2f})")
PY

if [ "$schedule" = 1 ] && [ -x "$new/schedule" ] && [ -x "$base/schedule" ]; then
  echo
  echo "== schedule bench, new build with the base build as --baseline-exe, $rounds rounds (load $(cut -d' ' -f1-3 /proc/loadavg))"
  "$new/schedule" --quick --rounds "$rounds" --baseline-exe "$base/schedule" >"$out/schedule.txt" 2>&1 &
  pid=$!
  while kill -0 "$pid" 2>/dev/null && ! grep -q "^GET /tasks?limit=1000 tasks serialized" "$out/schedule.txt"; do sleep 1; done
  # Its servers are its children (stopped first: they would outlive a killed bench).
  pkill -P "$pid" 2>/dev/null || true
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  sed -n '/^round 1/,/^GET \/tasks?limit=1000 tasks serialized/p' "$out/schedule.txt"
  echo "(load after: $(cut -d' ' -f1-3 /proc/loadavg))"
fi
