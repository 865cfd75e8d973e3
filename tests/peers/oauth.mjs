// OAuth2 / OIDC peer for outgoing-mail's integration tests: an Entra-ID-like
// authorization server built on oauth2-mock-server (OAuth2Issuer + OAuth2Service).
//
// Usage: node oauth.mjs [port]   (or OM_OAUTH_PORT=...; listens on 127.0.0.1)
//
// oauth2-mock-server serves /authorize, /token, /jwks, /.well-known/openid-configuration
// and signs every JWT with its own RS256 key. Its hooks are plain synchronous
// EventEmitter events, so they can edit a redirect, a token payload or a token
// response, but cannot delay or reject a request. Everything it does not do
// (client authentication, single-use codes, PKCE errors in Entra's format,
// refresh-token rotation with reuse detection, slow/unavailable answers) runs in
// a small front handler on the same port before the request reaches the mock.
// Behaviour is chosen per request from substrings ("flags") of the client_id,
// never by global switches, so parallel tests do not interfere.
// See README.md in this folder for the contract.
import http from 'node:http';
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { OAuth2Issuer, OAuth2Service } from 'oauth2-mock-server';

const port = Number(process.argv[2] || process.env.OM_OAUTH_PORT || 0);
const host = '127.0.0.1';
const TENANT = 'test-tenant';
const WRONG_ACCOUNT = 'someone.else@elsewhere.test';
const CODE_TTL_MS = 10 * 60 * 1000;

const issuer = new OAuth2Issuer();
await issuer.keys.generate('RS256');
const service = new OAuth2Service(issuer);

// ---- state (in memory, per process) -------------------------------------------------
const codes = new Map(); // code -> {clientId, redirectUri, scope, challenge, method, user, used, created}
const refreshTokens = new Map(); // refresh token -> {family, used}
const families = new Map(); // family id -> {clientId, user, scope, revoked, tokens:Set}
const stats = new Map(); // client_id -> counters

function count(clientId, what) {
  if (!clientId) return;
  let s = stats.get(clientId);
  if (!s) {
    s = { authorize: 0, authorization_code: 0, refresh_token: 0, invalid_grant: 0 };
    stats.set(clientId, s);
  }
  s[what] = (s[what] || 0) + 1;
}
const has = (clientId, flag) => (clientId || '').includes(flag);
const uuidFrom = (s) => {
  const h = createHash('sha256').update(s).digest('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20, 32)}`;
};
const s256 = (v) => createHash('sha256').update(v).digest('base64url');

function newRefreshToken(familyId) {
  const rt = `rt.${randomBytes(32).toString('base64url')}`;
  refreshTokens.set(rt, { family: familyId, used: false });
  families.get(familyId).tokens.add(rt);
  return rt;
}

// ---- responses ----------------------------------------------------------------------
function sendJson(res, status, body) {
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'cache-control': 'no-store',
    pragma: 'no-cache',
  });
  res.end(JSON.stringify(body));
}
// An Entra-ID-style error body: error, error_description starting with "AADSTSnnn: ",
// error_codes, timestamp, trace_id, correlation_id.
function aadError(res, status, error, code, text, clientId) {
  const traceId = randomUUID();
  const correlationId = randomUUID();
  const ts = new Date().toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
  if (error === 'invalid_grant') count(clientId, 'invalid_grant');
  sendJson(res, status, {
    error,
    error_description: `AADSTS${code}: ${text} Trace ID: ${traceId} Correlation ID: ${correlationId} Timestamp: ${ts}`,
    error_codes: [code],
    timestamp: ts,
    trace_id: traceId,
    correlation_id: correlationId,
    error_uri: `http://${host}:${port}/error?code=${code}`,
  });
}

async function readBody(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  return Buffer.concat(chunks).toString('utf8');
}

function basicCredentials(req) {
  const m = /^Basic\s+(\S+)\s*$/i.exec(req.headers.authorization || '');
  if (!m) return undefined;
  const raw = Buffer.from(m[1], 'base64').toString('utf8');
  const i = raw.indexOf(':');
  if (i < 0) return undefined;
  // RFC 6749 2.3.1: client id and secret are form-urlencoded before Basic encoding.
  const dec = (s) => {
    try {
      return decodeURIComponent(s.replace(/\+/g, ' '));
    } catch {
      return s;
    }
  };
  return { id: dec(raw.slice(0, i)), secret: dec(raw.slice(i + 1)) };
}

// ---- /token front handler: returns true when it answered the request itself ---------
async function tokenFront(req, res) {
  const raw = await readBody(req);
  const body = Object.fromEntries(new URLSearchParams(raw));
  req.body = body; // the mock's body parsers skip a request whose body was already read
  const basic = basicCredentials(req);
  const clientId = basic ? basic.id : body.client_id;
  const grant = body.grant_type;
  if (grant === 'authorization_code' || grant === 'refresh_token') count(clientId, grant);

  if (!clientId) {
    aadError(res, 400, 'invalid_request', 900144, "The request body must contain the following parameter: 'client_id'.");
    return true;
  }
  if (has(clientId, 'slow')) await new Promise((r) => setTimeout(r, 20_000));
  if (has(clientId, 'unavailable')) {
    res.writeHead(503, { 'content-type': 'text/html; charset=utf-8', 'retry-after': '5' });
    res.end('<html><body><h1>Service Unavailable</h1><p>The service is temporarily unavailable.</p></body></html>\n');
    return true;
  }
  if (has(clientId, 'expiredsecret')) {
    aadError(res, 400, 'invalid_client', 7000222,
      `The provided client secret keys for app '${clientId}' are expired. Visit the Azure portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate credentials for added security: https://aka.ms/certCreds.`,
      clientId);
    return true;
  }
  // client authentication: Basic when the client_id says "basicauth", form body otherwise
  let secret;
  if (has(clientId, 'basicauth')) {
    if (!basic) {
      aadError(res, 401, 'invalid_client', 7000218,
        "The request body must contain the following parameter: 'client_assertion' or 'client_secret'. (this test client must authenticate with HTTP Basic)", clientId);
      return true;
    }
    secret = basic.secret;
  } else {
    if (basic || !body.client_secret) {
      aadError(res, 401, 'invalid_client', 7000218,
        "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.", clientId);
      return true;
    }
    secret = body.client_secret;
  }
  if (secret === 'wrong-secret') {
    aadError(res, 401, 'invalid_client', 7000215,
      `Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '${clientId}'.`,
      clientId);
    return true;
  }

  if (grant === 'authorization_code') {
    const entry = codes.get(body.code || '');
    if (!entry || entry.clientId !== clientId) {
      aadError(res, 400, 'invalid_grant', 70000, 'The provided value for the input parameter \'code\' is not valid.', clientId);
      return true;
    }
    if (entry.used) {
      aadError(res, 400, 'invalid_grant', 54005,
        'OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an existing refresh token.', clientId);
      return true;
    }
    entry.used = true; // any redemption attempt consumes the code
    if (Date.now() - entry.created > CODE_TTL_MS) {
      aadError(res, 400, 'invalid_grant', 70008,
        'The provided authorization code or refresh token has expired due to inactivity. Send a new interactive authorization request for this user and resource.', clientId);
      return true;
    }
    if (body.redirect_uri !== entry.redirectUri) {
      aadError(res, 400, 'invalid_grant', 500112,
        `The reply address '${body.redirect_uri ?? ''}' does not match the reply address '${entry.redirectUri}' provided when requesting Authorization code.`, clientId);
      return true;
    }
    if (entry.challenge !== undefined) {
      const v = body.code_verifier || '';
      const ok = /^[A-Za-z0-9\-._~]{43,128}$/.test(v) &&
        (entry.method === 'plain' ? v === entry.challenge : s256(v) === entry.challenge);
      if (!ok) {
        aadError(res, 400, 'invalid_grant', 501481,
          'The Code_Verifier does not match the code_challenge supplied in the authorization request.', clientId);
        return true;
      }
    }
    delete body.code_verifier; // checked here; the mock's own PKCE check would only repeat it
    const familyId = randomUUID();
    families.set(familyId, { clientId, user: entry.user, scope: entry.scope, revoked: false, tokens: new Set() });
    req.om = {
      clientId,
      grant,
      scope: body.scope || entry.scope,
      user: has(clientId, 'wrongaccount') ? WRONG_ACCOUNT : entry.user,
      refreshToken: has(clientId, 'norefresh') ? undefined : newRefreshToken(familyId),
      shortLived: has(clientId, 'shortlived'),
    };
    return false;
  }

  if (grant === 'refresh_token') {
    const rt = refreshTokens.get(body.refresh_token || '');
    const family = rt && families.get(rt.family);
    if (has(clientId, 'revoked')) {
      if (family) revokeFamily(family);
      aadError(res, 400, 'invalid_grant', 50173,
        `The provided grant has expired due to it being revoked, a fresh auth token is needed. The user might have changed or reset their password. The grant was issued on '${new Date(Date.now() - 3600_000).toISOString()}' and the TokensValidFrom date (before which tokens are not valid) for this user is '${new Date().toISOString()}'.`,
        clientId);
      return true;
    }
    if (!rt || !family || rt.used || family.revoked || family.clientId !== clientId) {
      if (family) revokeFamily(family); // reuse of a rotated token: the whole grant family dies
      aadError(res, 400, 'invalid_grant', 70008,
        'The provided authorization code or refresh token has expired due to inactivity. Send a new interactive authorization request for this user and resource.', clientId);
      return true;
    }
    rt.used = true;
    req.om = {
      clientId,
      grant,
      scope: body.scope || family.scope,
      user: has(clientId, 'wrongaccount') ? WRONG_ACCOUNT : family.user,
      refreshToken: newRefreshToken(rt.family),
      shortLived: false,
    };
    return false;
  }
  return false; // other grants: plain oauth2-mock-server behaviour
}

function revokeFamily(family) {
  family.revoked = true;
  for (const t of family.tokens) {
    const e = refreshTokens.get(t);
    if (e) e.used = true;
  }
}

// ---- oauth2-mock-server hooks -------------------------------------------------------
service.on('beforeAuthorizeRedirect', (redirect, req) => {
  const q = req.query;
  const clientId = String(q.client_id || '');
  const url = redirect.url;
  const code = url.searchParams.get('code');
  count(clientId, 'authorize');
  if (has(clientId, 'decline')) {
    url.searchParams.delete('code');
    url.searchParams.set('error', 'access_denied');
    url.searchParams.set('error_description', 'AADSTS65004: User declined to consent to access the app.');
    return;
  }
  if (code) {
    codes.set(code, {
      clientId,
      redirectUri: String(q.redirect_uri),
      scope: String(q.scope || ''),
      challenge: q.code_challenge ? String(q.code_challenge) : undefined,
      method: String(q.code_challenge_method || 'plain'),
      user: String(q.login_hint || 'unknown.user@tenant.test'),
      used: false,
      created: Date.now(),
    });
  }
});

service.on('beforeTokenSigning', (token, req) => {
  const om = req.om;
  if (!om) return;
  const p = token.payload;
  const common = {
    sub: uuidFrom(`sub:${om.user.toLowerCase()}:${om.clientId}`),
    oid: uuidFrom(`oid:${om.user.toLowerCase()}`),
    tid: TENANT,
    preferred_username: om.user,
    email: om.user,
    name: om.user.split('@')[0],
  };
  if (p.scope !== undefined) {
    // the access token (the id token is the one without a scope claim)
    const scopes = om.scope.split(/\s+/).filter(Boolean);
    const resource = scopes.find((s) => s.includes('://'));
    const aud = resource ? new URL(resource).origin : om.clientId;
    const scp = scopes
      .filter((s) => s !== 'offline_access')
      .map((s) => (s.includes('://') ? s.slice(s.lastIndexOf('/') + 1) : s))
      .join(' ');
    Object.assign(p, common, { upn: om.user, aud, scp, scope: om.scope, appid: om.clientId, azp: om.clientId });
    delete p.amr;
    if (om.shortLived) p.exp = p.iat + 2;
  } else {
    Object.assign(p, common, { aud: om.clientId, ver: '2.0' });
    delete p.amr;
  }
});

service.on('beforeResponse', (response, req) => {
  const om = req.om;
  if (!om || response.statusCode !== 200) return;
  const b = response.body;
  b.scope = om.scope;
  if (om.refreshToken) b.refresh_token = om.refreshToken;
  else delete b.refresh_token;
  if (has(om.clientId, 'noidtoken')) delete b.id_token;
  b.expires_in = om.shortLived ? 2 : 3600;
  b.ext_expires_in = b.expires_in;
});

// ---- HTTP server: control endpoint + front handler + the mock -----------------------
const mock = service.requestHandler;
const server = http.createServer(async (req, res) => {
  const t0 = Date.now();
  res.on('finish', () => {
    const id = (req.body && req.body.client_id) || (req.om && req.om.clientId) || new URL(req.url, 'http://x').searchParams.get('client_id') || '';
    const grant = req.body && req.body.grant_type ? ` ${req.body.grant_type}` : '';
    console.log(`${req.method} ${req.url.split('?')[0]}${grant} client_id=${id} -> ${res.statusCode} (${Date.now() - t0} ms)`);
  });
  try {
    const url = new URL(req.url, `http://${host}`);
    if (req.method === 'GET' && url.pathname === '/_control/stats') {
      const id = url.searchParams.get('client_id') || '';
      sendJson(res, 200, { authorize: 0, authorization_code: 0, refresh_token: 0, invalid_grant: 0, ...stats.get(id) });
      return;
    }
    if (req.method === 'GET' && url.pathname === '/_control/health') {
      sendJson(res, 200, { ok: true, issuer: issuer.url });
      return;
    }
    if (req.method === 'GET' && url.pathname === '/authorize' && !url.searchParams.get('client_id')) {
      aadError(res, 400, 'invalid_request', 900144, "The request body must contain the following parameter: 'client_id'.");
      return;
    }
    if (req.method === 'POST' && url.pathname === '/token') {
      if (await tokenFront(req, res)) return;
    }
    mock(req, res);
  } catch (err) {
    console.error('oauth peer error:', err);
    if (!res.headersSent) sendJson(res, 500, { error: 'server_error', error_description: String(err) });
  }
});
// Outlive the idle timeouts of client pools (hyper: 90 s), so a client never reuses a
// connection the server is closing at that moment (node's default is 5 s).
server.keepAliveTimeout = 120_000;
server.headersTimeout = 125_000;
server.listen(port, host, () => {
  const actual = server.address().port;
  issuer.url = `http://${host}:${actual}`;
  console.log(`oauth peer listening on ${issuer.url}`);
});
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
    setTimeout(() => process.exit(0), 500).unref();
  });
}
