//! Mailbox management: create, list, get, patch, delete.

use serde_json::Value;

use crate::app::App;
use crate::domain::mailbox::{MailboxRecord, MailboxState, MailboxStatus, parse_mailbox_input};
use crate::domain::{MailboxId, TenantId};
use crate::ports::{MailboxSecret, StoreError};

use super::{ServiceError, load, modify};

pub async fn create(
    app: &App,
    tenant: &TenantId,
    body: &Value,
) -> Result<MailboxRecord, ServiceError> {
    let input = parse_mailbox_input(body, None)?;
    let now = app.clock.now();
    let id = MailboxId::generate();
    let mut state = MailboxState::pending(input.spec.auth);
    state.has_client_secret = input.secrets.client_secret.is_some();
    state.has_password = input.secrets.password.is_some();
    state.status_warnings = input.warnings;
    let record = MailboxRecord {
        id: id.clone(),
        tenant: tenant.clone(),
        version: 0,
        spec: input.spec,
        state,
        created_at: now,
        updated_at: now,
    };

    if input.secrets.client_secret.is_some() || input.secrets.password.is_some() {
        let secret = MailboxSecret {
            client_secret: input.secrets.client_secret,
            password: input.secrets.password,
            ..Default::default()
        };
        app.secrets.put(tenant, &id, &secret).await?;
    }
    let mut record = record;
    let status = record.state.status;
    super::stamp(app, &mut record, status);
    match app.mailboxes.insert(&record).await {
        Ok(saved) => {
            if saved.spec.default {
                clear_other_defaults(app, tenant, &saved.id).await?;
            }
            tracing::info!(tenant = %tenant, mailbox = %saved.id, auth = ?saved.spec.auth, provider = ?saved.spec.provider, "mailbox created");
            Ok(saved)
        }
        Err(e) => {
            // leave nothing behind
            let _ = app.secrets.delete(tenant, &id).await;
            Err(e.into())
        }
    }
}

/// One default mailbox per tenant: setting it on one clears it on the others.
async fn clear_other_defaults(
    app: &App,
    tenant: &TenantId,
    keep: &MailboxId,
) -> Result<(), ServiceError> {
    for other in app.mailboxes.list(tenant).await? {
        if other.id != *keep && other.spec.default {
            modify(app, tenant, &other.id, |r| {
                std::mem::replace(&mut r.spec.default, false)
            })
            .await?;
        }
    }
    Ok(())
}

pub async fn list(app: &App, tenant: &TenantId) -> Result<Vec<MailboxRecord>, ServiceError> {
    Ok(app.mailboxes.list(tenant).await?)
}

pub async fn get(
    app: &App,
    tenant: &TenantId,
    id: &MailboxId,
) -> Result<MailboxRecord, ServiceError> {
    load(app, tenant, id).await
}

pub async fn patch(
    app: &App,
    tenant: &TenantId,
    id: &MailboxId,
    body: &Value,
) -> Result<MailboxRecord, ServiceError> {
    for _ in 0..5 {
        let current = load(app, tenant, id).await?;
        let input = parse_mailbox_input(body, Some(&current.spec))?;
        let reauthorize =
            input.spec.authorization_fingerprint() != current.spec.authorization_fingerprint();
        let reverify = !reauthorize
            && input.spec.verification_fingerprint() != current.spec.verification_fingerprint();
        let mut next = current.clone();
        next.spec = input.spec;
        next.updated_at = app.clock.now();
        if input.secrets.client_secret.is_some() {
            next.state
                .clear_warning("client_secret_looks_like_secret_id");
        }
        for w in input.warnings {
            next.state.set_warning(&w.code, w.message);
        }

        // secrets first: one write with everything that changed
        let secret_changed = input.secrets.client_secret.is_some()
            || input.secrets.password.is_some()
            || reauthorize;
        if secret_changed {
            let mut secret = app.secrets.get(tenant, id).await?.unwrap_or_default();
            if let Some(s) = input.secrets.client_secret {
                secret.client_secret = Some(s);
                next.state.has_client_secret = true;
            }
            if let Some(p) = input.secrets.password {
                secret.password = Some(p);
                next.state.has_password = true;
            }
            if reauthorize {
                // tokens belong to the old configuration: discard them
                secret.refresh_token = None;
                secret.access_token = None;
                secret.access_token_expires_at = None;
            }
            if next.spec.auth == crate::domain::mailbox::AuthKind::Basic {
                secret.client_secret = None;
                next.state.has_client_secret = false;
            } else {
                secret.password = None;
                next.state.has_password = false;
            }
            app.secrets.put(tenant, id, &secret).await?;
            // this process sends with the new password from now on (others re-read it within
            // warm::PASSWORD_TTL, or at once when the server refuses the old one)
            app.warm.forget_password(&(tenant.clone(), id.clone()));
        }
        if reauthorize {
            let keep = (
                next.state.has_client_secret,
                next.state.has_password,
                next.state.status_warnings.clone(),
            );
            next.state = MailboxState::pending(next.spec.auth);
            (
                next.state.has_client_secret,
                next.state.has_password,
                next.state.status_warnings,
            ) = keep;
        } else if reverify
            || (next.state.status == MailboxStatus::NotVerified
                && (body.get("client_secret").is_some() || body.get("password").is_some()))
        {
            // SMTP settings changed (the tokens stay valid), or a new credential may fix the
            // reason: the old verdict no longer holds; the refresh job (or Verify) checks again
            let oauth = next.spec.auth == crate::domain::mailbox::AuthKind::Oauth2;
            next.state.status = if oauth && !next.state.has_refresh_token {
                MailboxStatus::PendingAuthorization
            } else {
                MailboxStatus::PendingVerification
            };
            next.state.status_reason = None;
            next.state.status_detail = None;
        }
        super::stamp(app, &mut next, current.state.status);
        match app.mailboxes.update(&next).await {
            Ok(saved) => {
                if saved.spec.default && !current.spec.default {
                    clear_other_defaults(app, tenant, id).await?;
                }
                tracing::info!(tenant = %tenant, mailbox = %id, reauthorize, "mailbox updated");
                return Ok(saved);
            }
            Err(StoreError::Conflict) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::Conflict.into())
}

pub async fn delete(app: &App, tenant: &TenantId, id: &MailboxId) -> Result<(), ServiceError> {
    load(app, tenant, id).await?;
    // secret first: if removing it fails, the record stays and the delete can be retried
    app.secrets.delete(tenant, id).await?;
    app.warm.forget_password(&(tenant.clone(), id.clone()));
    if !app.mailboxes.delete(tenant, id).await? {
        return Err(ServiceError::NotFound);
    }
    tracing::info!(tenant = %tenant, mailbox = %id, "mailbox deleted with its secret");
    Ok(())
}
