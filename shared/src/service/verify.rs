//! Verification: prove the mailbox can authenticate to its SMTP server, sending nothing.

use crate::app::App;
use crate::domain::mailbox::{AuthKind, MailboxRecord, MailboxState};
use crate::domain::reason::{Permanence, StatusReason};
use crate::domain::{MailboxId, TenantId};
use crate::ports::{SmtpCredentials, SmtpError, TokenError};

use super::tokens::{Refreshed, access_token};
use super::{ServiceError, load, modify};

/// Who asked: an admin (any failure is reported as Not Verified, because that is the truth
/// right now) or the schedule (transient failures keep the status and are retried).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyMode {
    Interactive,
    Scheduled,
}

#[derive(Debug, Clone)]
pub struct Failure {
    pub reason: StatusReason,
    pub detail: String,
    pub permanence: Permanence,
}

impl From<TokenError> for Failure {
    fn from(e: TokenError) -> Self {
        Self {
            permanence: e.permanence(),
            reason: e.reason,
            detail: e.detail,
        }
    }
}
impl From<SmtpError> for Failure {
    fn from(e: SmtpError) -> Self {
        Self {
            permanence: e.permanence(),
            reason: e.reason,
            detail: e.detail,
        }
    }
}

/// The outcome of one verification, before it is written.
pub struct Verification {
    pub result: Result<(), Failure>,
    pub refreshed: Option<Refreshed>,
}

/// Run the SMTP check for a stored mailbox (refreshing the token if needed).
pub async fn check(app: &App, record: &MailboxRecord) -> Verification {
    let resolved = match record.spec.resolve() {
        Ok(r) => r,
        Err(e) => {
            return Verification {
                result: Err(Failure {
                    reason: StatusReason::ProviderError,
                    detail: e.to_string(),
                    permanence: Permanence::Permanent,
                }),
                refreshed: None,
            };
        }
    };
    let user = record.spec.username.as_str().to_owned();
    match (&record.spec.auth, &resolved.oauth) {
        (AuthKind::Basic, _) | (_, None) => {
            let secret = match app.secrets.get(&record.tenant, &record.id).await {
                Ok(s) => s.unwrap_or_default(),
                Err(e) => {
                    return Verification {
                        result: Err(Failure {
                            reason: StatusReason::ConnectionFailed,
                            detail: format!("secret store unavailable: {e}"),
                            permanence: Permanence::Transient,
                        }),
                        refreshed: None,
                    };
                }
            };
            let Some(password) = secret.password else {
                return Verification {
                    result: Err(Failure {
                        reason: StatusReason::PasswordMissing,
                        detail: "no password stored".into(),
                        permanence: Permanence::Permanent,
                    }),
                    refreshed: None,
                };
            };
            let result = app
                .mail
                .verify(
                    &resolved.smtp,
                    &SmtpCredentials::Password { user, password },
                )
                .await
                .map_err(Failure::from);
            Verification {
                result,
                refreshed: None,
            }
        }
        (AuthKind::Oauth2, Some(settings)) => {
            let first = match access_token(app, record, settings, None).await {
                Ok(t) => t,
                Err(e) => {
                    return Verification {
                        result: Err(e.into()),
                        refreshed: None,
                    };
                }
            };
            let mut refreshed = first.refreshed;
            let rejected = first.token.clone();
            let creds = SmtpCredentials::Xoauth2 {
                user: user.clone(),
                access_token: first.token,
            };
            match app.mail.verify(&resolved.smtp, &creds).await {
                Ok(()) => Verification {
                    result: Ok(()),
                    refreshed,
                },
                // A cached token may have been revoked or be for another audience: refresh once.
                Err(e) if e.reason == StatusReason::TokenRejected && refreshed.is_none() => {
                    let second = match access_token(app, record, settings, Some(&rejected)).await {
                        Ok(t) => t,
                        Err(e) => {
                            return Verification {
                                result: Err(e.into()),
                                refreshed,
                            };
                        }
                    };
                    refreshed = second.refreshed;
                    let creds = SmtpCredentials::Xoauth2 {
                        user,
                        access_token: second.token,
                    };
                    Verification {
                        result: app
                            .mail
                            .verify(&resolved.smtp, &creds)
                            .await
                            .map_err(Failure::from),
                        refreshed,
                    }
                }
                Err(e) => Verification {
                    result: Err(e.into()),
                    refreshed,
                },
            }
        }
    }
}

/// Apply a verification to the mailbox state.
pub fn apply(
    state: &mut MailboxState,
    v: &Verification,
    mode: VerifyMode,
    now: time::OffsetDateTime,
) {
    if let Some(r) = v.refreshed {
        state.last_refreshed_at = Some(r.at);
        state.refresh_token_last_used_at = Some(r.at);
        state.access_token_expires_at = r.access_token_expires_at;
    }
    match &v.result {
        Ok(()) => state.set_verified(now),
        Err(f) if mode == VerifyMode::Scheduled && f.permanence == Permanence::Transient => {
            state.last_error = Some(format!("{}: {}", f.reason.code(), f.detail));
            state.consecutive_failures = state.consecutive_failures.saturating_add(1);
        }
        Err(f) => state.set_not_verified(f.reason, Some(f.detail.clone())),
    }
}

/// `POST /mailboxes/{id}/verify`: verify now and record the result.
pub async fn verify_now(
    app: &App,
    tenant: &TenantId,
    id: &MailboxId,
) -> Result<MailboxRecord, ServiceError> {
    let record = load(app, tenant, id).await?;
    if record.spec.auth == AuthKind::Oauth2 && !record.state.has_refresh_token {
        // nothing to verify with yet; say what to do instead of a cryptic failure
        return modify(app, tenant, id, |r| {
            r.state.set_not_verified(StatusReason::NotAuthorized, None);
            true
        })
        .await;
    }
    let fingerprint = record.spec.verification_fingerprint();
    let v = check(app, &record).await;
    let now = app.clock.now();
    if let Err(f) = &v.result {
        tracing::warn!(tenant = %tenant, mailbox = %id, reason = f.reason.code(), detail = %f.detail, "verification failed");
    } else {
        tracing::info!(tenant = %tenant, mailbox = %id, "mailbox verified");
    }
    modify(app, tenant, id, |r| {
        // an admin changed the authorization settings meanwhile: this result is about the old ones
        if r.spec.verification_fingerprint() != fingerprint {
            return false;
        }
        apply(&mut r.state, &v, VerifyMode::Interactive, now);
        true
    })
    .await
}
