//! send-notification: deliver from the tenant's own mailbox, fall back to the platform's
//! default sender when the mailbox cannot send, never send one notification id twice.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::Duration;

use crate::app::App;
use crate::domain::mailbox::{AuthKind, MailboxRecord, MailboxStatus, SmtpSecurity, SmtpSettings};
use crate::domain::notification::{
    Notification, SenderIdentity, build_message, parse_notification,
};
use crate::domain::reason::{Permanence, StatusReason};
use crate::domain::{EmailAddress, FieldError, Hostname, Sensitive, TenantId};
use crate::ports::{
    Claim, DeliveredVia, DeliveryRecord, DeliveryStatus, SmtpCredentials, SmtpError, StoreError,
};

use super::modify;
use super::tokens::access_token;
use super::verify::{Failure, Verification, VerifyMode, apply};

/// How long a claim on a notification lasts (a crashed sender's claim can then be taken over).
pub const CLAIM_LEASE: Duration = Duration::minutes(5);
/// How long delivery records are kept (longer than SQS keeps a message: 14 days).
pub const KEEP_RECORDS: Duration = Duration::days(15);

// ---------------------------------------------------------------------------------------------
// The platform's default sender
// ---------------------------------------------------------------------------------------------

/// The platform's own SMTP sender, configured once per deployment (JSON).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultSender {
    pub host: Hostname,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default = "starttls")]
    pub security: SmtpSecurity,
    pub from_address: EmailAddress,
    #[serde(default)]
    pub from_name: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Sensitive>,
}

fn starttls() -> SmtpSecurity {
    SmtpSecurity::Starttls
}

impl std::fmt::Debug for DefaultSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DefaultSender")
            .field("host", &self.host)
            .field("from_address", &self.from_address)
            .finish_non_exhaustive()
    }
}

impl DefaultSender {
    /// Parse the JSON `{"host", "port", "security", "from_address", "from_name", "username", "password"}`.
    pub fn parse(json: &str) -> Result<Self, String> {
        let s: Self = serde_json::from_str(json).map_err(|e| format!("is not a valid default sender ({e}); expected JSON with host, port, security, from_address, username, password"))?;
        if s.security == SmtpSecurity::None && !s.host.is_loopback() {
            return Err("security `none` is allowed only for a loopback host".into());
        }
        Ok(s)
    }

    pub fn smtp(&self) -> SmtpSettings {
        SmtpSettings {
            host: self.host.clone(),
            port: self.port.unwrap_or_else(|| self.security.default_port()),
            security: self.security,
        }
    }
}

/// Where the default sender's configuration comes from.
#[async_trait]
pub trait DefaultSenderSource: Send + Sync {
    async fn load(&self) -> Result<Option<DefaultSender>, StoreError>;
}

/// Inline configuration (`OUTGOING_MAIL_DEFAULT_SENDER`), or none.
pub struct EnvDefaultSender(pub Option<DefaultSender>);

#[async_trait]
impl DefaultSenderSource for EnvDefaultSender {
    async fn load(&self) -> Result<Option<DefaultSender>, StoreError> {
        Ok(self.0.clone())
    }
}

// ---------------------------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------------------------

/// What a caller learns about one notification.
#[derive(Debug, Clone, Serialize)]
pub struct SendResult {
    pub notification_id: String,
    /// `delivered`, `failed` (permanent, will not be retried), `duplicate` (sent before;
    /// the earlier record is in `record`), or `retry` (transient; try again later).
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<DeliveryRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl SendResult {
    fn retry(id: &str, reason: &str, detail: String) -> Self {
        Self {
            notification_id: id.to_owned(),
            status: "retry",
            record: None,
            reason: Some(reason.to_owned()),
            detail: Some(detail),
        }
    }
    /// Should the queue deliver this message again?
    pub fn should_retry(&self) -> bool {
        self.status == "retry"
    }
}

/// A notification that cannot be accepted at all.
#[derive(Debug, thiserror::Error)]
pub enum Rejected {
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error("the notification names no tenant")]
    NoTenant,
}

/// Parse a notification from a producer (queue or direct invoke: it names the tenant).
pub fn parse_from_producer(v: &Value) -> Result<(TenantId, Notification), Rejected> {
    let n = parse_notification(v)?;
    let tenant = n.tenant.clone().ok_or(Rejected::NoTenant)?;
    Ok((tenant, n))
}

// ---------------------------------------------------------------------------------------------
// Delivery
// ---------------------------------------------------------------------------------------------

enum Attempt {
    Delivered {
        via: DeliveredVia,
        mailbox: Option<MailboxRecord>,
        response: String,
        message_id: String,
    },
    Permanent {
        mailbox: Option<MailboxRecord>,
        reason: String,
        detail: String,
    },
    Transient {
        reason: String,
        detail: String,
    },
}

/// Which way a notification goes.
#[derive(Clone, Copy)]
pub enum Route<'a> {
    /// The tenant's mailbox when it works, else the default sender.
    Auto,
    /// Only the platform's default sender (alerts: a broken mailbox cannot report itself).
    DefaultSender { about: Option<&'a MailboxRecord> },
}

/// Deliver one notification for `tenant`, at most once per id.
pub async fn deliver(app: &App, tenant: &TenantId, n: &Notification) -> SendResult {
    deliver_routed(app, tenant, n, Route::Auto).await
}

/// [`deliver`] with an explicit route.
pub async fn deliver_routed(
    app: &App,
    tenant: &TenantId,
    n: &Notification,
    route: Route<'_>,
) -> SendResult {
    let id = n.id.as_str();
    let accepted_at = app.clock.now();
    let claiming = app.deliveries.claim(tenant, id, accepted_at, CLAIM_LEASE);
    // The mailbox is read while the claim is written (a read has no effect if the claim says
    // "duplicate"): one store round trip of latency instead of two per notification.
    let (claimed, found) = match route {
        Route::Auto => {
            tokio::join!(claiming, lookup(app, tenant, n))
        }
        Route::DefaultSender { .. } => (claiming.await, Ok(None)),
    };
    match claimed {
        Ok(Claim::Started) => {}
        Ok(Claim::Done(record)) => {
            tracing::info!(tenant = %tenant, notification = id, "duplicate notification id: already handled, not sent again");
            return SendResult {
                notification_id: id.to_owned(),
                status: "duplicate",
                record: Some(*record),
                reason: None,
                detail: None,
            };
        }
        Ok(Claim::InFlight) => {
            return SendResult::retry(
                id,
                "in_flight",
                "the same notification id is being sent by another worker right now".into(),
            );
        }
        Err(e) => return SendResult::retry(id, "storage_unavailable", e.to_string()),
    }
    let attempt = match (route, found) {
        (Route::DefaultSender { about }, _) => {
            send_via_default(app, about, n, "platform alert").await
        }
        (Route::Auto, Ok(mailbox)) => attempt(app, tenant, n, mailbox).await,
        (Route::Auto, Err(failed)) => failed,
    };
    let completed_at = app.clock.now();
    let (status, record) = match attempt {
        Attempt::Transient { reason, detail } => {
            if let Err(e) = app.deliveries.release(tenant, id).await {
                tracing::warn!(error = %e, "could not release the claim; it expires by itself");
            }
            tracing::warn!(tenant = %tenant, notification = id, reason = %reason, detail = %detail, "delivery failed transiently; will be retried");
            return SendResult::retry(id, &reason, detail);
        }
        Attempt::Delivered {
            via,
            mailbox,
            response,
            message_id,
        } => (
            "delivered",
            DeliveryRecord {
                notification_id: id.to_owned(),
                tenant: tenant.clone(),
                status: DeliveryStatus::Delivered,
                mailbox_id: mailbox.map(|m| m.id),
                delivered_via: Some(via),
                smtp_response: Some(response),
                message_id: Some(message_id),
                reason: None,
                detail: None,
                accepted_at,
                completed_at,
            },
        ),
        Attempt::Permanent {
            mailbox,
            reason,
            detail,
        } => (
            "failed",
            DeliveryRecord {
                notification_id: id.to_owned(),
                tenant: tenant.clone(),
                status: DeliveryStatus::Failed,
                mailbox_id: mailbox.map(|m| m.id),
                delivered_via: None,
                smtp_response: None,
                message_id: None,
                reason: Some(reason),
                detail: Some(detail),
                accepted_at,
                completed_at,
            },
        ),
    };
    if let Err(e) = app.deliveries.complete(&record, KEEP_RECORDS).await {
        // the message left (or failed for good); losing the record risks one duplicate at worst
        tracing::error!(error = %e, notification = id, "could not record the delivery result");
    }
    // one structured line per delivery; no body, no token
    tracing::info!(
        tenant = %tenant,
        notification = id,
        status,
        mailbox = record.mailbox_id.as_ref().map(|m| m.as_str()).unwrap_or(""),
        via = ?record.delivered_via,
        smtp_response = record.smtp_response.as_deref().unwrap_or(""),
        reason = record.reason.as_deref().unwrap_or(""),
        duration_ms = (completed_at - accepted_at).whole_milliseconds() as i64,
        "notification handled"
    );
    SendResult {
        notification_id: id.to_owned(),
        status,
        reason: record.reason.clone(),
        detail: record.detail.clone(),
        record: Some(record),
    }
}

/// Is this a failure of the message itself (no other sender would do better)?
fn message_problem(e: &SmtpError) -> Option<&'static str> {
    let d = e.detail.to_ascii_lowercase();
    match e.code {
        Some(c)
            if (500..600).contains(&c)
                && (d.contains(" 5.1.")
                    || d.starts_with("550 5.1")
                    || d.contains("user unknown")
                    || d.contains("recipient")) =>
        {
            Some("recipient_rejected")
        }
        Some(552) | Some(554) if d.contains("5.3.4") || d.contains("size") => {
            Some("message_too_large")
        }
        _ => None,
    }
}

/// The mailbox a notification names, or the tenant's default one (`None`: no default).
async fn lookup(
    app: &App,
    tenant: &TenantId,
    n: &Notification,
) -> Result<Option<MailboxRecord>, Attempt> {
    match &n.mailbox_id {
        Some(id) => match app.mailboxes.get(tenant, id).await {
            Ok(Some(m)) => Ok(Some(m)),
            Ok(None) => Err(Attempt::Permanent {
                mailbox: None,
                reason: "mailbox_not_found".into(),
                detail: format!("tenant {tenant} has no mailbox {id}"),
            }),
            Err(e) => Err(Attempt::Transient {
                reason: "storage_unavailable".into(),
                detail: e.to_string(),
            }),
        },
        None => match app.mailboxes.list(tenant).await {
            Ok(all) => Ok(all.into_iter().find(|m| m.spec.default)),
            Err(e) => Err(Attempt::Transient {
                reason: "storage_unavailable".into(),
                detail: e.to_string(),
            }),
        },
    }
}

async fn attempt(
    app: &App,
    tenant: &TenantId,
    n: &Notification,
    mailbox: Option<MailboxRecord>,
) -> Attempt {
    let mut why_fallback = match &mailbox {
        None => "the tenant has no default mailbox".to_owned(),
        Some(m) if m.state.status != MailboxStatus::Verified => {
            format!(
                "mailbox {} is {}",
                m.id,
                serde_json::to_value(m.state.status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            )
        }
        Some(_) => String::new(),
    };
    if let Some(m) = mailbox
        .as_ref()
        .filter(|m| m.state.status == MailboxStatus::Verified)
    {
        match send_via_mailbox(app, m, n).await {
            Ok((response, message_id)) => {
                return Attempt::Delivered {
                    via: DeliveredVia::Mailbox,
                    mailbox: Some(m.clone()),
                    response,
                    message_id,
                };
            }
            Err(SendFailure::Message(reason, detail)) => {
                return Attempt::Permanent {
                    mailbox: Some(m.clone()),
                    reason,
                    detail,
                };
            }
            Err(SendFailure::Transient(f)) => {
                return Attempt::Transient {
                    reason: f.reason.code().into(),
                    detail: f.detail,
                };
            }
            Err(SendFailure::Mailbox(f)) => {
                // the mailbox cannot send: tell the truth on it, then use the fallback
                let v = Verification {
                    result: Err(f.clone()),
                    refreshed: None,
                };
                let now = app.clock.now();
                let fingerprint = m.spec.verification_fingerprint();
                let _ = modify(app, tenant, &m.id, |r| {
                    if r.spec.verification_fingerprint() != fingerprint {
                        return false;
                    }
                    apply(&mut r.state, &v, VerifyMode::Interactive, now);
                    true
                })
                .await;
                tracing::warn!(tenant = %tenant, mailbox = %m.id, reason = f.reason.code(), detail = %f.detail, "mailbox failed permanently at send time; now not_verified");
                why_fallback = format!("mailbox {} failed: {}", m.id, f.reason.code());
            }
        }
    }
    send_via_default(app, mailbox.as_ref(), n, &why_fallback).await
}

enum SendFailure {
    /// The message itself is refused (bad recipient, too large): permanent, no fallback.
    Message(String, String),
    /// The mailbox cannot send (auth, SMTP AUTH disabled, SendAs): fall back.
    Mailbox(Failure),
    /// Try again later.
    Transient(Failure),
}

fn sender_identity(m: &MailboxRecord) -> Result<SenderIdentity, FieldError> {
    let resolved = m.spec.resolve()?;
    Ok(SenderIdentity {
        from_name: m.spec.from_name.as_ref().map(|f| f.to_string()),
        from_address: resolved.from_address,
        reply_to: m.spec.reply_to.clone(),
        signature: m.spec.signature.clone(),
    })
}

fn classify_send(e: SmtpError) -> SendFailure {
    if let Some(reason) = message_problem(&e) {
        return SendFailure::Message(reason.into(), e.detail);
    }
    let f = Failure::from(e);
    match f.permanence {
        Permanence::Transient => SendFailure::Transient(f),
        Permanence::Permanent => match f.reason {
            StatusReason::SmtpAuthDisabled
            | StatusReason::SecurityPolicy
            | StatusReason::TokenRejected
            | StatusReason::CredentialsRejected
            | StatusReason::SendAsDenied
            | StatusReason::TlsRequired
            | StatusReason::TlsFailed
            | StatusReason::SmtpMechanismUnsupported => SendFailure::Mailbox(f),
            _ => SendFailure::Message("message_rejected".into(), f.detail),
        },
    }
}

async fn send_via_mailbox(
    app: &App,
    m: &MailboxRecord,
    n: &Notification,
) -> Result<(String, String), SendFailure> {
    let sender = sender_identity(m)
        .map_err(|e| SendFailure::Message("invalid_mailbox".into(), e.to_string()))?;
    let message = build_message(n, &sender)
        .map_err(|e| SendFailure::Message("invalid_message".into(), e.to_string()))?;
    let resolved = m
        .spec
        .resolve()
        .map_err(|e| SendFailure::Message("invalid_mailbox".into(), e.to_string()))?;
    let pool_key = format!("{}/{}", m.tenant, m.id);
    let user = m.spec.username.as_str().to_owned();
    let send = |creds: SmtpCredentials| {
        let (pool_key, smtp, message) = (&pool_key, &resolved.smtp, &message);
        async move { app.mail.send(pool_key, smtp, &creds, message).await }
    };
    let sent = match (m.spec.auth, &resolved.oauth) {
        (AuthKind::Oauth2, Some(settings)) => {
            let token_failure = |e: crate::ports::TokenError| {
                let f = Failure::from(e);
                if f.permanence == Permanence::Transient {
                    SendFailure::Transient(f)
                } else {
                    SendFailure::Mailbox(f)
                }
            };
            let first = access_token(app, m, settings, None)
                .await
                .map_err(token_failure)?;
            note_refresh(app, m, first.refreshed).await;
            match send(SmtpCredentials::Xoauth2 {
                user: user.clone(),
                access_token: first.token.clone(),
            })
            .await
            {
                Err(e) if e.reason == StatusReason::TokenRejected => {
                    // refresh once and retry with the fresh token
                    let second = access_token(app, m, settings, Some(&first.token))
                        .await
                        .map_err(token_failure)?;
                    note_refresh(app, m, second.refreshed).await;
                    send(SmtpCredentials::Xoauth2 {
                        user,
                        access_token: second.token,
                    })
                    .await
                }
                sent => sent,
            }
        }
        _ => {
            let key = (m.tenant.clone(), m.id.clone());
            let read_password = || async {
                let secret = app.secrets.get(&m.tenant, &m.id).await.map_err(|e| {
                    SendFailure::Transient(Failure {
                        reason: StatusReason::ConnectionFailed,
                        detail: e.to_string(),
                        permanence: Permanence::Transient,
                    })
                })?;
                let Some(password) = secret.and_then(|s| s.password) else {
                    return Err(SendFailure::Mailbox(Failure {
                        reason: StatusReason::PasswordMissing,
                        detail: "no password stored".into(),
                        permanence: Permanence::Permanent,
                    }));
                };
                app.warm.put_password(&key, password.clone());
                Ok(password)
            };
            let cached = app.warm.password(&key);
            let from_cache = cached.is_some();
            let password = match cached {
                Some(p) => p,
                None => read_password().await?,
            };
            match send(SmtpCredentials::Password {
                user: user.clone(),
                password: password.clone(),
            })
            .await
            {
                Err(e) if from_cache && e.reason == StatusReason::CredentialsRejected => {
                    // the password may have changed since this process read it: read it again,
                    // and try once more only if it did
                    app.warm.forget_password(&key);
                    let fresh = read_password().await?;
                    if fresh == password {
                        Err(e)
                    } else {
                        send(SmtpCredentials::Password {
                            user,
                            password: fresh,
                        })
                        .await
                    }
                }
                sent => sent,
            }
        }
    };
    sent.map(|r| (r, message.message_id.clone()))
        .map_err(classify_send)
}

/// Record token metadata on the mailbox after a refresh (rare: once an hour at most).
async fn note_refresh(app: &App, m: &MailboxRecord, refreshed: Option<super::tokens::Refreshed>) {
    let Some(r) = refreshed else { return };
    let _ = modify(app, &m.tenant, &m.id, |rec| {
        rec.state.last_refreshed_at = Some(r.at);
        rec.state.refresh_token_last_used_at = Some(r.at);
        rec.state.access_token_expires_at = r.access_token_expires_at;
        true
    })
    .await;
}

async fn send_via_default(
    app: &App,
    mailbox: Option<&MailboxRecord>,
    n: &Notification,
    why: &str,
) -> Attempt {
    let sender = match app.default_sender.load().await {
        Ok(Some(s)) => s,
        Ok(None) => {
            // nothing is lost: the queue retries and finally keeps it in the dead-letter queue
            return Attempt::Transient {
                reason: "no_default_sender".into(),
                detail: format!(
                    "{why}, and no default sender is configured (OUTGOING_MAIL_DEFAULT_SENDER or OUTGOING_MAIL_DEFAULT_SENDER_SECRET)"
                ),
            };
        }
        Err(e) => {
            return Attempt::Transient {
                reason: "default_sender_unavailable".into(),
                detail: e.to_string(),
            };
        }
    };
    // the tenant's identity where it helps the reader: its name and its Reply-To
    let identity = SenderIdentity {
        from_name: mailbox
            .and_then(|m| m.spec.from_name.as_ref().map(|f| f.to_string()))
            .or_else(|| sender.from_name.clone()),
        from_address: sender.from_address.clone(),
        reply_to: mailbox.and_then(|m| {
            m.spec
                .reply_to
                .clone()
                .or_else(|| m.spec.from_address.clone())
                .or_else(|| Some(m.spec.username.clone()))
        }),
        signature: mailbox.and_then(|m| m.spec.signature.clone()),
    };
    let message = match build_message(n, &identity) {
        Ok(m) => m,
        Err(e) => {
            return Attempt::Permanent {
                mailbox: mailbox.cloned(),
                reason: "invalid_message".into(),
                detail: e.to_string(),
            };
        }
    };
    let creds = match (&sender.username, &sender.password) {
        (Some(u), Some(p)) => SmtpCredentials::Password {
            user: u.clone(),
            password: p.clone(),
        },
        _ => {
            return Attempt::Permanent {
                mailbox: mailbox.cloned(),
                reason: "default_sender_misconfigured".into(),
                detail: "the default sender needs a username and password".into(),
            };
        }
    };
    match app
        .mail
        .send("default-sender", &sender.smtp(), &creds, &message)
        .await
    {
        Ok(response) => {
            tracing::info!(
                notification = n.id.as_str(),
                why,
                "sent through the default sender"
            );
            Attempt::Delivered {
                via: DeliveredVia::DefaultSender,
                mailbox: mailbox.cloned(),
                response,
                message_id: message.message_id,
            }
        }
        Err(e) => match classify_send(e) {
            SendFailure::Transient(f) => Attempt::Transient {
                reason: f.reason.code().into(),
                detail: f.detail,
            },
            SendFailure::Message(reason, detail) => Attempt::Permanent {
                mailbox: mailbox.cloned(),
                reason,
                detail,
            },
            SendFailure::Mailbox(f) => Attempt::Permanent {
                mailbox: mailbox.cloned(),
                reason: format!("default_sender_{}", f.reason.code()),
                detail: f.detail,
            },
        },
    }
}
