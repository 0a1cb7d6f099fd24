#!/usr/bin/env bash
# A single watcher's cost in instructions (issue 14), ours against
# aliri_tokens 0.3.2: valgrind's callgrind counts every instruction of a
# `many_tokens` process with 2,000 watchers and with 6,000, and the
# difference over 4,000 is the cost of one watcher: spawn, its first token,
# and its share of the teardown. Setup and the fixed costs cancel out.
#
#   scripts/bench-spawn-instructions.sh [SCENARIO...]
#
# Default scenarios: watchers aliri. Each count is the least of three runs:
# a run now and then takes a few thousand instructions a watcher more (the
# runtime's worker threads, scheduled differently under valgrind, take part
# in some runs and not others). The least of three repeats within about 1%,
# where the wall-clock figures of scripts/bench-many-tokens.sh move by a
# third from run to run on a shared machine: use it to tell whether a change
# to the spawn path made it cheaper. It counts work, not waiting (cache
# misses, page faults, wake-ups between threads); the wall clock still
# decides the bar. Needs valgrind (`apt-get install valgrind`); run it on an
# otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v valgrind > /dev/null; then
    echo "valgrind is needed: apt-get install valgrind" >&2
    exit 2
fi
scenarios=("$@")
if [ ${#scenarios[@]} -eq 0 ]; then
    scenarios=(watchers aliri)
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/bench}"
cargo build --release -p tokenkeeper-bench --example many_tokens >&2
bin="$CARGO_TARGET_DIR/release/examples/many_tokens"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Instructions of one process with $2 keys of scenario $1: the least of
# three runs.
instructions() {
    for _ in 1 2 3; do
        valgrind --tool=callgrind --callgrind-out-file="$work/out" \
            "$bin" "$1" "$2" 0 > /dev/null 2> "$work/err"
        sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$work/err"
    done | sort -n | head -1
}

for scenario in "${scenarios[@]}"; do
    few="$(instructions "$scenario" 2000)"
    many="$(instructions "$scenario" 6000)"
    echo "$scenario: $(( (many - few) / 4000 )) instructions per watcher"
done
