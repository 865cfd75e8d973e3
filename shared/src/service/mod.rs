//! Use cases. They talk to ports only (no AWS, no Lambda, no HTTP framework).

pub mod alerts;
pub mod authorize;
pub mod mailboxes;
pub mod refresh;
pub mod send;
pub mod tokens;
pub mod verify;
pub mod warm;

use crate::app::App;
use crate::domain::mailbox::MailboxRecord;
use crate::domain::{FieldError, MailboxId, TenantId};
use crate::ports::StoreError;

/// What a use case can fail with; the API layer maps each to a status and a JSON error.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error("{code}: {message}")]
    BadRequest { code: &'static str, message: String },
    #[error("mailbox not found")]
    NotFound,
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("server misconfigured: {0}")]
    Misconfigured(String),
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ServiceError::NotFound,
            StoreError::Conflict => ServiceError::Conflict(
                "the mailbox was changed concurrently; reload and try again".into(),
            ),
            StoreError::Unavailable(m) | StoreError::Corrupt(m) => ServiceError::Unavailable(m),
        }
    }
}

pub(crate) async fn load(
    app: &App,
    tenant: &TenantId,
    id: &MailboxId,
) -> Result<MailboxRecord, ServiceError> {
    app.mailboxes
        .get(tenant, id)
        .await?
        .ok_or(ServiceError::NotFound)
}

/// Before every write: timestamps, when the status changed, when the job is next due.
pub(crate) fn stamp(
    app: &App,
    r: &mut MailboxRecord,
    status_before: crate::domain::mailbox::MailboxStatus,
) {
    let now = app.clock.now();
    r.updated_at = now;
    if r.state.status != status_before || r.state.status_changed_at.is_none() {
        r.state.status_changed_at = Some(now);
        // a working mailbox just broke (wherever that was noticed): the admins must hear of it
        if status_before == crate::domain::mailbox::MailboxStatus::Verified
            && r.state.status == crate::domain::mailbox::MailboxStatus::NotVerified
        {
            r.state.alerts_pending = true;
        }
    }
    r.state.next_due_at = r.compute_due(&app.due_policy);
}

/// Read–modify–write with the store's version check, retried on conflicts.
/// `f` returns `false` to write nothing (e.g. the configuration changed meanwhile).
pub(crate) async fn modify(
    app: &App,
    tenant: &TenantId,
    id: &MailboxId,
    f: impl FnMut(&mut MailboxRecord) -> bool,
) -> Result<MailboxRecord, ServiceError> {
    modify_from(app, tenant, id, None, f).await
}

/// [`modify`] starting from a copy of the record read moments ago (`known`): its version makes
/// the write safe, and a conflict re-reads. Saves one store read when nobody wrote in between.
pub(crate) async fn modify_from(
    app: &App,
    tenant: &TenantId,
    id: &MailboxId,
    mut known: Option<MailboxRecord>,
    mut f: impl FnMut(&mut MailboxRecord) -> bool,
) -> Result<MailboxRecord, ServiceError> {
    for _ in 0..5 {
        let mut r = match known.take() {
            Some(r) => r,
            None => load(app, tenant, id).await?,
        };
        let before = r.state.status;
        if !f(&mut r) {
            return Ok(r);
        }
        stamp(app, &mut r, before);
        match app.mailboxes.update(&r).await {
            Ok(saved) => return Ok(saved),
            Err(StoreError::Conflict) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::Conflict.into())
}
