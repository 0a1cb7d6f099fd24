#!/usr/bin/env bash
# Many tokens in one process (issue 14): memory per key, creation cost and
# idle wake-ups of a TokenPool, of separate TokenWatchers and of aliri_tokens
# 0.3.2 watchers, against a HashMap + ArcSwap floor, each scenario in a
# process of its own (so that resident memory is the scenario's alone).
#
#   scripts/bench-many-tokens.sh [KEYS] [IDLE_SECONDS]
#
# Defaults: 100,000 keys, 60 s idle. Prints one JSON line per scenario and
# a table; docs/performance.md has the figures of the last run.
set -euo pipefail
cd "$(dirname "$0")/.."

keys="${1:-100000}"
idle="${2:-60}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/bench}"
cargo build --release -p tokenkeeper-bench --example many_tokens >&2
bin="$CARGO_TARGET_DIR/release/examples/many_tokens"

results=()
for scenario in floor pool pool-up-front watchers aliri; do
    line="$("$bin" "$scenario" "$keys" "$idle")"
    echo "$line"
    results+=("$line")
done

# The table (the JSON lines through a file: a heredoc keeps the script's
# quotes out of Python's way).
table="$(mktemp)"
trap 'rm -f "$table"' EXIT
printf '%s\n' "${results[@]}" > "$table"
python3 - "$table" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
print()
print("| scenario | keys | resident bytes/key | beyond the 900-byte token | create, us/key | until held, us/key | idle wake-ups/s |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['scenario']} | {r['keys']:,} | {r['resident_bytes_per_key']:,} | {r['beyond_token_bytes_per_key']:,} | {r['create_us_per_key']:.2f} | {r['held_us_per_key']:.2f} | {r['idle_wakeups_per_second']:.2f} |")
PY
