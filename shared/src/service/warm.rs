//! What a warm process (a reused Lambda container, the local server) keeps between
//! invocations, so a burst of sends neither re-reads the secret nor refreshes per message.
//! SMTP connection pools live in the mail adapter.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use time::OffsetDateTime;

use crate::domain::{MailboxId, Sensitive, TenantId};

pub type MailboxKey = (TenantId, MailboxId);

/// How long a warm process sends with a password it read, before reading the secret again (a
/// password the server refuses is re-read at once, so a changed one is picked up anyway).
pub const PASSWORD_TTL: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
pub struct CachedToken {
    pub token: Sensitive,
    pub expires_at: OffsetDateTime,
}

#[derive(Default)]
pub struct WarmCache {
    tokens: Mutex<HashMap<MailboxKey, CachedToken>>,
    /// Basic-auth passwords, read from the secret store at most every `PASSWORD_TTL`.
    passwords: Mutex<HashMap<MailboxKey, (Sensitive, Instant)>>,
    flights: Mutex<HashMap<MailboxKey, Arc<tokio::sync::Mutex<()>>>>,
}

impl WarmCache {
    pub fn token(&self, key: &MailboxKey) -> Option<CachedToken> {
        self.tokens.lock().ok()?.get(key).cloned()
    }

    pub fn put_token(&self, key: &MailboxKey, token: CachedToken) {
        if let Ok(mut m) = self.tokens.lock() {
            m.insert(key.clone(), token);
        }
    }

    pub fn forget(&self, key: &MailboxKey) {
        if let Ok(mut m) = self.tokens.lock() {
            m.remove(key);
        }
    }

    /// The mailbox's password if it was read from the secret store within `PASSWORD_TTL`.
    pub fn password(&self, key: &MailboxKey) -> Option<Sensitive> {
        let mut m = self.passwords.lock().ok()?;
        match m.get(key) {
            Some((p, at)) if at.elapsed() < PASSWORD_TTL => Some(p.clone()),
            Some(_) => {
                m.remove(key);
                None
            }
            None => None,
        }
    }

    pub fn put_password(&self, key: &MailboxKey, password: Sensitive) {
        if let Ok(mut m) = self.passwords.lock() {
            m.insert(key.clone(), (password, Instant::now()));
        }
    }

    pub fn forget_password(&self, key: &MailboxKey) {
        if let Ok(mut m) = self.passwords.lock() {
            m.remove(key);
        }
    }

    /// One token acquisition per mailbox at a time inside this process.
    pub fn flight(&self, key: &MailboxKey) -> Arc<tokio::sync::Mutex<()>> {
        match self.flights.lock() {
            Ok(mut m) => m.entry(key.clone()).or_default().clone(),
            Err(_) => Arc::default(),
        }
    }
}
