#!/usr/bin/env bash
# The nightly tagging job over many clients, through the Spectora backend, against a
# simulator with a rate limit: its duration beside the rate limit's lower bound, its
# requests, and the peak memory of the process that runs it.
#
#   bash bench/bulk.sh [CLIENTS] [REQUESTS_A_MINUTE]     (defaults: 50000 and 1200)
#
# Everything runs on loopback: `clientrules sim` seeded with the clients (one in 50 has
# three inspections, one in 500 is tagged already), then `clientrules run repeat-clients`
# under `/usr/bin/time -v`, both rate limits set to the same figure.
set -euo pipefail
cd "$(dirname "$0")/.."

CLIENTS=${1:-50000}
PER_MINUTE=${2:-1200}
PORT=${PORT:-8190}
KEY=bench-key

cargo build --release --quiet --bin clientrules
TARGET=${CARGO_TARGET_DIR:-target}
BIN=$TARGET/release/clientrules
WORK=$(mktemp -d)
SIM=
cleanup() {
    [ -n "$SIM" ] && kill "$SIM" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

awk -v n="$CLIENTS" 'BEGIN {
    printf "[";
    for (i = 0; i < n; i++) {
        tags = "";
        if (i % 50 == 0) tags = "\"inspection-2023-04-02\",\"inspection-2024-05-11\",\"inspection-2025-06-20\"";
        if (i % 500 == 0) tags = tags ",\"repeat-client\"";
        printf "%s{\"email\":\"client%d@example.com\",\"first_name\":\"Client\",\"last_name\":\"N%d\",\"tags\":[%s]}",
            (i ? "," : ""), i, i, tags;
    }
    print "]";
}' >"$WORK/seed.json"

"$BIN" sim --listen "127.0.0.1:$PORT" --key "$KEY" --seed "$WORK/seed.json" \
    --rate-limit "$PER_MINUTE" 2>"$WORK/sim.log" &
SIM=$!
for _ in $(seq 1 600); do
    grep -q "simulator listening" "$WORK/sim.log" && break
    sleep 0.1
done
curl -s "http://127.0.0.1:$PORT/_sim/stats" >/dev/null

echo "== repeat-clients over $CLIENTS clients, $PER_MINUTE requests a minute"
SPECTORA_API_KEY=$KEY SPECTORA_BASE_URL="http://127.0.0.1:$PORT" \
CLIENTRULES_SPECTORA_RATE_LIMIT=$PER_MINUTE CLIENTRULES_LOG=warn \
    /usr/bin/time -v "$BIN" run repeat-clients --data "$WORK/data" \
    >"$WORK/run.txt" 2>"$WORK/time.txt" || { cat "$WORK/run.txt" "$WORK/time.txt"; exit 1; }
head -3 "$WORK/run.txt" | sed 's/^/  /'
grep -E 'Elapsed \(wall clock\)|Maximum resident set size' "$WORK/time.txt" | sed 's/^\s*/  /'

STATS=$(curl -s "http://127.0.0.1:$PORT/_sim/stats")
echo "  simulator counted: $STATS"
LISTS=$(( (CLIENTS + 199) / 200 ))
WRITES=$(( CLIENTS / 50 - CLIENTS / 500 ))
REQUESTS=$(( LISTS + WRITES ))
BURST=$(( PER_MINUTE / 6 ))
echo "  expected: $LISTS list requests + $WRITES writes = $REQUESTS requests"
awk -v r="$REQUESTS" -v b="$BURST" -v m="$PER_MINUTE" \
    'BEGIN { s = (r - b) * 60 / m; if (s < 0) s = 0; printf "  rate limit lower bound: %.1f s\n", s }'
