#!/usr/bin/env bash
# Whole-process timings of `tokenkeeper token` (release build) against a
# loopback test authority: a warm cache (no request) against a cold fetch,
# with `tokenkeeper --version` as the floor (process start and exit alone).
#
# Uses hyperfine when it is installed (apt-get install -y hyperfine), else a
# loop timed with `date +%s%N`. Prints a Markdown table.
#
#   crates/tokenkeeper-cli/bench/bench-cli.sh [RUNS]
set -euo pipefail

runs="${1:-200}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
cd "$root"

cargo build --release --quiet -p tokenkeeper-cli --bin tokenkeeper --example bench_authority
target="${CARGO_TARGET_DIR:-$root/target}"
bin="$target/release/tokenkeeper"
authority_bin="$target/release/examples/bench_authority"

work="$(mktemp -d)"
authority_pid=""
cleanup() {
    if [ -n "$authority_pid" ]; then kill "$authority_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

"$authority_bin" >"$work/url" &
authority_pid=$!
for _ in $(seq 100); do
    [ -s "$work/url" ] && break
    sleep 0.05
done
url="$(head -n1 "$work/url")"
[ -n "$url" ] || { echo "the bench authority did not start" >&2; exit 1; }

export TOKENKEEPER_TOKEN_URL="$url"
export TOKENKEEPER_CLIENT_ID=bench
export TOKENKEEPER_CLIENT_SECRET=bench-secret
cache="$work/cache.json"
"$bin" token --cache "$cache" >/dev/null   # warm the cache

floor="$bin --version"
warm="$bin token --cache $cache"
cold="$bin token --cache $work/cold.json"
nocache="$bin token --no-cache"

echo "tokenkeeper $("$bin" --version | awk '{print $2}'), $(nproc) cores, $runs runs each, authority $url"
echo
if command -v hyperfine >/dev/null; then
    hyperfine --warmup 10 --runs "$runs" -N --style basic --export-markdown "$work/table.md" \
        -n "floor: tokenkeeper --version" "$floor" \
        -n "warm cache: token served from the cache file" "$warm" \
        -n "cold: fetch, lock, write the cache file" --prepare "rm -f $work/cold.json" "$cold" \
        -n "no cache: fetch only" "$nocache" >&2
    cat "$work/table.md"
else
    # A loop: mean and median wall-clock time per run, in milliseconds.
    time_it() {
        local prepare="$1"; shift
        local samples=()
        for _ in $(seq "$runs"); do
            [ -n "$prepare" ] && eval "$prepare"
            local t0 t1
            t0=$(date +%s%N)
            "$@" >/dev/null
            t1=$(date +%s%N)
            samples+=($(( (t1 - t0) / 1000 )))
        done
        printf '%s\n' "${samples[@]}" | sort -n | awk '{a[NR]=$1; s+=$1} END {printf "%.2f | %.2f | %.2f", s/NR/1000, a[int((NR+1)/2)]/1000, a[int(NR*0.95)]/1000}'
    }
    echo "| Command | Mean [ms] | Median [ms] | p95 [ms] |"
    echo "|:---|---:|---:|---:|"
    echo "| floor: tokenkeeper --version | $(time_it "" $floor) |"
    echo "| warm cache: token served from the cache file | $(time_it "" $warm) |"
    echo "| cold: fetch, lock, write the cache file | $(time_it "rm -f $work/cold.json" $cold) |"
    echo "| no cache: fetch only | $(time_it "" $nocache) |"
fi
