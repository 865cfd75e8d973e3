#!/usr/bin/env bash
# Builds the five Lambda functions of template.yaml with `sam build`
# (BuildMethod rust-cargolambda: `cargo lambda build --release --arm64 --bin <name>`
# in functions/<name>, sharing the workspace's target/) and prints the size of each
# function's bootstrap.
#
#   infra/sam-build.sh                       arm64, the deployed architecture
#   OM_SAM_ARCH=x86_64 infra/sam-build.sh    host-architecture build, to check the build
#                                            where no aarch64 Rust std is installed; deploy
#                                            it only with Architecture=x86_64
#   infra/sam-build.sh MailboxesFunction     extra arguments go to `sam build`
#                                            (a function logical id, --debug, ...)
#
# Tools: aws-sam-cli and cargo-lambda (+ Zig) from tests/peers/requirements-sam.txt in
# the venv .peers/venv-sam (made by `infra/peers.sh install-sam`, or here if missing).
# Needs cargo and the Rust standard library of the target triple.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_SAM="${OM_SAM_VENV:-$ROOT/.peers/venv-sam}" # another venv: made here if missing
REQUIREMENTS="$ROOT/tests/peers/requirements-sam.txt"
ARCH="${OM_SAM_ARCH:-arm64}"
BUILD_DIR="$ROOT/.aws-sam/build"
FUNCTIONS=(MailboxesFunction AuthorizeStartFunction OAuthCallbackFunction TokenRefreshFunction SendNotificationFunction)

say() { printf 'sam-build: %s\n' "$*"; }
die() { printf 'sam-build: ERROR: %s\n' "$*" >&2; exit 1; }

export SAM_CLI_TELEMETRY=0
# aws-sam-cli >= the 1.170 pinned here builds rust-cargolambda without opting in; older
# releases needed this beta flag (ignored by newer ones).
export SAM_CLI_BETA_RUST_CARGO_LAMBDA=1

case "$ARCH" in
  arm64) TRIPLE=aarch64-unknown-linux-gnu ;;
  x86_64) TRIPLE=x86_64-unknown-linux-gnu ;;
  *) die "OM_SAM_ARCH must be arm64 or x86_64, not '$ARCH'" ;;
esac

# ---------------------------------------------------------------- tools
if [[ "$VENV_SAM" == "$ROOT/.peers/venv-sam" && -f "$ROOT/infra/peers.sh" ]] \
  && grep -q 'install-sam)' "$ROOT/infra/peers.sh"; then
  # idempotent: reinstalls only when requirements-sam.txt changed
  bash "$ROOT/infra/peers.sh" install-sam
elif [[ ! -x "$VENV_SAM/bin/sam" || ! -x "$VENV_SAM/bin/cargo-lambda" ]]; then
  [[ -f "$REQUIREMENTS" ]] || die "$REQUIREMENTS not found (it pins aws-sam-cli and cargo-lambda)"
  command -v python3 >/dev/null || die "python3 not found"
  say "creating ${VENV_SAM#"$ROOT"/} from ${REQUIREMENTS#"$ROOT"/} (takes a few minutes)"
  rm -rf "$VENV_SAM"
  python3 -m venv "$VENV_SAM"
  "$VENV_SAM/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
fi
[[ -x "$VENV_SAM/bin/sam" ]] || die "no sam in $VENV_SAM/bin"
[[ -x "$VENV_SAM/bin/cargo-lambda" ]] || die "no cargo-lambda in $VENV_SAM/bin"
# sam finds cargo-lambda (and cargo-lambda finds Zig via the venv's python) on PATH
export PATH="$VENV_SAM/bin:$HOME/.cargo/bin:$PATH"
command -v cargo >/dev/null || die "cargo not found"

SYSROOT="$(rustc --print sysroot)"
if [[ ! -d "$SYSROOT/lib/rustlib/$TRIPLE/lib" ]]; then
  die "the Rust standard library for $TRIPLE is not installed in $SYSROOT
  (rustup target add $TRIPLE). Where it cannot be installed, OM_SAM_ARCH=x86_64 builds
  for the host architecture instead."
fi

say "sam $("$VENV_SAM/bin/sam" --version | awk '{print $NF}'), $("$VENV_SAM/bin/cargo-lambda" lambda --version 2>/dev/null || echo cargo-lambda), $(cargo --version)"
[[ "$ARCH" == arm64 ]] || say "WARNING: building $ARCH; deploy this build only with --parameter-overrides Architecture=$ARCH"

# ---------------------------------------------------------------- build
cd "$ROOT"
t0=$SECONDS
# --config-file must be absolute: SAM CLI resolves a relative one against the
# template's directory, and silently ignores a relative "samconfig.toml" it cannot find.
sam build \
  --config-file "$ROOT/infra/samconfig.toml" \
  --template-file "$ROOT/template.yaml" \
  --build-dir "$BUILD_DIR" \
  --parameter-overrides "Architecture=$ARCH" \
  "$@"
say "sam build took $((SECONDS - t0)) s"

# ---------------------------------------------------------------- sizes
elf_arch() { # file -> aarch64 | x86_64 | other (ELF e_machine, little-endian)
  local m
  m="$(od -An -tx1 -j18 -N2 "$1" | tr -d ' \n')"
  case "$m" in
    b700) echo aarch64 ;;
    3e00) echo x86_64 ;;
    *) echo "other($m)" ;;
  esac
}

printf '\n%-26s %-8s %12s %9s\n' function arch bytes MB
total=0
missing=0
for fn in "${FUNCTIONS[@]}"; do
  bin="$BUILD_DIR/$fn/bootstrap"
  if [[ ! -f "$bin" ]]; then
    printf '%-26s %-8s %12s %9s\n' "$fn" - "not built" -
    missing=$((missing + 1))
    continue
  fi
  bytes="$(stat -c %s "$bin")"
  total=$((total + bytes))
  printf '%-26s %-8s %12d %9s\n' "$fn" "$(elf_arch "$bin")" "$bytes" \
    "$(awk -v b="$bytes" 'BEGIN { printf "%.2f", b / 1000000 }')"
done
printf '%-26s %-8s %12d %9s\n' total "" "$total" "$(awk -v b="$total" 'BEGIN { printf "%.2f", b / 1000000 }')"
echo "(MB = 10^6 bytes; Lambda limits: 50 MB zipped upload, 250 MB unzipped)"

# a subset build (function ids in "$@") legitimately leaves others unbuilt
if [[ $missing -gt 0 && $# -eq 0 ]]; then
  die "$missing function(s) have no bootstrap in ${BUILD_DIR#"$ROOT"/}"
fi
