#!/usr/bin/env bash
# Checks the running test peers against the contract in README.md:
#   infra/peers.sh start && tests/peers/selftest.sh
# Uses the variables of .peers/env (sourced when OM_TEST_OAUTH_URL is not set already).
# Exits non-zero on the first failed check. Takes ~5 s.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [[ -z "${OM_TEST_OAUTH_URL:-}" ]]; then
  [[ -f "$ROOT/.peers/env" ]] || { echo "selftest: no .peers/env; run infra/peers.sh start" >&2; exit 1; }
  # shellcheck disable=SC1091
  source "$ROOT/.peers/env"
fi
PY="$ROOT/.peers/venv/bin/python" # has boto3 (a moto dependency) for the moto check
[[ -x "$PY" ]] || PY=python3
exec "$PY" - <<'PYEOF'
import base64, hashlib, http.client, json, os, secrets, smtplib, socket, ssl, sys, time, uuid
import urllib.parse, urllib.request

E = os.environ
OAUTH = E["OM_TEST_OAUTH_URL"]
CTL = E["OM_TEST_SMTP_CONTROL_URL"]
HOST = E["OM_TEST_SMTP_HOST"]
CA = E["OM_TEST_CA"]
REDIRECT = "http://127.0.0.1:9/callback"
SCOPE = "https://outlook.office.com/SMTP.Send offline_access openid email profile"
passed = 0

def check(cond, what, detail=""):
    global passed
    if not cond:
        print(f"selftest: FAIL: {what} {detail}", file=sys.stderr)
        print(f"selftest: {passed} passed, 1 failed")
        sys.exit(1)
    passed += 1
    print(f"selftest: ok   {what}")

def http_req(method, url, body=None, headers=None, timeout=10):
    u = urllib.parse.urlsplit(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    c.request(method, u.path + ("?" + u.query if u.query else ""), body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, dict((k.lower(), v) for k, v in r.getheaders()), data

def get_json(url):
    s, _, d = http_req("GET", url)
    return s, json.loads(d)

def claims(jwt):
    p = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))

def pkce():
    v = secrets.token_urlsafe(48)
    return v, base64.urlsafe_b64encode(hashlib.sha256(v.encode()).digest()).decode().rstrip("=")

def authorize(client_id, user, challenge, state="st-" + uuid.uuid4().hex):
    q = urllib.parse.urlencode(dict(client_id=client_id, redirect_uri=REDIRECT, response_type="code",
        scope=SCOPE, state=state, code_challenge=challenge, code_challenge_method="S256",
        login_hint=user, prompt="select_account", extra_param="x"))
    s, h, _ = http_req("GET", f"{OAUTH}/authorize?{q}")
    loc = urllib.parse.urlsplit(h.get("location", ""))
    return s, dict(urllib.parse.parse_qsl(loc.query)), state

def token(form, basic=None, timeout=10):
    headers = {"content-type": "application/x-www-form-urlencoded"}
    if basic:
        headers["authorization"] = "Basic " + base64.b64encode(
            f"{urllib.parse.quote(basic[0])}:{urllib.parse.quote(basic[1])}".encode()).decode()
    s, h, d = http_req("POST", f"{OAUTH}/token", urllib.parse.urlencode(form), headers, timeout)
    try:
        return s, json.loads(d), h
    except ValueError:
        return s, d.decode(), h

def login(flags="selftest", user=None, secret="s3cret", basic=False):
    cid = f"{flags}-{uuid.uuid4()}"
    user = user or f"u-{uuid.uuid4()}@tenant.test"
    v, c = pkce()
    s, q, _ = authorize(cid, user, c)
    form = dict(grant_type="authorization_code", code=q.get("code", ""), redirect_uri=REDIRECT, code_verifier=v)
    if basic:
        s, b, _ = token(form, basic=(cid, secret))
    else:
        s, b, _ = token(dict(form, client_id=cid, client_secret=secret))
    return cid, user, s, b

def xoauth2(user, tok):
    return base64.b64encode(f"user={user}\x01auth=Bearer {tok}\x01\x01".encode()).decode()

def ctx():
    return ssl.create_default_context(cafile=CA)

def smtp_starttls():
    s = smtplib.SMTP(HOST, int(E["OM_TEST_SMTP_PORT"]), timeout=10)
    s.ehlo("selftest.local")
    s.starttls(context=ctx())
    s.ehlo("selftest.local")
    return s

# ---------------------------------------------------------------- OAuth peer
s, conf = get_json(f"{OAUTH}/.well-known/openid-configuration")
check(s == 200 and conf["issuer"] == OAUTH, "discovery document names the issuer", conf.get("issuer"))

cid = f"selftest-{uuid.uuid4()}"
user = f"u-{uuid.uuid4()}@tenant.test"
verifier, challenge = pkce()
s, q, state = authorize(cid, user, challenge)
check(s == 302 and q.get("code") and q.get("state") == state, "authorize redirects with code and state", q)
code = q["code"]

s, b, h = token(dict(grant_type="authorization_code", client_id=cid, code=code, redirect_uri=REDIRECT, code_verifier=verifier))
check(s == 401 and b["error"] == "invalid_client", "token without client_secret -> 401 invalid_client", b)
# (that attempt failed client authentication, so it did not consume the code)
s, b, h = token(dict(grant_type="authorization_code", client_id=cid, client_secret="s3cret", code=code,
                     redirect_uri=REDIRECT, code_verifier=verifier, scope=SCOPE))
check(s == 200 and b["token_type"] == "Bearer" and b["expires_in"] == 3600, "code exchange succeeds", b)
check(h.get("cache-control") == "no-store", "token response is no-store")
at, idt, rt1 = claims(b["access_token"]), claims(b["id_token"]), b["refresh_token"]
check(at["preferred_username"] == user == at["email"] == at["upn"] and "SMTP.Send" in at["scp"].split()
      and at["aud"] == "https://outlook.office.com" and at["exp"] > time.time() + 3500, "access token claims", at)
check(idt["aud"] == cid and idt["iss"] == OAUTH and idt["preferred_username"] == user == idt["email"]
      and idt["tid"] == "test-tenant" and idt["exp"] > idt["iat"], "id_token claims", idt)

s, b, _ = token(dict(grant_type="authorization_code", client_id=cid, client_secret="s3cret", code=code,
                     redirect_uri=REDIRECT, code_verifier=verifier))
check(s == 400 and b["error"] == "invalid_grant" and "AADSTS54005" in b["error_description"]
      and b["error_codes"] == [54005], "second use of a code -> AADSTS54005", b)

v2, c2 = pkce()
_, q2, _ = authorize(cid, user, c2)
s, b, _ = token(dict(grant_type="authorization_code", client_id=cid, client_secret="s3cret", code=q2["code"],
                     redirect_uri=REDIRECT, code_verifier=pkce()[0]))
check(s == 400 and b["error"] == "invalid_grant" and "AADSTS501481" in b["error_description"], "PKCE mismatch -> AADSTS501481", b)
v3, c3 = pkce()
_, q3, _ = authorize(cid, user, c3)
s, b, _ = token(dict(grant_type="authorization_code", client_id=cid, client_secret="s3cret", code=q3["code"],
                     redirect_uri=REDIRECT + "/other", code_verifier=v3))
check(s == 400 and b["error"] == "invalid_grant", "redirect_uri mismatch -> invalid_grant", b)

s, b, _ = token(dict(grant_type="refresh_token", client_id=cid, client_secret="s3cret", refresh_token=rt1, scope=SCOPE))
check(s == 200 and b["refresh_token"] != rt1 and claims(b["access_token"])["preferred_username"] == user,
      "refresh rotates the refresh token", b)
rt2, access_token = b["refresh_token"], b["access_token"]
s, b, _ = token(dict(grant_type="refresh_token", client_id=cid, client_secret="s3cret", refresh_token=rt1))
check(s == 400 and b["error"] == "invalid_grant" and b["error_codes"] == [70008], "reusing a rotated refresh token -> AADSTS70008", b)
s, b, _ = token(dict(grant_type="refresh_token", client_id=cid, client_secret="s3cret", refresh_token=rt2))
check(s == 400 and b["error"] == "invalid_grant", "reuse revoked the whole family (newest token dead too)", b)

s, st = get_json(f"{OAUTH}/_control/stats?client_id={urllib.parse.quote(cid)}")
check(st == {"authorize": 3, "authorization_code": 5, "refresh_token": 3, "invalid_grant": 5}, "per-client stats", st)

# flags
_, q, _ = authorize(f"decline-{uuid.uuid4()}", user, challenge)
check(q.get("error") == "access_denied" and "AADSTS65004" in q.get("error_description", "") and "code" not in q
      and q.get("state"), "decline -> access_denied redirect", q)
c, u, s, b = login("expiredsecret")
check(s == 400 and b["error"] == "invalid_client" and b["error_codes"] == [7000222] and c in b["error_description"], "expiredsecret -> 7000222", b)
c, u, s, b = login("selftest", secret="wrong-secret")
check(s == 401 and b["error"] == "invalid_client" and b["error_codes"] == [7000215], "wrong-secret -> 7000215", b)
c, u, s, b = login("unavailable")
check(s == 503 and isinstance(b, str), "unavailable -> 503 with a non-JSON body", (s, b))
c, u, s, b = login("basicauth")
check(s == 401, "basicauth client with secret in body -> 401", b)
c, u, s, b = login("basicauth", basic=True)
check(s == 200 and "refresh_token" in b, "basicauth client with HTTP Basic -> 200", b)
c, u, s, b = login("norefresh-noidtoken")
check(s == 200 and "refresh_token" not in b and "id_token" not in b, "norefresh/noidtoken omit the tokens", b)
c, u, s, b = login("wrongaccount")
check(s == 200 and claims(b["id_token"])["preferred_username"] == "someone.else@elsewhere.test"
      and claims(b["access_token"])["preferred_username"] == "someone.else@elsewhere.test", "wrongaccount names another user", b)
c, u, s, b = login("revoked")
s2, b2, _ = token(dict(grant_type="refresh_token", client_id=c, client_secret="s3cret", refresh_token=b["refresh_token"]))
check(s2 == 400 and b2["error"] == "invalid_grant" and b2["error_codes"] == [50173], "revoked -> AADSTS50173 on refresh", b2)
c, u, s, b = login("shortlived")
short_user, short_token, short_client, short_rt = u, b["access_token"], c, b["refresh_token"]
check(s == 200 and b["expires_in"] == 2 and claims(short_token)["exp"] - time.time() <= 3, "shortlived -> expires_in 2", b)
try:
    c = f"slow-{uuid.uuid4()}"
    token(dict(grant_type="refresh_token", client_id=c, client_secret="s3cret", refresh_token="x"), timeout=1.5)
    check(False, "slow -> no answer within 1.5 s")
except (socket.timeout, TimeoutError):
    check(True, "slow -> no answer within 1.5 s")

# ---------------------------------------------------------------- SMTP peer
s = smtplib.SMTP(HOST, int(E["OM_TEST_SMTP_PORT"]), timeout=10)
s.ehlo("selftest.local")
check(s.has_extn("starttls"), "STARTTLS port offers STARTTLS")
code, msg = s.docmd("AUTH", "XOAUTH2 " + xoauth2(user, access_token))
check(code == 538, "AUTH before STARTTLS is refused", (code, msg))
s.starttls(context=ctx())  # verifies the chain against OM_TEST_CA and the name "localhost"
s.ehlo("selftest.local")
check("XOAUTH2" in s.esmtp_features.get("auth", ""), "AUTH XOAUTH2 offered after STARTTLS", s.esmtp_features)
code, msg = s.docmd("AUTH", "XOAUTH2 " + xoauth2(user, access_token))
check(code == 235, "XOAUTH2 with the refreshed access token -> 235", (code, msg))
rcpt = f"rcpt-{uuid.uuid4()}@example.test"
body = f"From: {user}\r\nTo: {rcpt}\r\nSubject: selftest\r\nMessage-ID: <{uuid.uuid4()}@tenant.test>\r\n\r\nhello\r\n"
s.sendmail(user.upper(), [rcpt], body)
check(True, "message accepted (MAIL FROM compared case-insensitively)")
try:
    s.sendmail(f"other-{uuid.uuid4()}@tenant.test", [rcpt], body)
    check(False, "send-as another address is refused")
except smtplib.SMTPDataError as e:
    check(e.smtp_code == 554 and b"5.2.252 SendAsDenied" in e.smtp_error, "send-as another address -> 554 5.2.252", e)
for local, want in (("throttled", (432, b"4.3.2")), ("nosuchuser", (550, b"5.1.1")), ("quota", (554, b"5.2.0"))):
    s.rset()
    s.mail(user)
    code, msg = s.rcpt(f"{local}-{uuid.uuid4()}@example.test")
    check((code, msg[:5]) == want, f"RCPT {local} -> {want[0]} {want[1].decode()}", (code, msg))
s.quit()

s, msgs = get_json(f"{CTL}/messages?rcpt={urllib.parse.quote(rcpt.upper())}")
check(s == 200 and len(msgs) == 1 and msgs[0]["auth_user"] == user and msgs[0]["auth_method"] == "XOAUTH2"
      and msgs[0]["to"] == [rcpt] and "Subject: selftest" in msgs[0]["raw"] and msgs[0]["from"].lower() == user,
      "control /messages returns the message", msgs)

def auth_reply(user_, tok=None, password=None, port=None):
    s = smtp_starttls()
    if tok is not None:
        r = s.docmd("AUTH", "XOAUTH2 " + xoauth2(user_, tok))
    else:
        r = s.docmd("AUTH", "PLAIN " + base64.b64encode(f"\0{user_}\0{password}".encode()).decode())
    s.close()
    return r

r = auth_reply(f"u-{uuid.uuid4()}@tenant.test", access_token)
check(r == (535, b"5.7.3 Authentication unsuccessful"), "XOAUTH2 user= other than the token's user -> 535 5.7.3", r)
r = auth_reply(user, access_token[:-4] + "AAAA")
check(r[0] == 535 and r[1].startswith(b"5.7.3"), "XOAUTH2 with a bad signature -> 535 5.7.3", r)
r = auth_reply(f"smtpdisabled-{uuid.uuid4()}@tenant.test", access_token)
check(r[0] == 535 and r[1].startswith(b"5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled"), "smtpdisabled -> 535 5.7.139", r)
r = auth_reply(f"securitydefaults-{uuid.uuid4()}@tenant.test", access_token)
check(r[0] == 535 and b"security defaults" in r[1], "securitydefaults -> 535 5.7.139", r)
r = auth_reply(user, password="correct-horse")
check(r[0] == 235, "PLAIN with correct-horse -> 235", r)
r = auth_reply(user, password="nope")
check(r == (535, b"5.7.8 Username and Password not accepted"), "PLAIN with a wrong password -> 535 5.7.8", r)
time.sleep(max(0, claims(short_token)["exp"] + 1 - time.time()))
r = auth_reply(short_user, short_token)
check(r[0] == 535 and r[1].startswith(b"5.7.3"), "expired (shortlived) token -> 535 5.7.3", r)
s2, b2, _ = token(dict(grant_type="refresh_token", client_id=short_client, client_secret="s3cret", refresh_token=short_rt))
check(s2 == 200 and b2["expires_in"] == 3600, "shortlived: refreshed token lives 3600 s", b2)

# two sessions at once, then stats
time.sleep(0.3)
a, b_ = smtp_starttls(), smtp_starttls()
for conn in (a, b_):
    check(conn.docmd("AUTH", "XOAUTH2 " + xoauth2(user, access_token))[0] == 235, "concurrent session authenticates")
a.quit(); b_.quit()
time.sleep(0.2)
s, st = get_json(f"{CTL}/stats?user={urllib.parse.quote(user.upper())}")
check(st["auth_ok"] == 4 and st["auth_failed"] == 2 and st["messages"] == 1 and st["connections"] == 6
      and st["max_concurrent"] == 2 and st["active"] == 0, "control /stats per user", st)

# implicit TLS and the no-STARTTLS listener
s = smtplib.SMTP_SSL(HOST, int(E["OM_TEST_SMTP_TLS_PORT"]), timeout=10, context=ctx())
s.ehlo("selftest.local")
code, msg = s.docmd("AUTH", "XOAUTH2 " + xoauth2(user, access_token))
check(code == 235, "implicit TLS port: XOAUTH2 -> 235", (code, msg))
s.quit()
s = smtplib.SMTP(HOST, int(E["OM_TEST_SMTP_PLAIN_PORT"]), timeout=10)
s.ehlo("selftest.local")
check(not s.has_extn("starttls"), "plain port does not offer STARTTLS")
check(s.docmd("STARTTLS")[0] >= 500, "plain port refuses STARTTLS")
s.quit()

# dead port
try:
    socket.create_connection(("127.0.0.1", int(E["OM_TEST_DEAD_PORT"])), timeout=2).close()
    check(False, "nothing listens on OM_TEST_DEAD_PORT")
except ConnectionRefusedError:
    check(True, "nothing listens on OM_TEST_DEAD_PORT")

# ---------------------------------------------------------------- moto
try:
    import boto3
except ImportError:
    boto3 = None
if boto3:
    ddb = boto3.client("dynamodb", endpoint_url=E["OM_TEST_MOTO_URL"])
    name = f"selftest-{uuid.uuid4()}"
    ddb.create_table(TableName=name, KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                     AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}], BillingMode="PAY_PER_REQUEST")
    ddb.put_item(TableName=name, Item={"pk": {"S": "a"}})
    check(ddb.get_item(TableName=name, Key={"pk": {"S": "a"}})["Item"]["pk"]["S"] == "a", "moto: DynamoDB table round trip")
    ddb.delete_table(TableName=name)
    sm = boto3.client("secretsmanager", endpoint_url=E["OM_TEST_MOTO_URL"])
    sid = f"selftest/{uuid.uuid4()}"
    sm.create_secret(Name=sid, SecretString="v1")
    sm.put_secret_value(SecretId=sid, SecretString="v2")
    check(sm.get_secret_value(SecretId=sid)["SecretString"] == "v2", "moto: Secrets Manager round trip")
    sm.delete_secret(SecretId=sid, ForceDeleteWithoutRecovery=True)
else:
    s, _, _ = http_req("GET", E["OM_TEST_MOTO_URL"] + "/moto-api/")
    check(s == 200, "moto answers")

print(f"selftest: {passed} passed, 0 failed")
PYEOF
