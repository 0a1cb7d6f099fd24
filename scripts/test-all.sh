#!/usr/bin/env bash
# Runs every test of the workspace with the services the tests need.
#
#   scripts/test-all.sh                           # all targets, doc tests, fuzzing
#   scripts/test-all.sh cargo test -p tokenkeeper-fs   # any command instead (no fuzzing)
#
# It installs what is missing (redis-server and openssl from Debian's
# packages, the interop authorities' npm packages), makes throw-away TLS
# certificates in its scratch folder (interop/certificates.sh: a test CA, a
# server certificate for localhost and 127.0.0.1, a client CA and client
# certificates), and starts on free loopback ports a private Redis and six
# third-party OAuth2 authorities from interop/: oauth2-mock-server over HTTP
# and again over HTTPS (authority.mjs), oidc-provider over HTTPS with
# RFC 8705 mTLS client authentication (oidc-mtls.mjs), oidc-provider over
# HTTP with RFC 9449 DPoP and required nonces (oidc-dpop.mjs), oidc-provider
# over HTTP with client assertions, the device grant, discovery and token
# exchange (oidc-auth.mjs), and an Authlib server (interop/authlib/). It exports
#
#   TOKENKEEPER_TEST_REDIS_URL                  redis://127.0.0.1:PORT/
#   TOKENKEEPER_TEST_INTEROP_TOKEN_URL          http://127.0.0.1:PORT/token
#   TOKENKEEPER_TEST_INTEROP_CLIENT_ID          interop-client
#   TOKENKEEPER_TEST_INTEROP_CLIENT_SECRET      interop-secret
#   TOKENKEEPER_TEST_INTEROP_TLS_TOKEN_URL      https://localhost:PORT/token (the same
#                                               authority and client, over HTTPS)
#   TOKENKEEPER_TEST_INTEROP_CA_FILE            the CA (PEM) of both HTTPS servers
#   TOKENKEEPER_TEST_OIDC_MTLS_TOKEN_URL        https://localhost:PORT/token (oidc-provider)
#   TOKENKEEPER_TEST_OIDC_MTLS_CLIENT_ID        interop-mtls-client (tls_client_auth)
#   TOKENKEEPER_TEST_INTEROP_CLIENT_CERT        its certificate (PEM, CN = the client id)
#   TOKENKEEPER_TEST_INTEROP_CLIENT_KEY         its private key (PEM)
#   TOKENKEEPER_TEST_OIDC_SELF_SIGNED_CLIENT_ID interop-self-signed-client
#                                               (self_signed_tls_client_auth)
#   TOKENKEEPER_TEST_INTEROP_SELF_SIGNED_CERT   its self-signed certificate (PEM)
#   TOKENKEEPER_TEST_INTEROP_SELF_SIGNED_KEY    its private key (PEM)
#   TOKENKEEPER_TEST_OIDC_DPOP_TOKEN_URL        http://127.0.0.1:PORT/token (oidc-provider, DPoP)
#   TOKENKEEPER_TEST_OIDC_DPOP_CLIENT_ID        interop-dpop-client (DPoP-bound tokens only)
#   TOKENKEEPER_TEST_OIDC_DPOP_CLIENT_SECRET    interop-dpop-secret
#
# and for oidc-provider over HTTP with issue 12's ways to authenticate
# (interop/oidc-auth.mjs: private_key_jwt, client_secret_jwt, the device
# grant with test routes that approve or deny, discovery, token exchange;
# its private keys are made at its start in the scratch folder):
#
#   TOKENKEEPER_TEST_OIDC_AUTH_ISSUER           http://127.0.0.1:PORT (its discovery
#                                               document is ISSUER/.well-known/openid-configuration)
#   TOKENKEEPER_TEST_OIDC_AUTH_RS256_CLIENT_ID  interop-rs256-client (private_key_jwt)
#   TOKENKEEPER_TEST_OIDC_AUTH_RS256_KEY        its RSA private key (PKCS#8 PEM; kid interop-rs256)
#   TOKENKEEPER_TEST_OIDC_AUTH_ES256_CLIENT_ID  interop-es256-client (private_key_jwt)
#   TOKENKEEPER_TEST_OIDC_AUTH_ES256_KEY        its P-256 private key (PKCS#8 PEM; kid interop-es256)
#   TOKENKEEPER_TEST_OIDC_AUTH_HS256_CLIENT_ID  interop-hs256-client (client_secret_jwt)
#   TOKENKEEPER_TEST_OIDC_AUTH_HS256_SECRET     its secret
#   TOKENKEEPER_TEST_OIDC_AUTH_DEVICE_CLIENT_ID interop-device-client (public; device grant)
#   TOKENKEEPER_TEST_OIDC_AUTH_EXPIRING_DEVICE_CLIENT_ID interop-device-expiring-client
#                                               (the same, its device codes living 3 s)
#   TOKENKEEPER_TEST_OIDC_AUTH_EXCHANGE_CLIENT_ID     interop-exchange-client (token exchange)
#   TOKENKEEPER_TEST_OIDC_AUTH_EXCHANGE_CLIENT_SECRET interop-exchange-secret
#   TOKENKEEPER_TEST_OIDC_AUTH_PLATFORM_KEY     the P-256 key whose JWTs token exchange
#                                               takes as subject tokens (PKCS#8 PEM)
#
# and for an authorization server written with Authlib (Python; interop/authlib/
# server.py: the JWT bearer grant, private_key_jwt with jti replay checks, the
# device grant with test routes that approve, deny, expire and slow down, a
# request log; it makes its keys at start in the scratch folder). Authlib and
# Flask, pinned in interop/authlib/requirements.txt, are installed with pip into
# a virtualenv under ${XDG_CACHE_HOME:-~/.cache}/tokenkeeper/, one per hash of
# that file:
#
#   TOKENKEEPER_TEST_AUTHLIB_TOKEN_URL          http://127.0.0.1:PORT/token (its test
#                                               routes are under the same origin, /test/)
#   TOKENKEEPER_TEST_AUTHLIB_DEVICE_URL         http://127.0.0.1:PORT/device_authorization
#   TOKENKEEPER_TEST_AUTHLIB_KEY_DIR            the private keys the tests sign with
#                                               (PKCS#8 PEM): issuer-rs256.pem and
#                                               issuer-es256.pem of the JWT bearer issuer
#                                               authlib-issuer, client-rs256.pem and
#                                               client-es256.pem of the private_key_jwt
#                                               client authlib-pkjwt-client (each key's
#                                               kid is its file name without .pem)
#
# (a given TOKENKEEPER_TEST_AUTHLIB_TOKEN_URL must be server.py, with the other
# two variables: the tests use its clients and test routes)
#
# runs the tests, stops every service it started (also when the tests fail or
# it is interrupted), deletes the scratch folder with the certificates and
# keys, and exits with the tests' status. A service whose URL variable is
# already set in the environment is not started: the given one is used
# instead, with the variables that go with it as given (the client id and
# secret; the CA file for the HTTPS one; the client ids, certificates and keys
# for oidc-provider with mTLS; the client id and secret for the DPoP one, which
# must be oidc-dpop.mjs: the tests read its log of token requests). When the script starts an HTTPS server while a CA file
# is given, it exports a bundle of the given CA file and its own test CA.
#
# Without arguments it then fuzzes (fuzz/, see fuzz/README.md): it installs
# cargo-fuzz if missing (`cargo install cargo-fuzz --locked`, about a minute;
# stable Rust is enough, and a C++ compiler for libFuzzer), checks the fuzz
# crate's formatting, builds the targets and runs each, two at a time, on its
# seed corpus (fuzz/seeds/TARGET) for a bounded number of inputs. A crash
# fails the script; its input is kept in fuzz/artifacts/TARGET/ and the log
# says how to replay it. The step takes about 2 minutes on 2 cores, most of
# it the build. Variables:
#
#   TOKENKEEPER_SKIP_FUZZ=1            skip the fuzzing step
#   TOKENKEEPER_SKIP_RELEASE_CHECKS=1  skip the release checks that end the run
#                                      (cargo deny, cargo publish --dry-run;
#                                      cargo-deny is installed when missing)
#   TOKENKEEPER_FUZZ_RUNS=N            inputs per target (default 200000)
#   TOKENKEEPER_FUZZ_MAX_SECONDS=S     stop a target after S seconds even if it
#                                      has not run N inputs (default 60)
#   TOKENKEEPER_FUZZ_SEED=N            libFuzzer's seed (default 1). A fixed seed
#                                      makes this step a repeatable gate: the same
#                                      commit explores the same inputs, so CI does
#                                      not fail on a find the change did not make.
#                                      0 picks a new seed each run (exploring).
#   RUST_TEST_THREADS=N                tests run at once in each test binary
#                                      (default 6 here, not the 2 cores: most
#                                      tests wait on real deadlines and loopback
#                                      servers, so on 2 cores the suites of
#                                      every driver took 3 to 4 times as long)
set -euo pipefail

export RUST_TEST_THREADS="${RUST_TEST_THREADS:-6}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
INTEROP_DIR="$ROOT/interop"
READY_TIMEOUT=30

log() { printf 'test-all: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Runs a command as root: directly when we are root, else through sudo.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "need root or sudo to run: $*"
  fi
}

# --- services we start, and their cleanup --------------------------------

WORK_DIR=""
REDIS_PID=""
AUTHORITY_PID=""
TLS_AUTHORITY_PID=""
OIDC_PID=""
OIDC_DPOP_PID=""
AUTHLIB_PID=""
OIDC_AUTH_PID=""
# The test command runs in its own process group so that a signal to this
# script can be passed on to it and everything it started (cargo, the test
# binaries, their children).
COMMAND_PID=""

# Sends SIGTERM to a process, waits up to 5 s, then SIGKILL.
stop_process() {
  local pid=$1 name=$2
  [ -n "$pid" ] || return 0
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name did not stop on SIGTERM, killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

# shellcheck disable=SC2317  # invoked by the trap below
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [ -n "$COMMAND_PID" ]; then
    kill -TERM -- "-$COMMAND_PID" 2>/dev/null || true
    wait "$COMMAND_PID" 2>/dev/null || true
  fi
  stop_process "$OIDC_AUTH_PID" "oidc-provider (assertions, device, exchange)"
  stop_process "$AUTHLIB_PID" "the Authlib server"
  stop_process "$OIDC_DPOP_PID" "oidc-provider (DPoP)"
  stop_process "$OIDC_PID" "oidc-provider (mTLS)"
  stop_process "$TLS_AUTHORITY_PID" "the interop authority (HTTPS)"
  stop_process "$AUTHORITY_PID" "the interop authority"
  stop_process "$REDIS_PID" "redis-server"
  if [ -n "$WORK_DIR" ]; then
    rm -rf "$WORK_DIR"
  fi
  exit "$status"
}
# Passes a signal on to the running test command's process group, waits for
# it to finish, then exits (through `cleanup`) with 128 + the signal number.
# shellcheck disable=SC2317  # invoked by the traps below
on_signal() {
  local signal=$1 status=$2
  if [ -n "$COMMAND_PID" ]; then
    log "received SIG$signal, stopping the tests"
    kill "-$signal" -- "-$COMMAND_PID" 2>/dev/null || true
    wait "$COMMAND_PID" 2>/dev/null || true
    COMMAND_PID=""
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'on_signal INT 130' INT
trap 'on_signal TERM 143' TERM

# --- installation ----------------------------------------------------------

ensure_redis() {
  command -v redis-server >/dev/null 2>&1 && return 0
  log "installing redis-server (Debian package)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends redis-server >/dev/null
  command -v redis-server >/dev/null 2>&1 || die "redis-server is still missing after installing it"
}

ensure_openssl() {
  command -v openssl >/dev/null 2>&1 && return 0
  log "installing openssl (Debian package), which makes the TLS tests' certificates"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends openssl >/dev/null
  command -v openssl >/dev/null 2>&1 || die "openssl is still missing after installing it"
}

ensure_interop_packages() {
  command -v node >/dev/null 2>&1 || die "node is missing (Node.js 20.19 or newer is needed for the interop authorities)"
  command -v npm >/dev/null 2>&1 || die "npm is missing"
  local installed="$INTEROP_DIR/node_modules/.package-lock.json"
  if [ ! -f "$installed" ] \
    || [ "$INTEROP_DIR/package-lock.json" -nt "$installed" ] \
    || [ "$INTEROP_DIR/package.json" -nt "$installed" ]; then
    log "installing the interop authorities' npm packages"
    (cd "$INTEROP_DIR" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  fi
}

# --- starting ----------------------------------------------------------------

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

redis_ping() {
  local port=$1
  if command -v redis-cli >/dev/null 2>&1; then
    [ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" = "PONG" ]
  else
    # No redis-cli: speak the inline protocol over bash's /dev/tcp.
    (
      exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
      printf 'PING\r\n' >&3
      IFS= read -r -t 2 reply <&3 || exit 1
      [[ "$reply" == "+PONG"* ]]
    ) 2>/dev/null
  fi
}

# Starts redis on a free port (retrying if another process takes the port
# between the choice and the bind) and exports its URL.
start_redis() {
  local attempt port
  for attempt in 1 2 3; do
    port=$(free_port)
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
      --dir "$WORK_DIR" --logfile "$WORK_DIR/redis.log" --daemonize no \
      </dev/null >/dev/null 2>"$WORK_DIR/redis.err" &
    REDIS_PID=$!
    for _ in $(seq 100); do
      if redis_ping "$port"; then
        export TOKENKEEPER_TEST_REDIS_URL="redis://127.0.0.1:$port/"
        log "redis-server ready on port $port"
        return 0
      fi
      kill -0 "$REDIS_PID" 2>/dev/null || break
      sleep 0.1
    done
    log "redis-server did not answer on port $port (attempt $attempt); log:"
    tail -n 5 "$WORK_DIR/redis.err" "$WORK_DIR/redis.log" >&2 2>/dev/null || true
    stop_process "$REDIS_PID" "redis-server"
    REDIS_PID=""
  done
  die "could not start redis-server"
}

# start_node_server NAME PID_VARIABLE URL_VARIABLE SCRIPT [ARGUMENT...]
# Starts `node interop/SCRIPT ARGUMENT...` (its output goes to files named
# after PID_VARIABLE in the scratch folder), sets PID_VARIABLE to its pid
# straight away (so that cleanup stops it whatever happens next), waits for
# its READY line and exports the URL on it as URL_VARIABLE.
start_node_server() {
  local name=$1 pid_variable=$2 url_variable=$3 script=$4
  shift 4
  local out="$WORK_DIR/$pid_variable.out" err="$WORK_DIR/$pid_variable.err" line="" waited=0 pid
  node "$INTEROP_DIR/$script" "$@" >"$out" 2>"$err" </dev/null &
  pid=$!
  printf -v "$pid_variable" '%s' "$pid"
  while [ "$waited" -lt $((READY_TIMEOUT * 10)) ]; do
    line=$(grep -m1 '^READY ' "$out" 2>/dev/null || true)
    [ -n "$line" ] && break
    if ! kill -0 "$pid" 2>/dev/null; then
      cat "$err" >&2 || true
      die "$name exited before it was ready"
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
  if [ -z "$line" ]; then
    cat "$err" >&2 || true
    die "$name was not ready within ${READY_TIMEOUT}s"
  fi
  export "$url_variable=${line#READY }"
  log "$name ready at ${line#READY }"
}

# Makes (once per content of interop/authlib/requirements.txt) a virtualenv
# with the pinned Authlib and Flask, and prints its python. A virtualenv whose
# install did not finish has no .installed mark and is made again.
authlib_python() {
  local requirements="$INTEROP_DIR/authlib/requirements.txt" hash venv
  command -v python3 >/dev/null 2>&1 || die "python3 is missing (the Authlib interop server needs Python 3.9 or newer)"
  hash=$(sha256sum "$requirements" | cut -c1-16)
  venv="${XDG_CACHE_HOME:-$HOME/.cache}/tokenkeeper/authlib-venv-$hash"
  if [ ! -f "$venv/.installed" ]; then
    log "installing Authlib into $venv (pip, interop/authlib/requirements.txt)"
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv" >&2 \
      || die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
      --require-virtualenv -r "$requirements" >&2 \
      || die "pip could not install interop/authlib/requirements.txt"
    touch "$venv/.installed"
  fi
  printf '%s\n' "$venv/bin/python"
}

# Starts interop/authlib/server.py on a free port (it picks it) with its keys
# in the scratch folder, waits for its READY line and exports its variables.
start_authlib_server() {
  local python out="$WORK_DIR/AUTHLIB_PID.out" err="$WORK_DIR/AUTHLIB_PID.err" line="" waited=0
  python=$(authlib_python)
  PYTHONDONTWRITEBYTECODE=1 "$python" "$INTEROP_DIR/authlib/server.py" \
    --key-dir "$WORK_DIR/authlib-keys" >"$out" 2>"$err" </dev/null &
  AUTHLIB_PID=$!
  while [ "$waited" -lt $((READY_TIMEOUT * 10)) ]; do
    line=$(grep -m1 '^READY ' "$out" 2>/dev/null || true)
    [ -n "$line" ] && break
    if ! kill -0 "$AUTHLIB_PID" 2>/dev/null; then
      cat "$err" >&2 || true
      die "the Authlib server exited before it was ready"
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
  if [ -z "$line" ]; then
    cat "$err" >&2 || true
    die "the Authlib server was not ready within ${READY_TIMEOUT}s"
  fi
  export TOKENKEEPER_TEST_AUTHLIB_TOKEN_URL="${line#READY }/token"
  export TOKENKEEPER_TEST_AUTHLIB_DEVICE_URL="${line#READY }/device_authorization"
  export TOKENKEEPER_TEST_AUTHLIB_KEY_DIR="$WORK_DIR/authlib-keys"
  log "the Authlib server ready at ${line#READY }"
}

# Makes the TLS certificates (once) into $CERT_DIR.
CERT_DIR=""
make_certificates() {
  [ -z "$CERT_DIR" ] || return 0
  ensure_openssl
  CERT_DIR="$WORK_DIR/certs"
  bash "$INTEROP_DIR/certificates.sh" "$CERT_DIR" || die "could not make the test certificates"
}

# --- fuzzing ---------------------------------------------------------------------

FUZZ_TARGETS=(token_response oauth_error retry_after cache_record token_url cli_config discovery_metadata device_flow)
# Stable Rust: no sanitizer (the code is safe Rust; overflow checks and
# debug assertions are on), and 16 codegen units for a faster build.
FUZZ_FLAGS=(--debug-assertions --sanitizer none --codegen-units 16)

ensure_cargo_fuzz() {
  if ! command -v c++ >/dev/null 2>&1; then
    log "installing g++ (Debian package), which builds libFuzzer"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    as_root env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends g++ >/dev/null
  fi
  cargo fuzz --version >/dev/null 2>&1 && return 0
  log "installing cargo-fuzz (crates.io)"
  cargo install cargo-fuzz --locked --version '^0.13' --quiet
  cargo fuzz --version >/dev/null 2>&1 || die "cargo fuzz is still missing after installing it"
}

# Runs one target on a scratch copy of its corpus; its output goes to a log.
fuzz_target() {
  local target=$1 corpus="$WORK_DIR/fuzz-corpus/$1"
  mkdir -p "$corpus"
  cargo fuzz run "${FUZZ_FLAGS[@]}" "$target" "$corpus" "fuzz/seeds/$target" -- \
    -runs="$FUZZ_RUNS" -seed="$FUZZ_SEED" -max_total_time="$FUZZ_MAX_SECONDS" -timeout=10 -print_final_stats=1 \
    >"$WORK_DIR/fuzz-$target.log" 2>&1
}

# Prints how a target's run ended: its inputs, or its crash and how to replay it.
fuzz_report() {
  local target=$1 status=$2 log="$WORK_DIR/fuzz-$1.log" runs artifact
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  if [ "$status" -eq 0 ]; then
    log "fuzz $target: ${runs:-?} inputs, no crash"
    return 0
  fi
  log "fuzz $target FAILED (status $status) after ${runs:-?} inputs:"
  # The panic message, and libFuzzer's account of the crash (or hang).
  awk '/panicked at/ { show = 1 } /^stack backtrace:/ { show = 0 }
       show || /ERROR: libFuzzer|^SUMMARY|Test unit written|^Base64/' "$log" >&2 || true
  [ -n "$(grep -m1 'ERROR: libFuzzer' "$log")" ] || tail -n 30 "$log" >&2
  artifact=$(sed -n "s/.*Test unit written to \(.*\)$/\1/p" "$log" | tail -n 1)
  if [ -n "$artifact" ]; then
    log "replay it with: cargo fuzz run ${FUZZ_FLAGS[*]} $target ${artifact#"$ROOT"/}"
  fi
  return 1
}

# Builds every target, then runs them two at a time (the machine has 2 cores).
fuzz_all() {
  local status=0 i first second pid rc
  cargo fmt --manifest-path fuzz/Cargo.toml --check || {
    log "fuzz/ is not formatted: run cargo fmt in fuzz/"
    status=1
  }
  cargo fuzz build "${FUZZ_FLAGS[@]}" || return 1
  for ((i = 0; i < ${#FUZZ_TARGETS[@]}; i += 2)); do
    first=${FUZZ_TARGETS[i]}
    second=${FUZZ_TARGETS[i + 1]:-}
    fuzz_target "$first" &
    pid=$!
    if [ -n "$second" ]; then
      rc=0
      fuzz_target "$second" || rc=$?
      fuzz_report "$second" "$rc" || status=1
    fi
    rc=0
    wait "$pid" || rc=$?
    fuzz_report "$first" "$rc" || status=1
  done
  return "$status"
}

# --- main ----------------------------------------------------------------------

cd "$ROOT"
if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
  # shellcheck source=/dev/null
  . "$HOME/.cargo/env"
fi

WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/tokenkeeper-test.XXXXXX")

if [ -n "${TOKENKEEPER_TEST_REDIS_URL:-}" ]; then
  log "using the given Redis at $TOKENKEEPER_TEST_REDIS_URL"
else
  ensure_redis
  start_redis
fi

if [ -n "${TOKENKEEPER_TEST_INTEROP_TOKEN_URL:-}" ]; then
  log "using the given interop authority at $TOKENKEEPER_TEST_INTEROP_TOKEN_URL"
else
  ensure_interop_packages
  start_node_server "the interop authority" AUTHORITY_PID TOKENKEEPER_TEST_INTEROP_TOKEN_URL \
    authority.mjs
fi
export TOKENKEEPER_TEST_INTEROP_CLIENT_ID="${TOKENKEEPER_TEST_INTEROP_CLIENT_ID:-interop-client}"
export TOKENKEEPER_TEST_INTEROP_CLIENT_SECRET="${TOKENKEEPER_TEST_INTEROP_CLIENT_SECRET:-interop-secret}"

if [ -n "${TOKENKEEPER_TEST_INTEROP_TLS_TOKEN_URL:-}" ]; then
  log "using the given HTTPS interop authority at $TOKENKEEPER_TEST_INTEROP_TLS_TOKEN_URL"
else
  ensure_interop_packages
  make_certificates
  start_node_server "the interop authority (HTTPS)" TLS_AUTHORITY_PID \
    TOKENKEEPER_TEST_INTEROP_TLS_TOKEN_URL \
    authority.mjs --cert "$CERT_DIR/server.pem" --key "$CERT_DIR/server.key"
fi

if [ -n "${TOKENKEEPER_TEST_OIDC_MTLS_TOKEN_URL:-}" ]; then
  log "using the given oidc-provider at $TOKENKEEPER_TEST_OIDC_MTLS_TOKEN_URL"
else
  ensure_interop_packages
  make_certificates
  start_node_server "oidc-provider (mTLS)" OIDC_PID TOKENKEEPER_TEST_OIDC_MTLS_TOKEN_URL \
    oidc-mtls.mjs --cert "$CERT_DIR/server.pem" --key "$CERT_DIR/server.key" \
    --client-ca "$CERT_DIR/client-ca.pem" --self-signed-client "$CERT_DIR/self-signed-client.pem"
  # The clients registered in oidc-mtls.mjs, with the certificates made for them.
  export TOKENKEEPER_TEST_OIDC_MTLS_CLIENT_ID=interop-mtls-client
  export TOKENKEEPER_TEST_INTEROP_CLIENT_CERT="$CERT_DIR/client.pem"
  export TOKENKEEPER_TEST_INTEROP_CLIENT_KEY="$CERT_DIR/client.key"
  export TOKENKEEPER_TEST_OIDC_SELF_SIGNED_CLIENT_ID=interop-self-signed-client
  export TOKENKEEPER_TEST_INTEROP_SELF_SIGNED_CERT="$CERT_DIR/self-signed-client.pem"
  export TOKENKEEPER_TEST_INTEROP_SELF_SIGNED_KEY="$CERT_DIR/self-signed-client.key"
fi

if [ -n "${TOKENKEEPER_TEST_OIDC_DPOP_TOKEN_URL:-}" ]; then
  log "using the given oidc-provider (DPoP) at $TOKENKEEPER_TEST_OIDC_DPOP_TOKEN_URL"
else
  ensure_interop_packages
  start_node_server "oidc-provider (DPoP)" OIDC_DPOP_PID TOKENKEEPER_TEST_OIDC_DPOP_TOKEN_URL \
    oidc-dpop.mjs
fi
# The client registered in oidc-dpop.mjs, unless given.
export TOKENKEEPER_TEST_OIDC_DPOP_CLIENT_ID="${TOKENKEEPER_TEST_OIDC_DPOP_CLIENT_ID:-interop-dpop-client}"
export TOKENKEEPER_TEST_OIDC_DPOP_CLIENT_SECRET="${TOKENKEEPER_TEST_OIDC_DPOP_CLIENT_SECRET:-interop-dpop-secret}"

# oidc-provider for issue 12 (oidc-auth.mjs): it writes its clients' keys.
if [ -n "${TOKENKEEPER_TEST_OIDC_AUTH_ISSUER:-}" ]; then
  log "using the given oidc-provider (assertions, device, exchange) at $TOKENKEEPER_TEST_OIDC_AUTH_ISSUER"
else
  ensure_interop_packages
  start_node_server "oidc-provider (assertions, device, exchange)" OIDC_AUTH_PID \
    TOKENKEEPER_TEST_OIDC_AUTH_ISSUER oidc-auth.mjs --key-dir "$WORK_DIR/oidc-auth-keys"
  # The clients registered in oidc-auth.mjs, and the keys it wrote for them.
  export TOKENKEEPER_TEST_OIDC_AUTH_RS256_CLIENT_ID=interop-rs256-client
  export TOKENKEEPER_TEST_OIDC_AUTH_RS256_KEY="$WORK_DIR/oidc-auth-keys/rs256-client.pem"
  export TOKENKEEPER_TEST_OIDC_AUTH_ES256_CLIENT_ID=interop-es256-client
  export TOKENKEEPER_TEST_OIDC_AUTH_ES256_KEY="$WORK_DIR/oidc-auth-keys/es256-client.pem"
  export TOKENKEEPER_TEST_OIDC_AUTH_HS256_CLIENT_ID=interop-hs256-client
  export TOKENKEEPER_TEST_OIDC_AUTH_HS256_SECRET=interop-hs256-secret-that-is-long-enough-for-hs256
  export TOKENKEEPER_TEST_OIDC_AUTH_DEVICE_CLIENT_ID=interop-device-client
  export TOKENKEEPER_TEST_OIDC_AUTH_EXPIRING_DEVICE_CLIENT_ID=interop-device-expiring-client
  export TOKENKEEPER_TEST_OIDC_AUTH_EXCHANGE_CLIENT_ID=interop-exchange-client
  export TOKENKEEPER_TEST_OIDC_AUTH_EXCHANGE_CLIENT_SECRET=interop-exchange-secret
  export TOKENKEEPER_TEST_OIDC_AUTH_PLATFORM_KEY="$WORK_DIR/oidc-auth-keys/platform.pem"
fi

# The Authlib server (interop/authlib/server.py).
if [ -n "${TOKENKEEPER_TEST_AUTHLIB_TOKEN_URL:-}" ]; then
  log "using the given Authlib server at $TOKENKEEPER_TEST_AUTHLIB_TOKEN_URL"
else
  start_authlib_server
fi

# The CA to trust: ours when we started an HTTPS server, with a given one too.
if [ -n "$CERT_DIR" ]; then
  if [ -n "${TOKENKEEPER_TEST_INTEROP_CA_FILE:-}" ]; then
    cat "$TOKENKEEPER_TEST_INTEROP_CA_FILE" "$CERT_DIR/ca.pem" >"$CERT_DIR/ca-bundle.pem" \
      || die "cannot read TOKENKEEPER_TEST_INTEROP_CA_FILE=$TOKENKEEPER_TEST_INTEROP_CA_FILE"
    export TOKENKEEPER_TEST_INTEROP_CA_FILE="$CERT_DIR/ca-bundle.pem"
  else
    export TOKENKEEPER_TEST_INTEROP_CA_FILE="$CERT_DIR/ca.pem"
  fi
fi

# Runs "$@" in a process group of its own and returns its exit status.
run_command() {
  local status=0
  set -m
  if [ -t 0 ]; then
    # A background group reading the terminal would be stopped: give it none.
    "$@" </dev/null &
  else
    "$@" &
  fi
  COMMAND_PID=$!
  set +m
  wait "$COMMAND_PID" || status=$?
  COMMAND_PID=""
  return "$status"
}

# The release checks: the supply chain (cargo-deny: licenses, duplicate
# majors, sources; deny.toml) and that every published crate packages and
# builds on its own (cargo publish --dry-run, in the workspace's target
# folder, so after the tests it recompiles little more than our crates).
# The advisory database is not reachable from CI; docs/dependencies.md says
# how to check advisories. --allow-dirty: the tests may leave files (fuzz
# corpora) in the checkout; no package includes them.
release_checks() {
  if ! command -v cargo-deny >/dev/null 2>&1; then
    log "installing cargo-deny (crates.io)"
    cargo install cargo-deny --locked --quiet
  fi
  # The dry run builds each crate from its package against the packages of
  # the others, which cargo treats as registry crates of version 0.1.0 each
  # time: it never unpacks one again once unpacked, and never rebuilds one
  # it built, so a machine that ran a dry run before a change would build
  # against the old code ("no method named ..."). Our packages' unpacked
  # sources (never a dependency from crates.io) and our crates' build
  # fingerprints go first; only our crates are rebuilt.
  local target="${CARGO_TARGET_DIR:-$ROOT/target}"
  rm -rf "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/tokenkeeper-[a-z]*-[0-9]* \
    "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/tokenkeeper-[0-9]* \
    "$target"/debug/.fingerprint/tokenkeeper-* "$target"/debug/.fingerprint/tokenkeeper_*
  cargo deny --workspace --all-features check licenses bans sources &&
    cargo publish --workspace --dry-run --allow-dirty
}

status=0
if [ "$#" -gt 0 ]; then
  run_command "$@" || status=$?
else
  run_command cargo test --workspace --all-targets --no-fail-fast || status=$?
  doc_status=0
  run_command cargo test --workspace --doc --no-fail-fast || doc_status=$?
  [ "$status" -ne 0 ] || status=$doc_status
  if [ "${TOKENKEEPER_SKIP_FUZZ:-}" = "1" ]; then
    log "fuzzing skipped (TOKENKEEPER_SKIP_FUZZ=1)"
  else
    FUZZ_RUNS=${TOKENKEEPER_FUZZ_RUNS:-200000}
    FUZZ_MAX_SECONDS=${TOKENKEEPER_FUZZ_MAX_SECONDS:-60}
    FUZZ_SEED=${TOKENKEEPER_FUZZ_SEED:-1}
    fuzz_started=$SECONDS
    fuzz_status=0
    ensure_cargo_fuzz
    run_command fuzz_all || fuzz_status=$?
    log "fuzzing took $((SECONDS - fuzz_started)) s"
    [ "$status" -ne 0 ] || status=$fuzz_status
  fi
  if [ "${TOKENKEEPER_SKIP_RELEASE_CHECKS:-}" = "1" ]; then
    log "release checks skipped (TOKENKEEPER_SKIP_RELEASE_CHECKS=1)"
  else
    release_started=$SECONDS
    release_status=0
    run_command release_checks || release_status=$?
    log "release checks took $((SECONDS - release_started)) s"
    [ "$status" -ne 0 ] || status=$release_status
  fi
fi
exit "$status"
