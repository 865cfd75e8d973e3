//! The OAuth 2.0 authorization-code flow with PKCE: start (authorize-start) and finish
//! (oauth-callback), then verification.

use base64::Engine;
use serde_json::Value;
use time::Duration;

use crate::adapters::oauth::authorization_request;
use crate::app::App;
use crate::domain::mailbox::{AuthKind, MailboxRecord, MailboxStatus, Provider};
use crate::domain::reason::{Permanence, StatusReason, classify_token_error};
use crate::domain::{MailboxId, TenantId, truncate};
use crate::ports::AuthState;

use super::tokens::client_config;
use super::verify::{Failure, VerifyMode, apply, check};
use super::warm::CachedToken;
use super::{ServiceError, load, modify_from};

/// How long a `state` stays valid.
pub const STATE_LIFETIME: Duration = Duration::minutes(10);

/// `POST /mailboxes/{id}/authorize`: the URL to send the admin's browser to.
pub async fn start(
    app: &App,
    tenant: &TenantId,
    id: &MailboxId,
    request_base: Option<&str>,
) -> Result<String, ServiceError> {
    let record = load(app, tenant, id).await?;
    if record.spec.auth != AuthKind::Oauth2 {
        return Err(ServiceError::BadRequest {
            code: "not_applicable",
            message: "basic-authentication mailboxes have no authorization step; use POST /mailboxes/{id}/verify".into(),
        });
    }
    let resolved = record.spec.resolve()?;
    let Some(settings) = resolved.oauth else {
        return Err(ServiceError::BadRequest {
            code: "not_applicable",
            message: "mailbox has no OAuth settings".into(),
        });
    };
    if record.spec.provider != Provider::Custom && !record.state.has_client_secret {
        return Err(ServiceError::BadRequest {
            code: "client_secret_missing",
            message: StatusReason::ClientSecretMissing.message().into(),
        });
    }
    let base = app.public_url.as_deref().or(request_base).ok_or_else(|| {
        ServiceError::Misconfigured(
            "OUTGOING_MAIL_PUBLIC_URL is not set and the request does not name its host".into(),
        )
    })?;
    let redirect_uri = App::redirect_uri(base);
    let req = authorization_request(&settings, &redirect_uri, record.spec.username.as_str())
        .map_err(|e| ServiceError::BadRequest {
            code: "invalid_oauth_settings",
            message: e.detail,
        })?;
    let now = app.clock.now();
    app.states
        .put_state(&AuthState {
            state: req.state,
            tenant: tenant.clone(),
            mailbox_id: id.clone(),
            token_url: settings.token_url.to_string(),
            client_id: settings.client_id.clone(),
            pkce_verifier: req.pkce_verifier,
            redirect_uri,
            created_at: now,
            expires_at: now + STATE_LIFETIME,
        })
        .await?;
    tracing::info!(tenant = %tenant, mailbox = %id, "authorization started");
    Ok(req.url)
}

/// Query parameters of `GET /oauth/callback`.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct CallbackParams {
    pub code: Option<String>,
    pub state: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
}

/// What the callback page tells the person.
#[derive(Debug, Clone)]
pub struct CallbackOutcome {
    pub http_status: u16,
    pub success: bool,
    pub title: String,
    pub message: String,
    pub detail: Option<String>,
    pub mailbox: Option<MailboxRecord>,
}

impl CallbackOutcome {
    fn refused(status: u16, title: &str, message: &str) -> Self {
        Self {
            http_status: status,
            success: false,
            title: title.into(),
            message: message.into(),
            detail: None,
            mailbox: None,
        }
    }
}

/// The identities an id_token names, after checking it is meant for this client and current.
/// The id_token came straight from the token endpoint over TLS (OIDC Core 3.1.3.7), so its
/// signature is not what protects us; audience, expiry and issuer shape are checked.
fn id_token_names(
    id_token: &str,
    client_id: &str,
    now: time::OffsetDateTime,
) -> Result<Vec<String>, String> {
    let payload = id_token
        .split('.')
        .nth(1)
        .ok_or("the id_token is not a JWT")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| "the id_token payload is not base64url")?;
    let claims: Value =
        serde_json::from_slice(&bytes).map_err(|_| "the id_token payload is not JSON")?;
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == client_id,
        Some(Value::Array(a)) => a.iter().any(|x| x.as_str() == Some(client_id)),
        _ => false,
    };
    if !aud_ok {
        return Err("the id_token was issued for another application (aud)".into());
    }
    if let Some(exp) = claims.get("exp").and_then(Value::as_i64)
        && exp + 300 < now.unix_timestamp()
    {
        return Err("the id_token has expired".into());
    }
    if let (Some(tid), Some(iss)) = (
        claims.get("tid").and_then(Value::as_str),
        claims.get("iss").and_then(Value::as_str),
    ) && iss.contains("login.microsoftonline.com")
        && !iss.trim_end_matches('/').ends_with(&format!("/{tid}/v2.0"))
    {
        return Err("the id_token's issuer does not match its tenant".into());
    }
    Ok(["preferred_username", "email", "upn"]
        .iter()
        .filter_map(|k| claims.get(*k).and_then(Value::as_str).map(str::to_owned))
        .collect())
}

/// The page for a transient failure of the provider during the sign-in. The mailbox keeps its
/// status, and nothing retries this sign-in by itself (the reason's own message says "retried
/// automatically", which is true for a stored authorization, not for an interrupted sign-in).
fn transient(reason: StatusReason, detail: String, record: MailboxRecord) -> CallbackOutcome {
    let (title, what) = if reason == StatusReason::Throttled {
        (
            "The identity provider is busy",
            "The identity provider is throttling requests right now",
        )
    } else {
        (
            "The identity provider is unavailable",
            "The identity provider could not be reached or answered with a server error",
        )
    };
    CallbackOutcome {
        http_status: 502,
        success: false,
        title: title.into(),
        message: format!(
            "{what}, so the sign-in could not be completed. The mailbox was not changed. Click Authorize again in a few minutes."
        ),
        detail: Some(detail),
        mailbox: Some(record),
    }
}

/// Record a failure on the mailbox and build the page.
async fn fail(
    app: &App,
    record: &MailboxRecord,
    reason: StatusReason,
    detail: Option<String>,
) -> CallbackOutcome {
    tracing::warn!(tenant = %record.tenant, mailbox = %record.id, reason = reason.code(), detail = detail.as_deref().unwrap_or(""), "authorization failed");
    if record.state.status == MailboxStatus::Verified && record.state.has_refresh_token {
        // A failed re-authorization of a working mailbox: its stored authorization is untouched
        // and still works, so saying "not verified" would be untrue.
        return CallbackOutcome {
            http_status: 200,
            success: false,
            title: "The new authorization failed; the mailbox still works".into(),
            message: format!(
                "{} The mailbox keeps its previous authorization and stays verified.",
                reason.message()
            ),
            detail,
            mailbox: Some(record.clone()),
        };
    }
    let saved = modify_from(app, &record.tenant, &record.id, Some(record.clone()), |r| {
        r.state.set_not_verified(reason, detail.clone());
        true
    })
    .await;
    CallbackOutcome {
        http_status: 200,
        success: false,
        title: "The mailbox is not verified".into(),
        message: reason.message().into(),
        detail,
        mailbox: saved.ok(),
    }
}

/// `GET /oauth/callback`: consume the state, exchange the code, check the account, store the
/// tokens in one secret write, verify over SMTP, record the status.
pub async fn callback(app: &App, params: &CallbackParams) -> CallbackOutcome {
    let Some(state_value) = params
        .state
        .as_deref()
        .filter(|s| !s.is_empty() && s.len() <= 512)
    else {
        return CallbackOutcome::refused(
            400,
            "Invalid authorization response",
            "The response has no valid state parameter. Go back to the mailbox list and click Authorize again.",
        );
    };
    let state = match app.states.take_state(state_value).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            tracing::warn!("callback with an unknown or already used state");
            return CallbackOutcome::refused(
                400,
                "This authorization link is not valid",
                "This sign-in response was already used or was never issued here. Nothing was changed. Go back to the mailbox list and click Authorize again.",
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "state store unavailable");
            return CallbackOutcome::refused(
                503,
                "Temporarily unavailable",
                "The service could not read its storage. Nothing was changed. Try Authorize again in a minute.",
            );
        }
    };
    let now = app.clock.now();
    if state.expires_at < now {
        return CallbackOutcome::refused(
            400,
            "This authorization has expired",
            "More than 10 minutes passed between Authorize and the sign-in. Nothing was changed. Click Authorize again and finish the sign-in promptly.",
        );
    }
    // A sign-in that returned a code needs the mailbox's secret (its client secret) as well:
    // both are read at once, one store round trip of latency instead of two.
    let (found, secret_read) =
        tokio::join!(app.mailboxes.get(&state.tenant, &state.mailbox_id), async {
            match params.error {
                None => Some(app.secrets.get(&state.tenant, &state.mailbox_id).await),
                Some(_) => None,
            }
        });
    let record = match found {
        Ok(Some(r)) => r,
        Ok(None) => {
            return CallbackOutcome::refused(
                404,
                "Mailbox not found",
                "The mailbox was deleted after Authorize was clicked. Nothing was stored.",
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "mailbox store unavailable");
            return CallbackOutcome::refused(
                503,
                "Temporarily unavailable",
                "The service could not read its storage. Try Authorize again in a minute.",
            );
        }
    };
    let settings = match record.spec.resolve().ok().and_then(|r| r.oauth) {
        // mix-up defence: the state belongs to this token endpoint and client
        Some(s) if s.token_url.as_str() == state.token_url && s.client_id == state.client_id => s,
        _ => {
            return CallbackOutcome::refused(
                409,
                "The mailbox settings changed",
                "The mailbox's OAuth settings changed after Authorize was clicked. Nothing was stored. Click Authorize again.",
            );
        }
    };

    if let Some(error) = params.error.as_deref() {
        let description = params.error_description.clone().unwrap_or_default();
        let reason = match classify_token_error(error, &description) {
            StatusReason::ProviderError if error == "access_denied" => {
                StatusReason::ConsentDeclined
            }
            r => r,
        };
        let detail = truncate(&format!("{error}: {description}"), 500);
        if reason.permanence() == Permanence::Transient {
            // the provider is down or busy (`temporarily_unavailable`, `server_error`): nothing
            // about the mailbox is wrong, so its status stays what it was
            tracing::warn!(mailbox = %record.id, detail = %detail, "identity provider unavailable during sign-in");
            return transient(reason, detail, record);
        }
        return fail(app, &record, reason, Some(detail)).await;
    }
    let Some(code) = params
        .code
        .as_deref()
        .filter(|c| !c.is_empty() && c.len() <= 4096)
    else {
        return CallbackOutcome::refused(
            400,
            "Invalid authorization response",
            "The response has neither a code nor an error. Click Authorize again.",
        );
    };

    let secret_read = match secret_read {
        Some(read) => read,
        None => app.secrets.get(&record.tenant, &record.id).await,
    };
    let mut secret = match secret_read {
        Ok(s) => s.unwrap_or_default(),
        Err(e) => {
            tracing::error!(error = %e, "secret store unavailable");
            return CallbackOutcome::refused(
                503,
                "Temporarily unavailable",
                "The service could not read its secret store. Click Authorize again in a minute.",
            );
        }
    };
    let client = client_config(&settings, &secret, Some(state.redirect_uri.clone()));
    let tokens = match app
        .tokens
        .exchange_code(&client, code, &state.pkce_verifier, now)
        .await
    {
        Ok(t) => t,
        Err(e) if e.permanence() == Permanence::Transient => {
            tracing::warn!(mailbox = %record.id, detail = %e.detail, "token endpoint unavailable during code exchange");
            // the code may be spent; the status is what it was
            return transient(e.reason, e.detail, record);
        }
        Err(e) => return fail(app, &record, e.reason, Some(e.detail)).await,
    };

    if let Some(id_token) = &tokens.id_token {
        match id_token_names(id_token.expose(), &settings.client_id, now) {
            Err(problem) => {
                return fail(app, &record, StatusReason::ProviderError, Some(problem)).await;
            }
            Ok(names)
                if !names.is_empty()
                    && !names.iter().any(|n| record.spec.username.same_mailbox(n)) =>
            {
                // tokens are dropped here, never stored
                let signed_in = names.first().cloned().unwrap_or_default();
                return fail(
                    app,
                    &record,
                    StatusReason::WrongAccount,
                    Some(format!(
                        "signed in as {signed_in}, but the mailbox is {}",
                        record.spec.username
                    )),
                )
                .await;
            }
            Ok(_) => {}
        }
    }
    let Some(refresh_token) = tokens.refresh_token else {
        return fail(
            app,
            &record,
            StatusReason::NoRefreshToken,
            Some("the token response had no refresh_token".into()),
        )
        .await;
    };

    secret.refresh_token = Some(refresh_token);
    secret.access_token = Some(tokens.access_token.clone());
    secret.access_token_expires_at = tokens.expires_at;
    if let Err(e) = app.secrets.put(&record.tenant, &record.id, &secret).await {
        tracing::error!(error = %e, mailbox = %record.id, "could not store tokens");
        return CallbackOutcome::refused(
            503,
            "Temporarily unavailable",
            "The tokens could not be stored. Nothing was changed. Click Authorize again in a minute.",
        );
    }
    // the verification below uses the new access token straight from the warm cache
    if let Some(expires_at) = tokens.expires_at {
        app.warm.put_token(
            &(record.tenant.clone(), record.id.clone()),
            CachedToken {
                token: tokens.access_token.clone(),
                expires_at,
            },
        );
    }
    let fingerprint = record.spec.verification_fingerprint();
    // The authorization is recorded while the SMTP check runs (the check needs only the
    // stored tokens, already written): the record write costs no latency of its own.
    let (authorized, v) = tokio::join!(
        modify_from(app, &record.tenant, &record.id, Some(record.clone()), |r| {
            if r.spec.verification_fingerprint() != fingerprint {
                return false;
            }
            r.state.has_refresh_token = true;
            r.state.authorized_at = Some(now);
            r.state.last_refreshed_at = Some(now);
            r.state.refresh_token_last_used_at = Some(now);
            r.state.access_token_expires_at = tokens.expires_at;
            true
        }),
        async {
            tracing::info!(tenant = %record.tenant, mailbox = %record.id, "authorization stored; verifying");
            check(app, &record).await
        }
    );
    let record = match authorized {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, mailbox = %record.id, "could not record authorization");
            return CallbackOutcome::refused(
                503,
                "Temporarily unavailable",
                "The authorization could not be recorded. Click Authorize again in a minute.",
            );
        }
    };
    let now = app.clock.now();
    let saved = modify_from(app, &record.tenant, &record.id, Some(record.clone()), |r| {
        if r.spec.verification_fingerprint() != fingerprint {
            return false;
        }
        apply(&mut r.state, &v, VerifyMode::Interactive, now);
        true
    })
    .await;
    match (&v.result, saved) {
        (Ok(()), Ok(r)) => CallbackOutcome {
            http_status: 200,
            success: true,
            title: "The mailbox is verified".into(),
            message: format!(
                "{} is authorized and its SMTP sign-in works. Notifications will be sent from it. You can close this window.",
                r.spec.username
            ),
            detail: None,
            mailbox: Some(r),
        },
        (Err(Failure { reason, detail, .. }), saved) => {
            tracing::warn!(mailbox = %record.id, reason = reason.code(), detail = %detail, "verification after authorization failed");
            CallbackOutcome {
                http_status: 200,
                success: false,
                title: "The mailbox is not verified".into(),
                message: reason.message().into(),
                detail: Some(detail.clone()),
                mailbox: saved.ok(),
            }
        }
        (Ok(()), Err(e)) => {
            tracing::error!(error = %e, "could not record verification");
            CallbackOutcome::refused(
                503,
                "Temporarily unavailable",
                "The mailbox works but its status could not be saved. Refresh the mailbox list or click Verify.",
            )
        }
    }
}
