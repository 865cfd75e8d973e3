#!/usr/bin/env bash
# The README's test command: install the pinned peers into git-ignored folders, start them on
# loopback, run every test against them, stop them. Extra arguments go to `cargo nextest run`.
set -euo pipefail
cd "$(dirname "$0")/.."

infra/peers.sh install
# binaries used by black-box tests (local-server start-up checks)
cargo build --workspace --bins --quiet
infra/peers.sh start
trap 'infra/peers.sh stop' EXIT
# shellcheck disable=SC1091
source .peers/env
export AWS_ENDPOINT_URL="$OM_TEST_MOTO_URL"

echo "== template checks (cfn-lint)"
.peers/venv/bin/cfn-lint template.yaml

echo "== tests"
cargo nextest run --workspace --no-fail-fast "$@"
