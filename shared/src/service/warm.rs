//! What a warm process (a reused Lambda container, the local server) keeps between
//! invocations, so a burst of sends neither re-reads the secret nor refreshes per message.
//! SMTP connection pools live in the mail adapter.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use time::OffsetDateTime;

use crate::domain::{MailboxId, Sensitive, TenantId};

pub type MailboxKey = (TenantId, MailboxId);

#[derive(Debug, Clone)]
pub struct CachedToken {
    pub token: Sensitive,
    pub expires_at: OffsetDateTime,
}

#[derive(Default)]
pub struct WarmCache {
    tokens: Mutex<HashMap<MailboxKey, CachedToken>>,
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

    /// One token acquisition per mailbox at a time inside this process.
    pub fn flight(&self, key: &MailboxKey) -> Arc<tokio::sync::Mutex<()>> {
        match self.flights.lock() {
            Ok(mut m) => m.entry(key.clone()).or_default().clone(),
            Err(_) => Arc::default(),
        }
    }
}
