//! SMTP adapter on `lettre` (rustls): verification = connect, STARTTLS/TLS, AUTH, QUIT.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, TlsParameters};
use lettre::transport::smtp::extension::ClientId;

use crate::domain::mailbox::{SmtpSecurity, SmtpSettings};
use crate::domain::reason::{StatusReason, classify_smtp_reply};
use crate::ports::{MailTransport, SmtpCredentials, SmtpError};

/// Lettre-based transport. TLS parameters (root store + extra CA) are built once per host.
#[derive(Clone)]
pub struct LettreTransport {
    extra_ca: Option<Arc<Vec<u8>>>,
    timeout: Duration,
    hello: ClientId,
    tls_cache: Arc<Mutex<HashMap<String, TlsParameters>>>,
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
        })
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
        let implicit = match smtp.security {
            SmtpSecurity::Tls => Some(self.tls_parameters(host)?),
            _ => None,
        };
        let mut conn = tokio::time::timeout(
            self.timeout,
            AsyncSmtpConnection::connect_tokio1(
                (host, smtp.port),
                Some(self.timeout),
                &self.hello,
                implicit,
                None,
            ),
        )
        .await
        .map_err(|_| {
            connection_error(format!(
                "no answer from {host}:{} within {:?}",
                smtp.port, self.timeout
            ))
        })?
        .map_err(|e| {
            classify_lettre(&e, credentials.is_oauth(), &format!("{host}:{}", smtp.port))
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
                .map_err(|e| classify_lettre(&e, credentials.is_oauth(), host))?;
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
    if e.is_tls() {
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
}
