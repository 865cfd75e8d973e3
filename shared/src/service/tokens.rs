//! Access tokens: use a cached one while it has life left; otherwise refresh under a
//! per-mailbox lease (one refresh at a time across all processes), storing the rotated
//! refresh token before the new access token is used.

use std::time::Duration as StdDuration;

use time::{Duration, OffsetDateTime};

use crate::app::App;
use crate::domain::Sensitive;
use crate::domain::mailbox::{MailboxRecord, OAuthSettings};
use crate::domain::reason::StatusReason;
use crate::ports::{MailboxSecret, OAuthClientConfig, TokenError};

use super::warm::{CachedToken, MailboxKey};

/// A cached access token is used only while it has more than this much life left.
pub const ACCESS_TOKEN_MARGIN: Duration = Duration::minutes(5);
/// How long one refresh may hold the mailbox's lease (a crashed holder's lease runs out).
pub const REFRESH_LEASE: Duration = Duration::seconds(30);
/// How long a caller waits for another process's refresh before giving up (transient).
pub const REFRESH_WAIT: StdDuration = StdDuration::from_secs(15);

/// What changed about the tokens, to record on the mailbox.
#[derive(Debug, Clone, Copy)]
pub struct Refreshed {
    pub at: OffsetDateTime,
    pub access_token_expires_at: Option<OffsetDateTime>,
}

pub struct AccessToken {
    pub token: Sensitive,
    /// Set when this call refreshed (the record's token metadata should be updated).
    pub refreshed: Option<Refreshed>,
}

fn storage(e: impl std::fmt::Display) -> TokenError {
    // storage trouble is transient: nothing about the mailbox is wrong
    TokenError {
        reason: StatusReason::TokenEndpointUnavailable,
        detail: format!("storage unavailable: {e}"),
    }
}

pub fn client_config(
    settings: &OAuthSettings,
    secret: &MailboxSecret,
    redirect_uri: Option<String>,
) -> OAuthClientConfig {
    OAuthClientConfig {
        settings: settings.clone(),
        client_secret: secret.client_secret.clone(),
        redirect_uri,
    }
}

fn usable(
    token: &Sensitive,
    expires_at: OffsetDateTime,
    now: OffsetDateTime,
    rejected: Option<&Sensitive>,
    min_life: Duration,
) -> bool {
    expires_at - now > min_life && rejected.is_none_or(|r| r != token)
}

fn stored_usable(
    secret: &MailboxSecret,
    now: OffsetDateTime,
    rejected: Option<&Sensitive>,
    min_life: Duration,
) -> Option<CachedToken> {
    match (&secret.access_token, secret.access_token_expires_at) {
        (Some(t), Some(exp)) if usable(t, exp, now, rejected, min_life) => Some(CachedToken {
            token: t.clone(),
            expires_at: exp,
        }),
        _ => None,
    }
}

/// A usable access token for the mailbox. `rejected`: a token the SMTP server just refused
/// (never hand it out again; refresh instead).
pub async fn access_token(
    app: &App,
    record: &MailboxRecord,
    settings: &OAuthSettings,
    rejected: Option<&Sensitive>,
) -> Result<AccessToken, TokenError> {
    access_token_with_life(app, record, settings, rejected, ACCESS_TOKEN_MARGIN).await
}

/// Like [`access_token`], but refresh unless the token has more than `min_life` left
/// (the refresh job refreshes ahead of time).
pub async fn access_token_with_life(
    app: &App,
    record: &MailboxRecord,
    settings: &OAuthSettings,
    rejected: Option<&Sensitive>,
    min_life: Duration,
) -> Result<AccessToken, TokenError> {
    let key: MailboxKey = (record.tenant.clone(), record.id.clone());
    let fresh = |c: CachedToken| AccessToken {
        token: c.token,
        refreshed: None,
    };
    if let Some(c) = app
        .warm
        .token(&key)
        .filter(|c| usable(&c.token, c.expires_at, app.clock.now(), rejected, min_life))
    {
        return Ok(fresh(c));
    }
    let flight = app.warm.flight(&key);
    let _one_at_a_time = flight.lock().await;
    // someone in this process may have finished while we waited
    if let Some(c) = app
        .warm
        .token(&key)
        .filter(|c| usable(&c.token, c.expires_at, app.clock.now(), rejected, min_life))
    {
        return Ok(fresh(c));
    }
    if rejected.is_some() {
        app.warm.forget(&key);
    }
    let secret = app
        .secrets
        .get(&record.tenant, &record.id)
        .await
        .map_err(storage)?
        .unwrap_or_default();
    if let Some(c) = stored_usable(&secret, app.clock.now(), rejected, min_life) {
        app.warm.put_token(&key, c.clone());
        return Ok(fresh(c));
    }

    // refresh under the mailbox's lease
    let lease_key = format!("refresh/{}/{}", record.tenant, record.id);
    let holder = uuid::Uuid::new_v4().simple().to_string();
    let started = std::time::Instant::now();
    loop {
        if app
            .leases
            .try_acquire(&lease_key, &holder, app.clock.now(), REFRESH_LEASE)
            .await
            .map_err(storage)?
        {
            let result =
                refresh_holding_lease(app, record, settings, rejected, min_life, &key).await;
            if let Err(e) = app.leases.release(&lease_key, &holder).await {
                tracing::warn!(error = %e, mailbox = %record.id, "could not release the refresh lease (it expires by itself)");
            }
            return result;
        }
        // another process is refreshing: wait for its result rather than refreshing twice
        tokio::time::sleep(StdDuration::from_millis(100)).await;
        let secret = app
            .secrets
            .get(&record.tenant, &record.id)
            .await
            .map_err(storage)?
            .unwrap_or_default();
        if let Some(c) = stored_usable(&secret, app.clock.now(), rejected, min_life) {
            app.warm.put_token(&key, c.clone());
            return Ok(fresh(c));
        }
        if started.elapsed() > REFRESH_WAIT {
            return Err(TokenError {
                reason: StatusReason::TokenEndpointUnavailable,
                detail: "another process has been refreshing this mailbox's token for too long; retrying later".into(),
            });
        }
    }
}

async fn refresh_holding_lease(
    app: &App,
    record: &MailboxRecord,
    settings: &OAuthSettings,
    rejected: Option<&Sensitive>,
    min_life: Duration,
    key: &MailboxKey,
) -> Result<AccessToken, TokenError> {
    // re-read: the previous holder may have refreshed just before we got the lease
    let mut secret = app
        .secrets
        .get(&record.tenant, &record.id)
        .await
        .map_err(storage)?
        .unwrap_or_default();
    let now = app.clock.now();
    if let Some(c) = stored_usable(&secret, now, rejected, min_life) {
        app.warm.put_token(key, c.clone());
        return Ok(AccessToken {
            token: c.token,
            refreshed: None,
        });
    }
    let Some(refresh_token) = secret.refresh_token.clone() else {
        return Err(TokenError {
            reason: StatusReason::NotAuthorized,
            detail: "no refresh token stored".into(),
        });
    };
    let fresh = app
        .tokens
        .refresh(&client_config(settings, &secret, None), &refresh_token, now)
        .await?;
    // Store the rotated refresh token (and the new access token) before using anything:
    // if this write fails the new refresh token would be lost, so the whole step fails.
    if let Some(rotated) = fresh.refresh_token {
        secret.refresh_token = Some(rotated);
    }
    secret.access_token = Some(fresh.access_token.clone());
    secret.access_token_expires_at = fresh.expires_at;
    app.secrets
        .put(&record.tenant, &record.id, &secret)
        .await
        .map_err(storage)?;
    if let Some(exp) = fresh.expires_at {
        app.warm.put_token(
            key,
            CachedToken {
                token: fresh.access_token.clone(),
                expires_at: exp,
            },
        );
    }
    tracing::info!(tenant = %record.tenant, mailbox = %record.id, "access token refreshed");
    Ok(AccessToken {
        token: fresh.access_token,
        refreshed: Some(Refreshed {
            at: now,
            access_token_expires_at: fresh.expires_at,
        }),
    })
}
