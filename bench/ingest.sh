#!/usr/bin/env bash
# Durable ingest against a handler that stores nothing, at a fixed request rate.
#
#   bash bench/ingest.sh [RATE] [SECONDS]      (defaults: 5000 a second for 15 seconds)
#
# Needs oha (`cargo install oha`). Starts, on loopback only: the bare handler, then
# `clientrules serve` with group commit, then with one commit a request, each on a fresh
# data folder with one rule that accepts every delivery and writes nothing; drives each
# with the same load from this second process and prints the latency percentiles.
set -euo pipefail
cd "$(dirname "$0")/.."

RATE=${1:-5000}
SECONDS_=${2:-15}
CONNECTIONS=${CONNECTIONS:-64}
command -v oha >/dev/null || { echo "oha is needed: cargo install oha" >&2; exit 1; }

cargo build --release --quiet --bin clientrules --example bare-webhook
TARGET=${CARGO_TARGET_DIR:-target}
BIN=$TARGET/release/clientrules
BARE=$TARGET/release/examples/bare-webhook

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$WORK/rules"
cat > "$WORK/rules/sink.yaml" <<'YAML'
name: sink
description: Accepts every delivery and writes nothing.
on:
  webhook:
    path: /hooks/sink
script: |
  let size = event.raw.len();
YAML

BODY='{"email":"jane.baker@example.com","first_name":"Jane","last_name":"Baker","phone":"+13035550111"}'

wait_port() {
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    exit 1
}

load() {
    local name=$1 port=$2
    echo "== $name: $RATE requests a second for ${SECONDS_}s, $CONNECTIONS connections"
    oha --no-tui -z "${SECONDS_}s" -q "$RATE" -c "$CONNECTIONS" --latency-correction \
        -m POST -H 'content-type: application/json' -d "$BODY" \
        "http://127.0.0.1:$port/hooks/sink" >"$WORK/$name.txt"
    grep -E 'Success rate|Requests/sec|(50|90|99|99\.90)\.?0*% in|\[[0-9]{3}\] [0-9]+ responses|^  \[' "$WORK/$name.txt" | sed 's/^/  /'
}

"$BARE" 127.0.0.1:8181 2>"$WORK/bare.log" &
PIDS+=($!)
wait_port 8181
load bare 8181

for mode in group each; do
    port=$([ "$mode" = group ] && echo 8182 || echo 8183)
    CLIENTRULES_LOG=warn,clientrules::server=info "$BIN" serve --listen "127.0.0.1:$port" \
        --rules "$WORK/rules" --data "$WORK/data-$mode" --commit "$mode" 2>"$WORK/serve-$mode.log" &
    pid=$!
    PIDS+=("$pid")
    wait_port "$port"
    load "commit-$mode" "$port"
    # With sqlite3 at hand, count what was stored: every 2xx is an event, and the jobs
    # the workers finished meanwhile on the same cores.
    if command -v sqlite3 >/dev/null; then
        db="$WORK/data-$mode/clientrules.db"
        echo "  events stored: $(sqlite3 "$db" 'SELECT count(*) FROM events')," \
            "jobs finished by the end of the load: $(sqlite3 "$db" "SELECT count(*) FROM jobs WHERE state = 'done'")"
    fi
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    # The store's own count of its writes (deliveries, claims, finishes) and commits.
    grep -o 'writes=[0-9]* commits=[0-9]*' "$WORK/serve-$mode.log" | sed 's/^/  store: /' || true
done
