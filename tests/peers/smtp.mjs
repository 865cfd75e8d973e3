// SMTP peer for outgoing-mail's integration tests: an Exchange-Online-like submission
// server built on nodemailer's smtp-server, plus a small HTTP control endpoint that
// tells tests what it received.
//
// Configuration (environment):
//   OM_SMTP_PORT          STARTTLS listener (AUTH refused before STARTTLS)
//   OM_SMTP_TLS_PORT      implicit-TLS listener
//   OM_SMTP_PLAIN_PORT    listener that does NOT offer STARTTLS (for "TLS required" errors)
//   OM_SMTP_CONTROL_PORT  HTTP control endpoint (127.0.0.1)
//   OM_TLS_CERT, OM_TLS_KEY   PEM server certificate (for "localhost"/127.0.0.1) and key
//   OM_TEST_OAUTH_URL     issuer URL of the OAuth peer; XOAUTH2 tokens are checked
//                         against its /jwks
// Behaviour is chosen per request from substrings of the mailbox addresses, never by
// global switches, so parallel tests do not interfere. See README.md for the contract.
import http from 'node:http';
import { readFileSync } from 'node:fs';
import { SMTPServer } from 'smtp-server';
import { createRemoteJWKSet, jwtVerify } from 'jose';

const env = (name) => {
  const v = process.env[name];
  if (!v) {
    console.error(`smtp peer: ${name} is not set`);
    process.exit(2);
  }
  return v;
};
const ports = {
  starttls: Number(env('OM_SMTP_PORT')),
  tls: Number(env('OM_SMTP_TLS_PORT')),
  plain: Number(env('OM_SMTP_PLAIN_PORT')),
  control: Number(env('OM_SMTP_CONTROL_PORT')),
};
const key = readFileSync(env('OM_TLS_KEY'));
const cert = readFileSync(env('OM_TLS_CERT'));
const issuerUrl = env('OM_TEST_OAUTH_URL').replace(/\/$/, '');
const jwks = createRemoteJWKSet(new URL(`${issuerUrl}/jwks`), { cooldownDuration: 1000 });

const PASSWORD = 'correct-horse';
const REPLY = {
  tokenRejected: '5.7.3 Authentication unsuccessful',
  smtpDisabled:
    '5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox. Visit https://aka.ms/smtp_auth_disabled for more information.',
  securityDefaults:
    "5.7.139 Authentication unsuccessful, user is locked by your organization's security defaults policy. Contact your administrator.",
  badPassword: '5.7.8 Username and Password not accepted',
};

// ---- state ----------------------------------------------------------------------------
const messages = []; // {from, to, auth_user, auth_method, raw, received_at, listener, tls, message_id}
const users = new Map(); // lower-case user -> {connections, auth_ok, auth_failed, messages, max_concurrent, active}
const userStats = (user) => {
  const k = user.toLowerCase();
  let s = users.get(k);
  if (!s) {
    s = { connections: 0, auth_ok: 0, auth_failed: 0, messages: 0, max_concurrent: 0, active: 0 };
    users.set(k, s);
  }
  return s;
};
const localPart = (addr) => String(addr || '').split('@')[0].toLowerCase();
const smtpError = (code, text) => Object.assign(new Error(text), { responseCode: code });
let seq = 0;

async function checkBearer(username, token) {
  try {
    const { payload } = await jwtVerify(token, jwks, { issuer: issuerUrl });
    const who = String(payload.preferred_username || '');
    if (who.toLowerCase() !== username.toLowerCase()) return `token is for ${who}, not ${username}`;
    const scp = String(payload.scp || '').split(/\s+/);
    if (!scp.includes('SMTP.Send')) return `token has no SMTP.Send scope (scp="${payload.scp ?? ''}")`;
    return null;
  } catch (err) {
    return `${err.code || 'error'}: ${err.message}`;
  }
}

function makeServer(listener) {
  const common = {
    name: 'localhost',
    banner: 'Microsoft ESMTP MAIL Service ready (outgoing-mail test peer)',
    key,
    cert,
    logger: false,
    authMethods: ['PLAIN', 'LOGIN', 'XOAUTH2'],
    // smtp-server would otherwise prefix every reply with an enhanced status code
    // chosen from the reply code alone (535 -> 5.7.8), so the Exchange texts below,
    // which carry their own, could not be reproduced.
    hideENHANCEDSTATUSCODES: true,
    authRequiredMessage: '5.7.57 Client not authenticated to send mail',
    size: 35882577,
    allowInsecureAuth: false,
    closeTimeout: 1000,

    async onAuth(auth, session, callback) {
      const user = String(auth.username || '');
      const s = userStats(user);
      session.omCounted ??= new Set();
      if (!session.omCounted.has(user.toLowerCase())) {
        session.omCounted.add(user.toLowerCase());
        s.connections++;
      }
      const fail = (text, why) => {
        s.auth_failed++;
        console.log(`[${listener}] AUTH ${auth.method} ${user} -> 535 ${text} (${why})`);
        callback(smtpError(535, text));
      };
      const lp = localPart(user);
      if (lp.includes('smtpdisabled')) return fail(REPLY.smtpDisabled, 'flag smtpdisabled');
      if (lp.includes('securitydefaults')) return fail(REPLY.securityDefaults, 'flag securitydefaults');
      if (auth.method === 'XOAUTH2') {
        const why = await checkBearer(user, auth.accessToken);
        if (why) return fail(REPLY.tokenRejected, why);
      } else if (auth.password !== PASSWORD) {
        return fail(REPLY.badPassword, 'wrong password');
      }
      s.auth_ok++;
      s.active++;
      s.max_concurrent = Math.max(s.max_concurrent, s.active);
      session.omAuth = { user, method: auth.method };
      console.log(`[${listener}] AUTH ${auth.method} ${user} -> 235`);
      callback(null, { user });
    },

    onClose(session) {
      if (session.omAuth) {
        userStats(session.omAuth.user).active--;
        session.omAuth = undefined;
      }
    },

    onRcptTo(address, session, callback) {
      const lp = localPart(address.address);
      if (lp.includes('throttled')) return callback(smtpError(432, '4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded'));
      if (lp.includes('nosuchuser')) return callback(smtpError(550, '5.1.1 User unknown'));
      if (lp.includes('quota')) {
        return callback(smtpError(554, '5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message due to a permanent exception with message [BeginDiagnosticData]Message submission quota exceeded.[EndDiagnosticData]'));
      }
      callback();
    },

    onData(stream, session, callback) {
      const chunks = [];
      stream.on('data', (c) => chunks.push(c));
      stream.on('end', () => {
        if (stream.sizeExceeded) return callback(smtpError(552, '5.3.4 Message size exceeds fixed maximum message size'));
        const auth = session.omAuth || { user: String(session.user || ''), method: '' };
        const from = session.envelope.mailFrom ? session.envelope.mailFrom.address : '';
        // Exchange checks Send-As when the message is submitted, i.e. after DATA
        if (from.toLowerCase() !== auth.user.toLowerCase() && !localPart(auth.user).includes('sendasok')) {
          console.log(`[${listener}] DATA from ${from} by ${auth.user} -> 554 SendAsDenied`);
          return callback(smtpError(554,
            `5.2.252 SendAsDenied; ${auth.user} not allowed to send as ${from}; STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied; Failed to process message due to a permanent exception with message [BeginDiagnosticData]Cannot submit message.[EndDiagnosticData]`));
        }
        const raw = Buffer.concat(chunks).toString('utf8');
        const id = `${Date.now().toString(36)}.${(++seq).toString(36)}`;
        messages.push({
          from,
          to: session.envelope.rcptTo.map((r) => r.address),
          auth_user: auth.user,
          auth_method: auth.method,
          raw,
          received_at: new Date().toISOString(),
          listener,
          tls: !!session.secure,
          id,
        });
        userStats(auth.user).messages++;
        console.log(`[${listener}] DATA from ${from} by ${auth.user} to ${session.envelope.rcptTo.map((r) => r.address).join(',')} -> 250 (${raw.length} bytes)`);
        callback(null, `2.0.0 OK <${id}@localhost> [Hostname=localhost] Queued mail for delivery`);
      });
    },
  };
  const extra = {
    starttls: {},
    tls: { secure: true },
    plain: { hideSTARTTLS: true, disabledCommands: ['STARTTLS'] },
  }[listener];
  const server = new SMTPServer({ ...common, ...extra });
  server.on('error', (err) => console.error(`[${listener}] smtp error:`, err.message));
  return server;
}

function listen(server, port, name) {
  return new Promise((resolve, reject) => {
    server.server.once('error', reject);
    server.listen(port, '127.0.0.1', () => {
      console.log(`smtp peer: ${name} listening on 127.0.0.1:${port}`);
      resolve();
    });
  });
}

// ---- control HTTP -------------------------------------------------------------------
function sendJson(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' });
  res.end(JSON.stringify(body));
}
const control = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://127.0.0.1');
  if (req.method !== 'GET') return sendJson(res, 405, { error: 'GET only' });
  if (url.pathname === '/health') return sendJson(res, 200, { ok: true, ports });
  if (url.pathname === '/messages') {
    const rcpt = (url.searchParams.get('rcpt') || '').toLowerCase();
    const user = (url.searchParams.get('user') || '').toLowerCase();
    const out = messages.filter(
      (m) => (!rcpt || m.to.some((t) => t.toLowerCase() === rcpt)) && (!user || m.auth_user.toLowerCase() === user),
    );
    return sendJson(res, 200, out);
  }
  if (url.pathname === '/stats') {
    const user = url.searchParams.get('user') || '';
    const { active, ...s } = userStats(user);
    return sendJson(res, 200, { ...s, active });
  }
  if (url.pathname === '/drop') {
    // cut the user's open sessions, as a server restart or a middlebox's idle timeout would
    const user = (url.searchParams.get('user') || '').toLowerCase();
    let dropped = 0;
    for (const [s] of servers) {
      for (const c of s.connections) {
        if (user && c.session?.omAuth?.user?.toLowerCase() === user) {
          c._socket.destroy();
          dropped++;
        }
      }
    }
    return sendJson(res, 200, { dropped });
  }
  sendJson(res, 404, {
    error: 'not found',
    endpoints: ['/messages?rcpt=ADDR', '/stats?user=ADDR', '/drop?user=ADDR', '/health'],
  });
});

const servers = [
  [makeServer('starttls'), ports.starttls, 'STARTTLS'],
  [makeServer('tls'), ports.tls, 'implicit TLS'],
  [makeServer('plain'), ports.plain, 'plain (no STARTTLS)'],
];
for (const [s, p, n] of servers) await listen(s, p, n);
control.keepAliveTimeout = 120_000; // outlive client pools' idle timeouts (node's default is 5 s)
control.headersTimeout = 125_000;
await new Promise((resolve) => control.listen(ports.control, '127.0.0.1', resolve));
console.log(`smtp peer: control listening on http://127.0.0.1:${ports.control}`);

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    setTimeout(() => process.exit(0), 500).unref();
    for (const [s] of servers) s.close();
    control.closeAllConnections();
    control.close(() => process.exit(0));
  });
}
