#!/usr/bin/env bash
# Property-based API testing of a real orchestrator with schemathesis (PyPI) against the
# OpenAPI description it serves. Fails on any 5xx, on responses that violate the documented
# schema or content type, and on undocumented status codes when STRICT=1.
#
#   bash scripts/schemathesis.sh              # 50 examples per operation
#   MAX_EXAMPLES=200 bash scripts/schemathesis.sh
#
# The venv is cached in ~/.cache/guildnet/venv-schemathesis. The orchestrator runs the local
# backend with `true` as runner, on loopback, with a throwaway state dir and admin token.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/guildnet/target}"
MAX_EXAMPLES="${MAX_EXAMPLES:-50}"
VENV="$HOME/.cache/guildnet/venv-schemathesis"
SCHEMATHESIS_VERSION="${SCHEMATHESIS_VERSION:-4.*}"

if [ ! -x "$VENV/bin/schemathesis" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "schemathesis==$SCHEMATHESIS_VERSION"
fi

# The workspace feature set (what the test suite builds), so nothing rebuilds for this.
cargo build -q --workspace --all-features --bins --locked
bin="$CARGO_TARGET_DIR/debug"

work="$(mktemp -d)"
token="st-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
# The token reaches the orchestrator through its environment, never its command line.
ORCHESTRATOR_TOKEN="$token" GUILDNET_STATE_DIR="$work/state" GUILDNET_AGENT_BIN="$bin/guildnet-agent" \
  GUILDNET_TALOSCTL=/bin/false RUST_LOG=warn \
  "$bin/guildnet-orchestrator" --listen "127.0.0.1:$port" --org acme --runner true \
  >"$work/orchestrator.log" 2>&1 &
orch=$!
cleanup() {
  kill "$orch" 2>/dev/null || true
  wait "$orch" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
  sleep 0.1
done

checks="not_a_server_error,response_schema_conformance,content_type_conformance"
[ "${STRICT:-0}" = 1 ] && checks="all"

started=$(date +%s)
status=0
# Streams (SSE) never end: schemathesis cannot consume them, they are left out.
"$VENV/bin/schemathesis" run "http://127.0.0.1:$port/openapi.json" \
  --header "Authorization: Bearer $token" \
  --checks "$checks" \
  --max-examples "$MAX_EXAMPLES" \
  --exclude-path-regex '(/stream$|^/events$)' \
  --request-timeout 10 \
  --seed 1 \
  --no-color || status=$?
echo "schemathesis: exit $status in $(($(date +%s) - started)) s"
if grep -q "panicked" "$work/orchestrator.log"; then
  echo "the orchestrator panicked:" >&2
  grep -B2 -A5 panicked "$work/orchestrator.log" >&2
  status=1
fi
exit "$status"
