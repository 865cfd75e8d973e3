//! Access tokens: use the stored one while it has life left, otherwise refresh, storing the
//! rotated refresh token before the new access token is used.

use time::{Duration, OffsetDateTime};

use crate::app::App;
use crate::domain::Sensitive;
use crate::domain::mailbox::{MailboxRecord, OAuthSettings};
use crate::domain::reason::StatusReason;
use crate::ports::{MailboxSecret, OAuthClientConfig, TokenError};

/// A cached access token is used only while it has more than this much life left.
pub const ACCESS_TOKEN_MARGIN: Duration = Duration::minutes(5);

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
        detail: format!("secret store unavailable: {e}"),
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

/// A usable access token for the mailbox. `force_refresh` skips the cached token (after the
/// SMTP server rejected it).
pub async fn access_token(
    app: &App,
    record: &MailboxRecord,
    settings: &OAuthSettings,
    force_refresh: bool,
) -> Result<AccessToken, TokenError> {
    let now = app.clock.now();
    let mut secret = app
        .secrets
        .get(&record.tenant, &record.id)
        .await
        .map_err(storage)?
        .unwrap_or_default();
    if !force_refresh
        && let (Some(token), Some(exp)) = (&secret.access_token, secret.access_token_expires_at)
        && exp - now > ACCESS_TOKEN_MARGIN
    {
        return Ok(AccessToken {
            token: token.clone(),
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
    // if this write fails the new refresh token would be lost, so fail the whole step.
    if let Some(rotated) = fresh.refresh_token {
        secret.refresh_token = Some(rotated);
    }
    secret.access_token = Some(fresh.access_token.clone());
    secret.access_token_expires_at = fresh.expires_at;
    app.secrets
        .put(&record.tenant, &record.id, &secret)
        .await
        .map_err(storage)?;
    tracing::info!(tenant = %record.tenant, mailbox = %record.id, "access token refreshed");
    Ok(AccessToken {
        token: fresh.access_token,
        refreshed: Some(Refreshed {
            at: now,
            access_token_expires_at: fresh.expires_at,
        }),
    })
}
