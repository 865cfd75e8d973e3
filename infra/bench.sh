#!/usr/bin/env bash
# The benchmark command (issues 4 and 7; see BENCHMARKS.md). Benchmarks are programs, not
# tests: infra/test.sh never runs them.
#
#   infra/bench.sh              every benchmark
#   infra/bench.sh send         only bench-send       (send-notification throughput, issue 4)
#   infra/bench.sh refresh      only bench-refresh    (token-refresh cost vs due mailboxes, issue 5)
#   infra/bench.sh coldstart    only bench-coldstart  (cold start and footprint, issue 7)
#
# It installs and starts the peers (infra/peers.sh, as infra/test.sh does), installs
# cargo-lambda (infra/peers.sh install-sam), builds the release binaries, starts the Lambda
# Runtime API emulator `cargo lambda watch --only-lambda-apis` on a free loopback port, runs
# the benchmarks, writes their tables into BENCHMARKS.md (between the generated-region
# markers; the rest of the file is left alone) and stops everything it started.
#
# Extra arguments for the programs: BENCH_SEND_ARGS="--n 500 --rounds 5",
# BENCH_REFRESH_ARGS="--sizes 1000", BENCH_COLDSTART_ARGS="--cold 40 --warm 400
# --functions mailboxes,send-notification".
# Raw logs (function stdout/stderr, emulator) go to target/bench/.
set -euo pipefail
cd "$(dirname "$0")/.."

what="${1:-all}"
case "$what" in
  all | send | refresh | coldstart) ;;
  *) echo "usage: $0 [all|send|refresh|coldstart]" >&2; exit 2 ;;
esac

infra/peers.sh install
if [[ "$what" == all || "$what" == coldstart ]]; then
  infra/peers.sh install-sam # cargo-lambda: the Runtime API emulator
fi

echo "== release build"
# the functions as `sam build` builds them: each package with its own features (aws, lambda)
cargo build --release -p mailboxes -p authorize-start -p oauth-callback -p send-notification -p token-refresh
cargo build --release -p outgoing-mail-tests --bins

mkdir -p target/bench
EMULATOR_PID=""
cleanup() {
  if [[ -n "$EMULATOR_PID" ]] && kill -0 "$EMULATOR_PID" 2>/dev/null; then
    kill "$EMULATOR_PID" 2>/dev/null || true
    wait "$EMULATOR_PID" 2>/dev/null || true
  fi
  infra/peers.sh stop
}
# `peers.sh start` can call a peer dead while its background job is still exec'ing (it reads
# /proc/<pid>/cmdline, which is this script's until `setsid` runs): seen on the loaded machine,
# so try twice
infra/peers.sh start || { sleep 1; infra/peers.sh start; }
trap cleanup EXIT
# shellcheck disable=SC1091
source .peers/env
export AWS_ENDPOINT_URL="$OM_TEST_MOTO_URL"
OM_BENCH_REVISION="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git status --porcelain --untracked-files=no -- shared functions Cargo.toml Cargo.lock 2>/dev/null)" ]]; then
  OM_BENCH_REVISION="$OM_BENCH_REVISION + uncommitted changes"
fi
export OM_BENCH_REVISION

if [[ "$what" == all || "$what" == send ]]; then
  echo "== bench-send"
  # shellcheck disable=SC2086
  target/release/bench-send --write-md BENCHMARKS.md ${BENCH_SEND_ARGS:-}
fi

if [[ "$what" == all || "$what" == refresh ]]; then
  echo "== bench-refresh"
  # shellcheck disable=SC2086
  target/release/bench-refresh --write-md BENCHMARKS.md ${BENCH_REFRESH_ARGS:-}
fi

if [[ "$what" == all || "$what" == coldstart ]]; then
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  echo "== Lambda Runtime API emulator: cargo lambda watch --only-lambda-apis on 127.0.0.1:$port (log target/bench/emulator.log)"
  # the cargo subcommand binary itself, so the pid we stop is the emulator
  .peers/venv-sam/bin/cargo-lambda lambda watch --only-lambda-apis -A 127.0.0.1 -P "$port" \
    </dev/null >target/bench/emulator.log 2>&1 &
  EMULATOR_PID=$!
  # readiness: a TCP connect only (any HTTP request there would invoke or consume an event)
  for _ in $(seq 1 150); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
    kill -0 "$EMULATOR_PID" 2>/dev/null || { cat target/bench/emulator.log >&2; exit 1; }
    sleep 0.2
  done
  echo "== bench-coldstart"
  # shellcheck disable=SC2086
  OM_BENCH_EMULATOR="127.0.0.1:$port" target/release/bench-coldstart \
    --write-md BENCHMARKS.md --log-dir target/bench ${BENCH_COLDSTART_ARGS:-}
fi
echo "== done: BENCHMARKS.md updated"
