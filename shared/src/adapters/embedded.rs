//! Embedded backend for running on one machine: SQLite files in the data directory.
//!
//! - `outgoing-mail.sqlite3`: mailbox records and authorization states.
//! - `secrets.sqlite3`: one row per mailbox, the secret JSON sealed with ChaCha20-Poly1305
//!   (key in `secret.key`, created on first start with mode 0600; the tenant and mailbox id are
//!   the associated data, so a row cannot be moved to another mailbox).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rusqlite::{Connection, OptionalExtension, params};

use crate::domain::mailbox::MailboxRecord;
use crate::domain::{MailboxId, TenantId};
use crate::ports::{
    AuthState, AuthStateStore, Claim, DeliveryLog, DeliveryRecord, LeaseStore, MailboxSecret,
    MailboxStore, SecretStore, StoreError,
};
use time::OffsetDateTime;

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open database {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("secret key file {path}: {message}")]
    Key { path: PathBuf, message: String },
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn open(path: &Path, schema: &str) -> Result<Connection, EmbeddedError> {
    let conn = Connection::open(path).map_err(|source| EmbeddedError::Open {
        path: path.to_owned(),
        source,
    })?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .and_then(|_| conn.pragma_update(None, "journal_mode", "WAL"))
        .and_then(|_| conn.execute_batch(schema))
        .map_err(|source| EmbeddedError::Open {
            path: path.to_owned(),
            source,
        })?;
    Ok(conn)
}

async fn blocking<T: Send + 'static>(
    conn: &Arc<Mutex<Connection>>,
    f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let conn = conn.clone();
    tokio::task::spawn_blocking(move || {
        let mut guard = conn
            .lock()
            .map_err(|_| StoreError::Unavailable("database lock poisoned".into()))?;
        f(&mut guard)
    })
    .await
    .map_err(unavailable)?
}

/// Mailbox records and authorization states in one SQLite file.
#[derive(Clone)]
pub struct EmbeddedStore {
    conn: Arc<Mutex<Connection>>,
}

const STORE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS mailboxes (
    tenant TEXT NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    data TEXT NOT NULL,
    due_at INTEGER,
    PRIMARY KEY (tenant, id)
);
CREATE TABLE IF NOT EXISTS auth_states (
    state TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    key TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    until_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    tenant TEXT NOT NULL,
    id TEXT NOT NULL,
    status TEXT NOT NULL,
    lease_until_ms INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    data TEXT,
    PRIMARY KEY (tenant, id)
);
";

impl EmbeddedStore {
    pub fn open(data_dir: &Path) -> Result<Self, EmbeddedError> {
        ensure_dir(data_dir)?;
        let path = data_dir.join("outgoing-mail.sqlite3");
        let conn = open(&path, STORE_SCHEMA)?;
        // databases created before the due index existed gain the column (error = already there)
        let _ = conn.execute("ALTER TABLE mailboxes ADD COLUMN due_at INTEGER", []);
        conn.execute_batch("CREATE INDEX IF NOT EXISTS mailboxes_due ON mailboxes (due_at) WHERE due_at IS NOT NULL;")
            .map_err(|source| EmbeddedError::Open { path, source })?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }
}

fn ensure_dir(dir: &Path) -> Result<(), EmbeddedError> {
    std::fs::create_dir_all(dir).map_err(|source| EmbeddedError::DataDir {
        path: dir.to_owned(),
        source,
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    Ok(())
}

fn due(r: &MailboxRecord) -> Option<i64> {
    r.state.next_due_at.map(|t| t.unix_timestamp())
}

fn decode(data: &str) -> Result<MailboxRecord, StoreError> {
    serde_json::from_str(data).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn encode<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

#[async_trait]
impl MailboxStore for EmbeddedStore {
    async fn insert(&self, record: &MailboxRecord) -> Result<MailboxRecord, StoreError> {
        let mut r = record.clone();
        r.version = 1;
        blocking(&self.conn, move |c| {
            let n = c
                .execute(
                    "INSERT OR IGNORE INTO mailboxes (tenant, id, version, created_at, data, due_at) VALUES (?1, ?2, 1, ?3, ?4, ?5)",
                    params![r.tenant.as_str(), r.id.as_str(), r.created_at.unix_timestamp_nanos().to_string(), encode(&r)?, due(&r)],
                )
                .map_err(unavailable)?;
            if n == 0 { Err(StoreError::Conflict) } else { Ok(r) }
        })
        .await
    }

    async fn get(
        &self,
        tenant: &TenantId,
        id: &MailboxId,
    ) -> Result<Option<MailboxRecord>, StoreError> {
        let (t, i) = (tenant.clone(), id.clone());
        blocking(&self.conn, move |c| {
            c.query_row(
                "SELECT data FROM mailboxes WHERE tenant = ?1 AND id = ?2",
                params![t.as_str(), i.as_str()],
                |row| row.get::<_, String>(0),
            )
            .optional()
            .map_err(unavailable)?
            .map(|d| decode(&d))
            .transpose()
        })
        .await
    }

    async fn list(&self, tenant: &TenantId) -> Result<Vec<MailboxRecord>, StoreError> {
        let t = tenant.clone();
        blocking(&self.conn, move |c| {
            let mut stmt = c
                .prepare("SELECT data FROM mailboxes WHERE tenant = ?1 ORDER BY created_at, id")
                .map_err(unavailable)?;
            let rows = stmt
                .query_map(params![t.as_str()], |row| row.get::<_, String>(0))
                .map_err(unavailable)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(decode(&row.map_err(unavailable)?)?);
            }
            Ok(out)
        })
        .await
    }

    async fn update(&self, record: &MailboxRecord) -> Result<MailboxRecord, StoreError> {
        let mut r = record.clone();
        blocking(&self.conn, move |c| {
            let expected = r.version;
            r.version = expected + 1;
            let n = c
                .execute(
                    "UPDATE mailboxes SET version = ?1, data = ?2, due_at = ?6 WHERE tenant = ?3 AND id = ?4 AND version = ?5",
                    params![r.version as i64, encode(&r)?, r.tenant.as_str(), r.id.as_str(), expected as i64, due(&r)],
                )
                .map_err(unavailable)?;
            if n == 1 {
                return Ok(r);
            }
            let exists: bool = c
                .query_row("SELECT 1 FROM mailboxes WHERE tenant = ?1 AND id = ?2", params![r.tenant.as_str(), r.id.as_str()], |_| Ok(true))
                .optional()
                .map_err(unavailable)?
                .unwrap_or(false);
            Err(if exists { StoreError::Conflict } else { StoreError::NotFound })
        })
        .await
    }

    async fn delete(&self, tenant: &TenantId, id: &MailboxId) -> Result<bool, StoreError> {
        let (t, i) = (tenant.clone(), id.clone());
        blocking(&self.conn, move |c| {
            c.execute(
                "DELETE FROM mailboxes WHERE tenant = ?1 AND id = ?2",
                params![t.as_str(), i.as_str()],
            )
            .map(|n| n > 0)
            .map_err(unavailable)
        })
        .await
    }

    async fn due(
        &self,
        now: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<MailboxRecord>, StoreError> {
        blocking(&self.conn, move |c| {
            let mut stmt = c
                .prepare("SELECT data FROM mailboxes WHERE due_at IS NOT NULL AND due_at <= ?1 ORDER BY due_at LIMIT ?2")
                .map_err(unavailable)?;
            let rows = stmt
                .query_map(params![now.unix_timestamp(), limit as i64], |row| row.get::<_, String>(0))
                .map_err(unavailable)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(decode(&row.map_err(unavailable)?)?);
            }
            Ok(out)
        })
        .await
    }
}
#[async_trait]
impl AuthStateStore for EmbeddedStore {
    async fn put_state(&self, state: &AuthState) -> Result<(), StoreError> {
        let s = state.clone();
        blocking(&self.conn, move |c| {
            let n = c
                .execute(
                    "INSERT OR IGNORE INTO auth_states (state, expires_at, data) VALUES (?1, ?2, ?3)",
                    params![s.state.expose(), s.expires_at.unix_timestamp(), encode(&s)?],
                )
                .map_err(unavailable)?;
            // housekeeping: expired states are useless
            c.execute("DELETE FROM auth_states WHERE expires_at < ?1", params![s.created_at.unix_timestamp() - 86_400])
                .map_err(unavailable)?;
            if n == 0 { Err(StoreError::Conflict) } else { Ok(()) }
        })
        .await
    }

    async fn take_state(&self, state: &str) -> Result<Option<AuthState>, StoreError> {
        let key = state.to_owned();
        blocking(&self.conn, move |c| {
            // DELETE … RETURNING is atomic: two callbacks with the same state cannot both get it.
            let data: Option<String> = c
                .query_row(
                    "DELETE FROM auth_states WHERE state = ?1 RETURNING data",
                    params![key],
                    |row| row.get(0),
                )
                .optional()
                .map_err(unavailable)?;
            data.map(|d| serde_json::from_str(&d).map_err(|e| StoreError::Corrupt(e.to_string())))
                .transpose()
        })
        .await
    }
}

/// Mailbox secrets sealed with ChaCha20-Poly1305 in their own SQLite file.
#[derive(Clone)]
pub struct EncryptedSecretStore {
    conn: Arc<Mutex<Connection>>,
    cipher: Arc<ChaCha20Poly1305>,
}

const SECRET_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS secrets (
    tenant TEXT NOT NULL,
    id TEXT NOT NULL,
    nonce BLOB NOT NULL,
    sealed BLOB NOT NULL,
    PRIMARY KEY (tenant, id)
);
";

impl EncryptedSecretStore {
    pub fn open(data_dir: &Path) -> Result<Self, EmbeddedError> {
        ensure_dir(data_dir)?;
        let key = load_or_create_key(&data_dir.join("secret.key"))?;
        let conn = open(&data_dir.join("secrets.sqlite3"), SECRET_SCHEMA)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            cipher: Arc::new(ChaCha20Poly1305::new(Key::from_slice(&key))),
        })
    }
}

fn load_or_create_key(path: &Path) -> Result<[u8; 32], EmbeddedError> {
    let err = |message: String| EmbeddedError::Key {
        path: path.to_owned(),
        message,
    };
    match std::fs::read(path) {
        Ok(bytes) => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(path)
                    .map_err(|e| err(e.to_string()))?
                    .permissions()
                    .mode();
                if mode & 0o077 != 0 {
                    return Err(err(format!(
                        "is readable by other users (mode {:o}); run chmod 600 on it",
                        mode & 0o777
                    )));
                }
            }
            bytes.try_into().map_err(|_| err("must hold exactly 32 bytes; it is damaged (secrets sealed with it cannot be read without it)".into()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            getrandom::fill(&mut key).map_err(|e| err(e.to_string()))?;
            use std::io::Write;
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut f = opts.open(path).map_err(|e| err(e.to_string()))?;
            f.write_all(&key)
                .and_then(|_| f.sync_all())
                .map_err(|e| err(e.to_string()))?;
            Ok(key)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

fn aad(tenant: &TenantId, id: &MailboxId) -> Vec<u8> {
    format!("outgoing-mail/v1/{tenant}/{id}").into_bytes()
}

#[async_trait]
impl SecretStore for EncryptedSecretStore {
    async fn get(
        &self,
        tenant: &TenantId,
        id: &MailboxId,
    ) -> Result<Option<MailboxSecret>, StoreError> {
        let (t, i, cipher) = (tenant.clone(), id.clone(), self.cipher.clone());
        blocking(&self.conn, move |c| {
            let row: Option<(Vec<u8>, Vec<u8>)> = c
                .query_row(
                    "SELECT nonce, sealed FROM secrets WHERE tenant = ?1 AND id = ?2",
                    params![t.as_str(), i.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(unavailable)?;
            let Some((nonce, sealed)) = row else {
                return Ok(None);
            };
            if nonce.len() != 12 {
                return Err(StoreError::Corrupt("bad nonce".into()));
            }
            let plain = cipher
                .decrypt(
                    Nonce::from_slice(&nonce),
                    Payload {
                        msg: &sealed,
                        aad: &aad(&t, &i),
                    },
                )
                .map_err(|_| {
                    StoreError::Corrupt("secret cannot be decrypted with this key file".into())
                })?;
            serde_json::from_slice(&plain)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(e.to_string()))
        })
        .await
    }

    async fn put(
        &self,
        tenant: &TenantId,
        id: &MailboxId,
        secret: &MailboxSecret,
    ) -> Result<(), StoreError> {
        let (t, i, cipher) = (tenant.clone(), id.clone(), self.cipher.clone());
        let plain = serde_json::to_vec(secret).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        blocking(&self.conn, move |c| {
            let mut nonce = [0u8; 12];
            getrandom::fill(&mut nonce).map_err(unavailable)?;
            let sealed = cipher
                .encrypt(Nonce::from_slice(&nonce), Payload { msg: &plain, aad: &aad(&t, &i) })
                .map_err(|_| StoreError::Unavailable("encryption failed".into()))?;
            c.execute(
                "INSERT INTO secrets (tenant, id, nonce, sealed) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (tenant, id) DO UPDATE SET nonce = excluded.nonce, sealed = excluded.sealed",
                params![t.as_str(), i.as_str(), nonce.to_vec(), sealed],
            )
            .map(|_| ())
            .map_err(unavailable)
        })
        .await
    }

    async fn delete(&self, tenant: &TenantId, id: &MailboxId) -> Result<(), StoreError> {
        let (t, i) = (tenant.clone(), id.clone());
        blocking(&self.conn, move |c| {
            c.execute(
                "DELETE FROM secrets WHERE tenant = ?1 AND id = ?2",
                params![t.as_str(), i.as_str()],
            )
            .map(|_| ())
            .map_err(unavailable)
        })
        .await
    }
}

fn millis(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

#[async_trait]
impl LeaseStore for EmbeddedStore {
    async fn try_acquire(
        &self,
        key: &str,
        holder: &str,
        now: OffsetDateTime,
        ttl: time::Duration,
    ) -> Result<bool, StoreError> {
        let (key, holder) = (key.to_owned(), holder.to_owned());
        blocking(&self.conn, move |c| {
            let n = c
                .execute(
                    "INSERT INTO leases (key, holder, until_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT (key) DO UPDATE SET holder = excluded.holder, until_ms = excluded.until_ms
                     WHERE leases.until_ms < ?4",
                    params![key, holder, millis(now + ttl), millis(now)],
                )
                .map_err(unavailable)?;
            Ok(n == 1)
        })
        .await
    }

    async fn release(&self, key: &str, holder: &str) -> Result<(), StoreError> {
        let (key, holder) = (key.to_owned(), holder.to_owned());
        blocking(&self.conn, move |c| {
            c.execute(
                "DELETE FROM leases WHERE key = ?1 AND holder = ?2",
                params![key, holder],
            )
            .map(|_| ())
            .map_err(unavailable)
        })
        .await
    }
}

#[async_trait]
impl DeliveryLog for EmbeddedStore {
    async fn claim(
        &self,
        tenant: &TenantId,
        notification_id: &str,
        now: OffsetDateTime,
        lease: time::Duration,
    ) -> Result<Claim, StoreError> {
        let (t, id) = (tenant.clone(), notification_id.to_owned());
        blocking(&self.conn, move |c| {
            let tx = c.transaction().map_err(unavailable)?;
            let n = tx
                .execute(
                    "INSERT INTO deliveries (tenant, id, status, lease_until_ms, expires_at, data) VALUES (?1, ?2, 'in_flight', ?3, ?4, NULL)
                     ON CONFLICT (tenant, id) DO UPDATE SET status = 'in_flight', lease_until_ms = excluded.lease_until_ms,
                        expires_at = excluded.expires_at, data = NULL
                     WHERE (deliveries.status = 'in_flight' AND deliveries.lease_until_ms < ?5) OR deliveries.expires_at < ?6",
                    params![t.as_str(), id, millis(now + lease), (now + lease).unix_timestamp(), millis(now), now.unix_timestamp()],
                )
                .map_err(unavailable)?;
            let claim = if n == 1 {
                Claim::Started
            } else {
                let (status, data): (String, Option<String>) = tx
                    .query_row("SELECT status, data FROM deliveries WHERE tenant = ?1 AND id = ?2", params![t.as_str(), id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .map_err(unavailable)?;
                match (status.as_str(), data) {
                    ("done", Some(d)) => Claim::Done(Box::new(serde_json::from_str(&d).map_err(|e| StoreError::Corrupt(e.to_string()))?)),
                    _ => Claim::InFlight,
                }
            };
            tx.commit().map_err(unavailable)?;
            Ok(claim)
        })
        .await
    }

    async fn complete(
        &self,
        record: &DeliveryRecord,
        keep: time::Duration,
    ) -> Result<(), StoreError> {
        let r = record.clone();
        blocking(&self.conn, move |c| {
            c.execute(
                "INSERT INTO deliveries (tenant, id, status, lease_until_ms, expires_at, data) VALUES (?1, ?2, 'done', 0, ?3, ?4)
                 ON CONFLICT (tenant, id) DO UPDATE SET status = 'done', lease_until_ms = 0, expires_at = excluded.expires_at, data = excluded.data",
                params![r.tenant.as_str(), r.notification_id, (r.completed_at + keep).unix_timestamp(), encode(&r)?],
            )
            .map(|_| ())
            .map_err(unavailable)
        })
        .await
    }

    async fn release(&self, tenant: &TenantId, notification_id: &str) -> Result<(), StoreError> {
        let (t, id) = (tenant.clone(), notification_id.to_owned());
        blocking(&self.conn, move |c| {
            c.execute(
                "DELETE FROM deliveries WHERE tenant = ?1 AND id = ?2 AND status = 'in_flight'",
                params![t.as_str(), id],
            )
            .map(|_| ())
            .map_err(unavailable)
        })
        .await
    }
}
