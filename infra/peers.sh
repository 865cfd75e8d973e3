#!/usr/bin/env bash
# Installs, starts and stops the real peers the integration tests talk to:
#   moto_server (DynamoDB + Secrets Manager), tests/peers/oauth.mjs (oauth2-mock-server,
#   Entra-ID-like), tests/peers/smtp.mjs (smtp-server, Exchange-Online-like).
#
#   infra/peers.sh install       venv .peers/venv from tests/peers/requirements.txt and
#                                `npm ci` in tests/peers (skipped when already up to date)
#   infra/peers.sh install-sam   venv .peers/venv-sam from tests/peers/requirements-sam.txt
#                                (aws-sam-cli, cargo-lambda; not needed by the tests)
#   infra/peers.sh start         (re)start all peers on free loopback ports, write .peers/env
#   infra/peers.sh stop          stop them
#   infra/peers.sh status        show what runs
#
# After `start`:  source .peers/env   (see tests/peers/README.md for the contract)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEERS_SRC="$ROOT/tests/peers"
STATE="$ROOT/.peers"
VENV="$STATE/venv"
VENV_SAM="$STATE/venv-sam"
# Run state (logs, certificates, pids, env) may live elsewhere, so that several runs on one
# machine (a developer's tests beside a benchmark) do not stop each other's peers:
# OM_PEERS_RUN=<dir> selects it (infra/test.sh uses one per invocation).
RUN="${OM_PEERS_RUN:-$STATE}"
LOGS="$RUN/logs"
TLS="$RUN/tls"
PIDS="$RUN/pids"
ENV_FILE="$RUN/env"
READY_TIMEOUT="${OM_PEERS_READY_TIMEOUT:-30}"

say() { printf 'peers: %s\n' "$*"; }
die() { printf 'peers: ERROR: %s\n' "$*" >&2; exit 1; }
sha() { sha256sum "$@" | sha256sum | cut -c1-64; }

# ---------------------------------------------------------------------------- install
install_venv() { # dir requirements-file...
  local dir="$1"; shift
  local stamp="$dir/.om-requirements.sha256" want
  want="$(sha "$@")"
  if [[ -x "$dir/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    say "python venv ${dir#"$ROOT"/} is up to date"
    return
  fi
  command -v python3 >/dev/null || die "python3 not found"
  say "creating python venv ${dir#"$ROOT"/} from ${*#"$ROOT"/} (takes a few minutes)"
  local t0=$SECONDS
  rm -rf "$dir"
  python3 -m venv "$dir"
  local args=()
  for f in "$@"; do args+=(-r "$f"); done
  "$dir/bin/python" -m pip install --quiet --disable-pip-version-check "${args[@]}"
  echo "$want" >"$stamp"
  say "python venv ready in $((SECONDS - t0)) s"
}

install_npm() {
  local stamp="$PEERS_SRC/node_modules/.om-lock.sha256" want
  command -v node >/dev/null || die "node not found (need Node >= 20.19)"
  command -v npm >/dev/null || die "npm not found"
  want="$(sha "$PEERS_SRC/package-lock.json")"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    say "node modules in tests/peers are up to date"
    return
  fi
  say "npm ci in tests/peers"
  local t0=$SECONDS
  (cd "$PEERS_SRC" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$want" >"$stamp"
  say "node modules ready in $((SECONDS - t0)) s"
}

cmd_install() {
  mkdir -p "$STATE"
  install_venv "$VENV" "$PEERS_SRC/requirements.txt"
  install_npm
  command -v openssl >/dev/null || die "openssl not found (apt-get install openssl)"
  command -v curl >/dev/null || die "curl not found (apt-get install curl)"
  say "install done"
}

cmd_install_sam() {
  mkdir -p "$STATE"
  install_venv "$VENV_SAM" "$PEERS_SRC/requirements-sam.txt"
  say "sam tools: $VENV_SAM/bin/sam, $VENV_SAM/bin/cargo-lambda (export SAM_CLI_TELEMETRY=0)"
}

# ---------------------------------------------------------------------------- helpers
# prints N distinct free loopback TCP ports, one per line
free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print("\n".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
EOF
}

gen_tls() {
  rm -rf "$TLS"
  mkdir -p "$TLS"
  (
    cd "$TLS"
    openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
      -keyout ca.key -out ca.pem -days 30 -sha256 \
      -subj "/CN=outgoing-mail throwaway test CA" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
      -keyout server.key -out server.csr -subj "/CN=localhost" 2>/dev/null
    cat >server.ext <<'EOF'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid,issuer
EOF
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
      -out server.pem -days 30 -sha256 -extfile server.ext 2>/dev/null
    rm -f server.csr server.ext ca.srl
    openssl verify -CAfile ca.pem server.pem >/dev/null
  ) || die "could not generate the test certificates in $TLS"
}

# start NAME LOGFILE CMD... : start in its own session (process group), record the pid
start_bg() {
  local name="$1" log="$2"; shift 2
  setsid "$@" </dev/null >"$log" 2>&1 &
  local pid=$!
  echo "$name $pid" >>"$PIDS"
}

# the pid belongs to the peer we started (guards against a recycled pid)
is_ours() {
  local name="$1" pid="$2" cmdline
  [[ -r "/proc/$pid/cmdline" ]] || return 1
  cmdline="$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline")" || return 1
  case "$name" in
    moto) [[ "$cmdline" == *moto_server* ]] ;;
    oauth) [[ "$cmdline" == *oauth.mjs* ]] ;;
    smtp) [[ "$cmdline" == *smtp.mjs* ]] ;;
    *) return 1 ;;
  esac
}

# the process exists and is not a zombie (during start-up its cmdline may still be the
# forked shell or setsid, so is_ours would be too early to judge)
alive() {
  local state
  state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" || return 1
  [[ -n "$state" && "$state" != Z ]]
}

wait_ready() { # name url pid log
  local name="$1" url="$2" pid="$3" log="$4" deadline=$((SECONDS + READY_TIMEOUT))
  while ((SECONDS < deadline)); do
    if ! alive "$pid"; then # (a dead child is a zombie until reaped: kill -0 would not see it)
      printf 'peers: ERROR: %s exited during start-up; last lines of %s:\n' "$name" "$log" >&2
      tail -n 30 "$log" >&2 || true
      cmd_stop >&2 || true
      exit 1
    fi
    if curl -s -o /dev/null --max-time 2 "$url"; then
      say "$name is up ($url)"
      return
    fi
    sleep 0.2
  done
  printf 'peers: ERROR: %s did not answer on %s within %s s; last lines of %s:\n' \
    "$name" "$url" "$READY_TIMEOUT" "$log" >&2
  tail -n 30 "$log" >&2 || true
  cmd_stop >&2 || true
  exit 1
}

# ---------------------------------------------------------------------------- start/stop
cmd_start() {
  [[ -x "$VENV/bin/moto_server" ]] || die "moto_server missing: run infra/peers.sh install first"
  [[ -d "$PEERS_SRC/node_modules/oauth2-mock-server" && -d "$PEERS_SRC/node_modules/smtp-server" ]] ||
    die "node modules missing: run infra/peers.sh install first"
  if [[ -f "$PIDS" ]]; then
    say "stopping the peers of a previous start"
    cmd_stop
  fi
  mkdir -p "$LOGS"
  rm -f "$ENV_FILE" "$PIDS"

  say "generating a throwaway CA and a server certificate for localhost/127.0.0.1 in ${TLS#"$ROOT"/}"
  gen_tls

  local ports p_moto p_oauth p_smtp p_tls p_plain p_ctl p_dead
  mapfile -t ports < <(free_ports 7)
  ((${#ports[@]} == 7)) || die "could not find free ports"
  p_moto=${ports[0]} p_oauth=${ports[1]} p_smtp=${ports[2]} p_tls=${ports[3]}
  p_plain=${ports[4]} p_ctl=${ports[5]} p_dead=${ports[6]}
  local moto_url="http://127.0.0.1:$p_moto" oauth_url="http://127.0.0.1:$p_oauth"
  local ctl_url="http://127.0.0.1:$p_ctl"

  say "starting moto_server on 127.0.0.1:$p_moto (log $LOGS/moto.log)"
  start_bg moto "$LOGS/moto.log" "$VENV/bin/moto_server" -H 127.0.0.1 -p "$p_moto"
  say "starting oauth peer on 127.0.0.1:$p_oauth (log $LOGS/oauth.log)"
  start_bg oauth "$LOGS/oauth.log" node "$PEERS_SRC/oauth.mjs" "$p_oauth"
  say "starting smtp peer on 127.0.0.1:$p_smtp/$p_tls/$p_plain, control $p_ctl (log $LOGS/smtp.log)"
  start_bg smtp "$LOGS/smtp.log" env \
    OM_SMTP_PORT="$p_smtp" OM_SMTP_TLS_PORT="$p_tls" OM_SMTP_PLAIN_PORT="$p_plain" \
    OM_SMTP_CONTROL_PORT="$p_ctl" OM_TLS_CERT="$TLS/server.pem" OM_TLS_KEY="$TLS/server.key" \
    OM_TEST_OAUTH_URL="$oauth_url" node "$PEERS_SRC/smtp.mjs"

  local name pid
  while read -r name pid; do
    case "$name" in
      moto) wait_ready moto "$moto_url/moto-api/" "$pid" "$LOGS/moto.log" ;;
      oauth) wait_ready oauth "$oauth_url/.well-known/openid-configuration" "$pid" "$LOGS/oauth.log" ;;
      smtp) wait_ready smtp "$ctl_url/health" "$pid" "$LOGS/smtp.log" ;;
    esac
  done <"$PIDS"

  cat >"$ENV_FILE.tmp" <<EOF
# written by infra/peers.sh start; source it before running the integration tests
export OM_TEST_MOTO_URL=$moto_url
export OM_TEST_OAUTH_URL=$oauth_url
export OM_TEST_SMTP_HOST=localhost
export OM_TEST_SMTP_PORT=$p_smtp
export OM_TEST_SMTP_TLS_PORT=$p_tls
export OM_TEST_SMTP_PLAIN_PORT=$p_plain
export OM_TEST_SMTP_CONTROL_URL=$ctl_url
export OM_TEST_CA=$TLS/ca.pem
export OM_TEST_DEAD_PORT=$p_dead
export AWS_REGION=us-east-1
export AWS_DEFAULT_REGION=us-east-1
export AWS_ACCESS_KEY_ID=testing
export AWS_SECRET_ACCESS_KEY=testing
export AWS_EC2_METADATA_DISABLED=true
EOF
  mv "$ENV_FILE.tmp" "$ENV_FILE"
  say "all peers up; environment in .peers/env (source .peers/env)"
}

cmd_stop() {
  if [[ ! -f "$PIDS" ]]; then
    say "no peers recorded as running"
    rm -f "$ENV_FILE"
    return 0
  fi
  local name pid live=()
  while read -r name pid; do
    [[ -n "${pid:-}" ]] || continue
    if is_ours "$name" "$pid"; then
      say "stopping $name (pid $pid)"
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
      live+=("$name:$pid")
    fi
  done <"$PIDS"
  local deadline=$((SECONDS + 10)) entry
  for entry in "${live[@]}"; do
    name="${entry%%:*}" pid="${entry##*:}"
    while is_ours "$name" "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
    if is_ours "$name" "$pid"; then
      say "$name (pid $pid) ignored SIGTERM, sending SIGKILL"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  rm -f "$PIDS" "$ENV_FILE"
  say "stopped"
}

cmd_status() {
  if [[ ! -f "$PIDS" ]]; then
    say "not running"
    return 0
  fi
  local name pid rc=0
  while read -r name pid; do
    if is_ours "$name" "$pid"; then say "$name running (pid $pid)"; else say "$name NOT running (pid $pid)"; rc=1; fi
  done <"$PIDS"
  [[ -f "$ENV_FILE" ]] && cat "$ENV_FILE"
  return $rc
}

case "${1:-}" in
  install) cmd_install ;;
  install-sam) cmd_install_sam ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  restart) cmd_stop; cmd_start ;;
  status) cmd_status ;;
  *) echo "usage: $0 install|install-sam|start|stop|restart|status" >&2; exit 2 ;;
esac
