//! SMTP adapter on `lettre` (rustls): verification = connect, STARTTLS/TLS, AUTH, QUIT;
//! sending = an authenticated connection from this adapter's own per-mailbox pool (at most 3,
//! on `TCP_NODELAY` sockets: lettre ends a message in two writes, which Nagle's algorithm
//! would hold for the server's delayed ACK), a fresh one when none is idle.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, TlsParameters};
use lettre::transport::smtp::extension::ClientId;

use crate::domain::Sensitive;
use crate::domain::notification::OutgoingMessage;

use crate::domain::mailbox::{SmtpSecurity, SmtpSettings};
use crate::domain::reason::{StatusReason, classify_smtp_reply};
use crate::ports::{MailTransport, SmtpCredentials, SmtpError};

/// Connections per pool key (one mailbox): Exchange Online allows 3 per mailbox.
pub const MAX_CONNECTIONS_PER_MAILBOX: u32 = 3;

/// How long an idle authenticated connection is kept for the next message.
const IDLE_TIMEOUT: Duration = Duration::from_secs(50);
/// Idle connections kept over all mailboxes at most (a Lambda sandbox may open 1,024 files);
/// beyond it the longest-idle ones are closed.
const MAX_IDLE_CONNECTIONS: usize = 256;
/// How often the pools of mailboxes that stopped sending are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// A connection idle for longer than this is checked with NOOP before it is reused; a fresher
/// one is used straight away (lettre's own pool sends NOOP before every message: one more
/// round trip per message).
const CHECK_IDLE_AFTER: Duration = Duration::from_secs(5);

/// The authenticated connections of one pool key (mailbox), for one credential.
struct Pooled {
    /// The credential these connections authenticated with (a new token means new connections).
    credential: Sensitive,
    target: (String, u16, SmtpSecurity),
    /// Connections not in use, with the time they were parked; at most
    /// `MAX_CONNECTIONS_PER_MAILBOX` exist because the limiter caps concurrent sends per key.
    idle: Mutex<Vec<(AsyncSmtpConnection, Instant)>>,
}

impl Pooled {
    /// The most recently parked usable connection, if any.
    async fn take(&self, idle_timeout: Duration) -> Option<AsyncSmtpConnection> {
        loop {
            let (mut conn, parked) = self.idle.lock().ok()?.pop()?;
            let idle = parked.elapsed();
            if idle > idle_timeout || (idle > CHECK_IDLE_AFTER && !conn.test_connected().await) {
                conn.abort().await;
                continue;
            }
            return Some(conn);
        }
    }

    async fn park(&self, mut conn: AsyncSmtpConnection) {
        if conn.has_broken() {
            conn.abort().await;
            return;
        }
        let extra = match self.idle.lock() {
            Ok(mut idle) if idle.len() < MAX_CONNECTIONS_PER_MAILBOX as usize => {
                idle.push((conn, Instant::now()));
                None
            }
            _ => Some(conn),
        };
        if let Some(mut conn) = extra {
            conn.abort().await;
        }
    }
}

/// Lettre-based transport. TLS parameters (root store + extra CA) are built once per host;
/// authenticated connection pools are kept per mailbox while the process is warm.
#[derive(Clone)]
pub struct LettreTransport {
    extra_ca: Option<Arc<Vec<u8>>>,
    timeout: Duration,
    hello: ClientId,
    tls_cache: Arc<Mutex<HashMap<String, TlsParameters>>>,
    pools: Arc<Mutex<Pools>>,
    /// At most `MAX_CONNECTIONS_PER_MAILBOX` sends at a time per key (and so open
    /// connections), surviving pool replacement on a new token.
    limits: Arc<Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>>,
    idle_timeout: Duration,
}

#[derive(Default)]
struct Pools {
    by_key: HashMap<String, Arc<Pooled>>,
    swept_at: Option<Instant>,
}

impl Pools {
    /// Close connections idle for longer than `idle_timeout` in every pool (a mailbox that
    /// stopped sending is never asked again), forget pools nobody uses, and keep at most
    /// `MAX_IDLE_CONNECTIONS` idle connections in all. Dropping a connection closes its socket.
    fn sweep(&mut self, idle_timeout: Duration) {
        self.swept_at = Some(Instant::now());
        let mut parked: Vec<Instant> = Vec::new();
        self.by_key.retain(|_, pool| {
            let Ok(mut idle) = pool.idle.lock() else {
                return false;
            };
            idle.retain(|(_, at)| at.elapsed() <= idle_timeout);
            parked.extend(idle.iter().map(|(_, at)| *at));
            !idle.is_empty() || Arc::strong_count(pool) > 1
        });
        if parked.len() > MAX_IDLE_CONNECTIONS {
            parked.sort_unstable();
            let keep_from = parked[parked.len() - MAX_IDLE_CONNECTIONS];
            for pool in self.by_key.values() {
                if let Ok(mut idle) = pool.idle.lock() {
                    idle.retain(|(_, at)| *at >= keep_from);
                }
            }
        }
    }
}

impl LettreTransport {
    pub fn new(extra_ca: Option<&[u8]>, timeout: Duration) -> Result<Self, String> {
        if let Some(pem) = extra_ca {
            Certificate::from_pem(pem).map_err(|e| format!("extra CA is not valid PEM: {e}"))?;
        }
        Ok(Self {
            extra_ca: extra_ca.map(|p| Arc::new(p.to_vec())),
            timeout,
            hello: ClientId::Domain("outgoing-mail.invalid".into()),
            tls_cache: Arc::default(),
            pools: Arc::default(),
            limits: Arc::default(),
            idle_timeout: IDLE_TIMEOUT,
        })
    }

    /// Keep idle connections for `idle` instead of 50 s (tests).
    pub fn with_idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = idle;
        self
    }

    /// Idle connections held over all mailboxes (tests, diagnostics).
    pub fn idle_connections(&self) -> usize {
        let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools
            .by_key
            .values()
            .map(|p| p.idle.lock().map(|i| i.len()).unwrap_or(0))
            .sum()
    }

    /// The pool for `key` and these credentials; a new (empty) one when the credential or the
    /// server changed. Looked up and replaced under one lock, so concurrent first sends share
    /// one pool instead of each opening connections in a pool of its own.
    fn pool(&self, key: &str, smtp: &SmtpSettings, credentials: &SmtpCredentials) -> Arc<Pooled> {
        let secret = match credentials {
            SmtpCredentials::Xoauth2 { access_token, .. } => access_token,
            SmtpCredentials::Password { password, .. } => password,
        };
        let target = (smtp.host.to_string(), smtp.port, smtp.security);
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        if pools
            .swept_at
            .is_none_or(|at| at.elapsed() >= SWEEP_EVERY.min(self.idle_timeout))
        {
            pools.sweep(self.idle_timeout);
            if let Ok(mut limits) = self.limits.lock() {
                // a semaphore nobody holds or waits on is recreated when next needed
                limits.retain(|k, l| k == key || Arc::strong_count(l) > 1);
            }
        }
        if let Some(p) = pools.by_key.get(key)
            && p.credential == *secret
            && p.target == target
        {
            return p.clone();
        }
        // the replaced pool (old token) closes its idle connections when it is dropped
        let pooled = Arc::new(Pooled {
            credential: secret.clone(),
            target,
            idle: Mutex::default(),
        });
        pools.by_key.insert(key.to_owned(), pooled.clone());
        pooled
    }

    pub fn tls_parameters(&self, host: &str) -> Result<TlsParameters, SmtpError> {
        if let Some(p) = self
            .tls_cache
            .lock()
            .ok()
            .and_then(|c| c.get(host).cloned())
        {
            return Ok(p);
        }
        let mut b = TlsParameters::builder(host.to_owned());
        if let Some(pem) = &self.extra_ca {
            let cert = Certificate::from_pem(pem).map_err(|e| tls_error(e.to_string()))?;
            b = b.add_root_certificate(cert);
        }
        let params = b.build_rustls().map_err(|e| tls_error(e.to_string()))?;
        if let Ok(mut c) = self.tls_cache.lock() {
            c.insert(host.to_owned(), params.clone());
        }
        Ok(params)
    }

    /// Open an authenticated connection (used by verification and, later, sending).
    pub async fn connect(
        &self,
        smtp: &SmtpSettings,
        credentials: &SmtpCredentials,
    ) -> Result<AsyncSmtpConnection, SmtpError> {
        let host = smtp.host.as_str();
        let implicit_tls = smtp.security == SmtpSecurity::Tls;
        let implicit = match smtp.security {
            SmtpSecurity::Tls => Some(self.tls_parameters(host)?),
            _ => None,
        };
        let hello = &self.hello;
        let connecting = async {
            if let Some(tls) = implicit {
                // implicit TLS: lettre opens the socket itself (no TCP_NODELAY)
                return AsyncSmtpConnection::connect_tokio1(
                    (host, smtp.port),
                    Some(self.timeout),
                    hello,
                    Some(tls),
                    None,
                )
                .await
                .map_err(Connecting::Smtp);
            }
            let tcp = tokio::net::TcpStream::connect((host, smtp.port))
                .await
                .map_err(Connecting::Tcp)?;
            // lettre writes a message and its terminating "." in two writes; with Nagle's
            // algorithm the second waits for the server's delayed ACK (40 ms on Linux, up to
            // 200 ms on Windows servers) on every message
            let _ = tcp.set_nodelay(true);
            AsyncSmtpConnection::connect_with_transport(Box::new(tcp), hello)
                .await
                .map_err(Connecting::Smtp)
        };
        let mut conn = tokio::time::timeout(self.timeout, connecting)
        .await
        .map_err(|_| {
            let hint = if implicit_tls {
                ""
            } else {
                " (a port that expects TLS from the first byte, such as 465, needs smtp_security `tls`)"
            };
            connection_error(format!(
                "no answer from {host}:{} within {:?}{hint}",
                smtp.port, self.timeout
            ))
        })?
        .map_err(|e| {
            let e = match e {
                // the text lettre gives the same failure ("Connection error: ...")
                Connecting::Tcp(e) => {
                    return connection_error(format!(
                        "{host}:{}: Connection error: {e}",
                        smtp.port
                    ));
                }
                Connecting::Smtp(e) => e,
            };
            let mut err =
                classify_lettre(&e, credentials.is_oauth(), &format!("{host}:{}", smtp.port));
            if implicit_tls && err.detail.contains("corrupt message") {
                err.detail.push_str(
                    " (the server did not answer with TLS: for a STARTTLS port such as 587 set smtp_security `starttls`)",
                );
            }
            err
        })?;
        if smtp.security == SmtpSecurity::Starttls {
            if !conn.can_starttls() {
                conn.abort().await;
                return Err(SmtpError {
                    reason: StatusReason::TlsRequired,
                    detail: format!("{host}:{} does not offer STARTTLS", smtp.port),
                    code: None,
                });
            }
            conn.starttls(self.tls_parameters(host)?, &self.hello)
                .await
                .map_err(|e| {
                    classify_lettre(&e, credentials.is_oauth(), &format!("{host}:{}", smtp.port))
                })?;
        }
        let (mechanisms, creds): (&[Mechanism], Credentials) = match credentials {
            SmtpCredentials::Xoauth2 { user, access_token } => (
                &[Mechanism::Xoauth2],
                Credentials::new(user.clone(), access_token.expose().to_owned()),
            ),
            SmtpCredentials::Password { user, password } => (
                &[Mechanism::Plain, Mechanism::Login],
                Credentials::new(user.clone(), password.expose().to_owned()),
            ),
        };
        if let Err(e) = conn.auth(mechanisms, &creds).await {
            conn.abort().await;
            return Err(classify_lettre(&e, credentials.is_oauth(), host));
        }
        Ok(conn)
    }
}

/// Did a reused connection fail because it was already closed (not because of this message)?
/// A network error before any reply, or `421` (the server is closing the channel).
fn closed_under_us(e: &lettre::transport::smtp::Error) -> bool {
    match e.status() {
        Some(code) => code.to_string() == "421",
        None => !e.is_client() && !e.is_timeout() && !e.is_tls(),
    }
}

/// Where opening a connection failed.
enum Connecting {
    Tcp(std::io::Error),
    Smtp(lettre::transport::smtp::Error),
}

fn tls_error(detail: String) -> SmtpError {
    SmtpError {
        reason: StatusReason::TlsFailed,
        detail,
        code: None,
    }
}

fn connection_error(detail: String) -> SmtpError {
    SmtpError {
        reason: StatusReason::ConnectionFailed,
        detail,
        code: None,
    }
}

/// lettre reports a failed TLS handshake (untrusted certificate, wrong name, a server that does
/// not speak TLS) as a *connection* error wrapping rustls' error in an `io::Error` of kind
/// `InvalidData`; tell it apart from an unreachable server, which is transient.
fn is_tls_failure(e: &lettre::transport::smtp::Error) -> bool {
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::InvalidData
        {
            return true;
        }
        src = s.source();
    }
    let t = e.to_string().to_ascii_lowercase();
    [
        "invalid peer certificate",
        "corrupt message",
        "received fatal alert",
        "peer is incompatible",
        "peer misbehaved",
        "handshake",
    ]
    .iter()
    .any(|k| t.contains(k))
}

/// Map a lettre error to a reason, keeping the server's reply text.
pub fn classify_lettre(e: &lettre::transport::smtp::Error, oauth: bool, target: &str) -> SmtpError {
    let text = e.to_string();
    if let Some(code) = e.status() {
        let n: u16 = code.to_string().parse().unwrap_or(0);
        // "permanent error (535): 5.7.3 Authentication unsuccessful" → keep the reply
        let reply = text
            .split_once("): ")
            .map(|(_, r)| r)
            .unwrap_or(&text)
            .trim()
            .to_owned();
        return SmtpError {
            reason: classify_smtp_reply(n, &reply, oauth),
            detail: format!("{n} {reply}"),
            code: Some(n),
        };
    }
    if e.is_tls() || is_tls_failure(e) {
        let text = text.trim_start_matches("Connection error: ");
        return tls_error(format!("TLS with {target} failed: {text}"));
    }
    if e.is_timeout()
        || text.contains("network")
        || text.contains("Connection")
        || text.contains("connection")
    {
        return connection_error(format!("{target}: {text}"));
    }
    if text.contains("No compatible authentication mechanism") {
        return SmtpError {
            reason: StatusReason::SmtpMechanismUnsupported,
            detail: format!(
                "{target} does not offer {}",
                if oauth {
                    "AUTH XOAUTH2"
                } else {
                    "AUTH PLAIN or LOGIN"
                }
            ),
            code: None,
        };
    }
    if text.contains("challenge") && oauth {
        // lettre cannot answer XOAUTH2's 334 error challenge; the server rejected the token.
        return SmtpError {
            reason: StatusReason::TokenRejected,
            detail: format!("{target} rejected the access token (334 challenge)"),
            code: None,
        };
    }
    SmtpError {
        reason: StatusReason::SmtpError,
        detail: format!("{target}: {text}"),
        code: None,
    }
}

#[async_trait]
impl MailTransport for LettreTransport {
    async fn verify(
        &self,
        smtp: &SmtpSettings,
        credentials: &SmtpCredentials,
    ) -> Result<(), SmtpError> {
        let mut conn = self.connect(smtp, credentials).await?;
        // QUIT politely; a failing QUIT after a successful AUTH does not make the mailbox broken.
        let _ = conn.quit().await;
        Ok(())
    }

    async fn send(
        &self,
        pool_key: &str,
        smtp: &SmtpSettings,
        credentials: &SmtpCredentials,
        message: &OutgoingMessage,
    ) -> Result<String, SmtpError> {
        let limit = match self.limits.lock() {
            Ok(mut m) => m
                .entry(pool_key.to_owned())
                .or_insert_with(|| {
                    Arc::new(tokio::sync::Semaphore::new(
                        MAX_CONNECTIONS_PER_MAILBOX as usize,
                    ))
                })
                .clone(),
            Err(_) => Arc::new(tokio::sync::Semaphore::new(
                MAX_CONNECTIONS_PER_MAILBOX as usize,
            )),
        };
        let _slot = limit.acquire_owned().await.map_err(|_| SmtpError {
            reason: StatusReason::ConnectionFailed,
            detail: "the connection limiter was closed".into(),
            code: None,
        })?;
        let pool = self.pool(pool_key, smtp, credentials);
        let bad = |what: &str| SmtpError {
            reason: StatusReason::SmtpError,
            detail: format!("invalid {what} address"),
            code: None,
        };
        let from: lettre::Address = message.envelope_from.parse().map_err(|_| bad("sender"))?;
        let to = message
            .recipients
            .iter()
            .map(|r| r.parse::<lettre::Address>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| bad("recipient"))?;
        let envelope =
            lettre::address::Envelope::new(Some(from), to).map_err(|_| bad("envelope"))?;
        let forget_refused = |err: &SmtpError| {
            if err.reason == StatusReason::TokenRejected
                || err.reason == StatusReason::CredentialsRejected
            {
                // never reuse a pool whose credentials were refused
                if let Ok(mut m) = self.pools.lock() {
                    m.by_key.remove(pool_key);
                }
            }
        };
        let (mut conn, reused) = match pool.take(self.idle_timeout).await {
            Some(conn) => (conn, true),
            None => (
                self.connect(smtp, credentials)
                    .await
                    .inspect_err(|e| forget_refused(e))?,
                false,
            ),
        };
        let mut sent =
            tokio::time::timeout(self.timeout, conn.send(&envelope, &message.bytes)).await;
        if reused && matches!(&sent, Ok(Err(e)) if closed_under_us(e)) {
            // A pooled connection the server (or a middlebox) closed while it sat idle: the
            // message was not accepted. Once more on a fresh connection.
            tracing::info!(
                pool = pool_key,
                "pooled SMTP connection was closed by the server; reconnecting"
            );
            conn = self
                .connect(smtp, credentials)
                .await
                .inspect_err(|e| forget_refused(e))?;
            sent = tokio::time::timeout(self.timeout, conn.send(&envelope, &message.bytes)).await;
        }
        match sent {
            Ok(Ok(resp)) => {
                pool.park(conn).await;
                Ok(format!(
                    "{} {}",
                    resp.code(),
                    resp.message().collect::<Vec<_>>().join(" ")
                ))
            }
            Ok(Err(e)) => {
                // lettre has closed the connection after a failed transaction
                let err = classify_lettre(
                    &e,
                    credentials.is_oauth(),
                    &format!("{}:{}", smtp.host, smtp.port),
                );
                forget_refused(&err);
                Err(err)
            }
            Err(_) => {
                conn.abort().await;
                Err(connection_error(format!(
                    "{}:{}: no reply to the message within {:?}",
                    smtp.host, smtp.port, self.timeout
                )))
            }
        }
    }
}
