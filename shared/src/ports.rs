//! Ports: the traits the domain services talk to. Adapters live in `crate::adapters`.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::domain::mailbox::{MailboxRecord, OAuthSettings, SmtpSettings};
use crate::domain::notification::OutgoingMessage;
use crate::domain::reason::{Permanence, StatusReason};
use crate::domain::{MailboxId, Sensitive, TenantId};

/// Storage failures every backend maps its own errors to.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A conditional write lost: someone else wrote first (or the item already exists).
    #[error("conflicting concurrent write")]
    Conflict,
    #[error("not found")]
    NotFound,
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
}

/// Mailbox records, keyed by (tenant, id). Writes are conditional on `version`.
#[async_trait]
pub trait MailboxStore: Send + Sync {
    /// Store a new record (`version` is set to 1). `Conflict` if the id exists.
    async fn insert(&self, record: &MailboxRecord) -> Result<MailboxRecord, StoreError>;
    async fn get(
        &self,
        tenant: &TenantId,
        id: &MailboxId,
    ) -> Result<Option<MailboxRecord>, StoreError>;
    /// All mailboxes of one tenant, oldest first.
    async fn list(&self, tenant: &TenantId) -> Result<Vec<MailboxRecord>, StoreError>;
    /// Replace the record if the stored version still equals `record.version`;
    /// returns the record with its new version. `Conflict` if it changed, `NotFound` if gone.
    async fn update(&self, record: &MailboxRecord) -> Result<MailboxRecord, StoreError>;
    /// Remove; `false` if there was nothing to remove.
    async fn delete(&self, tenant: &TenantId, id: &MailboxId) -> Result<bool, StoreError>;
    /// Mailboxes whose `state.next_due_at` ≤ `now`, most overdue first, at most `limit`.
    /// Reads only due mailboxes (an index), never all of them.
    async fn due(
        &self,
        now: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<MailboxRecord>, StoreError>;
}

/// A pending authorization: created by authorize-start, consumed once by oauth-callback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuthState {
    /// The `state` parameter (≥128 bits of randomness, URL-safe).
    pub state: Sensitive,
    pub tenant: TenantId,
    pub mailbox_id: MailboxId,
    /// The token endpoint this state belongs to (mix-up defence).
    pub token_url: String,
    pub client_id: String,
    pub pkce_verifier: Sensitive,
    pub redirect_uri: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

#[async_trait]
pub trait AuthStateStore: Send + Sync {
    async fn put_state(&self, state: &AuthState) -> Result<(), StoreError>;
    /// Atomically remove and return the state (expired ones too: the caller tells the user).
    /// A second take of the same state returns `None`.
    async fn take_state(&self, state: &str) -> Result<Option<AuthState>, StoreError>;
}

/// Everything secret about one mailbox, stored as one secret (one write per change).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MailboxSecret {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<Sensitive>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Sensitive>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<Sensitive>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<Sensitive>,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub access_token_expires_at: Option<OffsetDateTime>,
}

#[async_trait]
pub trait SecretStore: Send + Sync {
    async fn get(
        &self,
        tenant: &TenantId,
        id: &MailboxId,
    ) -> Result<Option<MailboxSecret>, StoreError>;
    /// Create or replace the mailbox's secret.
    async fn put(
        &self,
        tenant: &TenantId,
        id: &MailboxId,
        secret: &MailboxSecret,
    ) -> Result<(), StoreError>;
    /// Remove the secret for good (no-op if absent).
    async fn delete(&self, tenant: &TenantId, id: &MailboxId) -> Result<(), StoreError>;
}

/// The OAuth client as the token endpoint sees it.
#[derive(Debug, Clone)]
pub struct OAuthClientConfig {
    pub settings: OAuthSettings,
    pub client_secret: Option<Sensitive>,
    pub redirect_uri: Option<String>,
}

/// A token response.
#[derive(Debug, Clone)]
pub struct TokenSet {
    pub access_token: Sensitive,
    pub expires_at: Option<OffsetDateTime>,
    pub refresh_token: Option<Sensitive>,
    pub id_token: Option<Sensitive>,
}

/// A failed token request, classified.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {detail}", reason.code())]
pub struct TokenError {
    pub reason: StatusReason,
    /// The provider's words (error and description) or the transport failure; never a secret.
    pub detail: String,
}

impl TokenError {
    pub fn permanence(&self) -> Permanence {
        self.reason.permanence()
    }
}

#[async_trait]
pub trait TokenEndpoint: Send + Sync {
    async fn exchange_code(
        &self,
        client: &OAuthClientConfig,
        code: &str,
        pkce_verifier: &Sensitive,
        now: OffsetDateTime,
    ) -> Result<TokenSet, TokenError>;
    async fn refresh(
        &self,
        client: &OAuthClientConfig,
        refresh_token: &Sensitive,
        now: OffsetDateTime,
    ) -> Result<TokenSet, TokenError>;
}

/// How to authenticate to the SMTP server.
#[derive(Debug, Clone)]
pub enum SmtpCredentials {
    Xoauth2 {
        user: String,
        access_token: Sensitive,
    },
    Password {
        user: String,
        password: Sensitive,
    },
}

impl SmtpCredentials {
    pub fn is_oauth(&self) -> bool {
        matches!(self, SmtpCredentials::Xoauth2 { .. })
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {detail}", reason.code())]
pub struct SmtpError {
    pub reason: StatusReason,
    /// The SMTP reply or transport failure, e.g. `535 5.7.139 Authentication unsuccessful, …`.
    pub detail: String,
    /// The SMTP reply code, when the server answered.
    pub code: Option<u16>,
}

impl SmtpError {
    pub fn permanence(&self) -> Permanence {
        match self.code {
            Some(c) if (400..500).contains(&c) => Permanence::Transient,
            Some(_) => Permanence::Permanent,
            None => self.reason.permanence(),
        }
    }
}

#[async_trait]
pub trait MailTransport: Send + Sync {
    /// Connect, secure the connection, authenticate, quit: no mail is sent.
    async fn verify(
        &self,
        smtp: &SmtpSettings,
        credentials: &SmtpCredentials,
    ) -> Result<(), SmtpError>;
    /// Send one message over a pooled, authenticated connection kept for `pool_key`
    /// (at most 3 connections per key: Exchange's per-mailbox limit). Returns the server's
    /// final reply, e.g. `250 2.0.0 OK <id> Queued mail for delivery`.
    async fn send(
        &self,
        pool_key: &str,
        smtp: &SmtpSettings,
        credentials: &SmtpCredentials,
        message: &OutgoingMessage,
    ) -> Result<String, SmtpError>;
}

pub trait Clock: Send + Sync {
    fn now(&self) -> OffsetDateTime;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// Short-lived exclusive leases: one token refresh per mailbox at a time, across processes.
#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// Take `key` for `holder` until `now + ttl` if it is free or its holder's time is up.
    async fn try_acquire(
        &self,
        key: &str,
        holder: &str,
        now: OffsetDateTime,
        ttl: time::Duration,
    ) -> Result<bool, StoreError>;
    /// Give it back, if `holder` still holds it.
    async fn release(&self, key: &str, holder: &str) -> Result<(), StoreError>;
}

/// How a notification left (or did not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Delivered,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveredVia {
    Mailbox,
    DefaultSender,
}

/// The small, final record of one notification (no body, no secret).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    pub notification_id: String,
    pub tenant: TenantId,
    pub status: DeliveryStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mailbox_id: Option<MailboxId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_via: Option<DeliveredVia>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_response: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub accepted_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub completed_at: OffsetDateTime,
}

/// The answer to "may I send notification X now?".
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// Yours: send it, then `complete` or `release`.
    Started,
    /// Already finished earlier: do not send again.
    Done(Box<DeliveryRecord>),
    /// Someone else is sending it right now: try again later.
    InFlight,
}

/// Idempotency of deliveries: one notification id per tenant is sent at most once.
#[async_trait]
pub trait DeliveryLog: Send + Sync {
    /// Claim the notification for `lease` (an expired claim of a crashed sender can be taken over).
    async fn claim(
        &self,
        tenant: &TenantId,
        notification_id: &str,
        now: OffsetDateTime,
        lease: time::Duration,
    ) -> Result<Claim, StoreError>;
    /// Record the final outcome; kept for `keep` (longer than any queue redelivers).
    async fn complete(
        &self,
        record: &DeliveryRecord,
        keep: time::Duration,
    ) -> Result<(), StoreError>;
    /// Give up a claim after a transient failure, so a retry can claim it.
    async fn release(&self, tenant: &TenantId, notification_id: &str) -> Result<(), StoreError>;
}
