#!/usr/bin/env bash
# The README's test command: install the pinned peers and template tools into git-ignored
# folders, check the SAM template, start the peers on loopback, run every test against them,
# stop them. Extra arguments go to `cargo nextest run` (e.g. -E 'binary(events)').
#
# Template checks (offline, pinned): cfn-lint from .peers/venv (tests/peers/requirements.txt)
# and `sam validate --lint` from .peers/venv-sam (tests/peers/requirements-sam.txt). They run
# first (seconds); a finding does not stop the tests, but the script exits non-zero.
# A fresh .peers/venv-sam takes ~2 min to install (107 s measured); later runs reuse it.
set -euo pipefail
cd "$(dirname "$0")/.."

infra/peers.sh install
infra/peers.sh install-sam

template_failed=()
echo "== template checks: cfn-lint"
.peers/venv/bin/cfn-lint template.yaml || template_failed+=("cfn-lint template.yaml")
echo "== template checks: sam validate --lint"
SAM_CLI_TELEMETRY=0 .peers/venv-sam/bin/sam validate --lint --template template.yaml ||
  template_failed+=("sam validate --lint")

# binaries used by black-box tests (local-server start-up checks)
cargo build --workspace --bins --quiet
# this run's own peers (another run on the same machine keeps its own)
export OM_PEERS_RUN="$PWD/.peers/run-$$"
infra/peers.sh start
trap 'infra/peers.sh stop || true; rm -rf "$OM_PEERS_RUN"' EXIT
# shellcheck disable=SC1091
source "$OM_PEERS_RUN/env"
export AWS_ENDPOINT_URL="$OM_TEST_MOTO_URL"

echo "== tests"
tests_rc=0
cargo nextest run --workspace --no-fail-fast "$@" || tests_rc=$?

if ((${#template_failed[@]})); then
  printf 'test.sh: template check failed: %s\n' "${template_failed[@]}" >&2
  exit 1
fi
exit "$tests_rc"
