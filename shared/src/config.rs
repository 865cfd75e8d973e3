//! Settings from the environment. Names are the public contract (README lists them all).
//! A missing or invalid setting is one clear line naming the variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::domain::{HttpsUrl, Sensitive};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    Embedded,
    Aws,
}

/// Which program reads the settings (defaults differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Lambda,
    LocalServer,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub store: StoreKind,
    pub data_dir: PathBuf,
    pub table: Option<String>,
    pub secret_prefix: String,
    /// Base URL (no trailing slash); the redirect URI is `<base>/oauth/callback`.
    pub public_url: Option<String>,
    pub listen: SocketAddr,
    pub admin_token: Option<Sensitive>,
    pub extra_ca: Option<Vec<u8>>,
    pub tenant_claim: String,
    pub token_timeout: std::time::Duration,
    pub smtp_timeout: std::time::Duration,
    /// One attempt of a DynamoDB / Secrets Manager call (OUTGOING_MAIL_AWS_TIMEOUT_SECS);
    /// a whole call, retries included, may take three times as long.
    pub aws_timeout: std::time::Duration,
    /// The platform's default sender, inline (OUTGOING_MAIL_DEFAULT_SENDER, JSON).
    pub default_sender: Option<crate::service::send::DefaultSender>,
    /// … or the id/ARN of a Secrets Manager secret holding that JSON.
    pub default_sender_secret: Option<String>,
    /// How often the refresh job re-verifies a working mailbox.
    pub verify_interval: time::Duration,
    /// Optional HTTPS URL that receives alerts as JSON.
    pub alert_webhook: Option<String>,
    /// Local server: seconds between refresh-job runs.
    pub refresh_every: std::time::Duration,
    /// Most mailboxes refreshed at the same time by one run.
    pub refresh_concurrency: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration error: {var} {message}")]
pub struct ConfigError {
    pub var: &'static str,
    pub message: String,
}

fn err(var: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        message: message.into(),
    }
}

impl Settings {
    pub fn from_env(profile: Profile) -> Result<Self, ConfigError> {
        Self::from_lookup(profile, |k| std::env::var(k).ok())
    }

    pub fn from_lookup(
        profile: Profile,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let get = |k: &str| {
            get(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };

        let store = match get("OUTGOING_MAIL_STORE").as_deref() {
            None => match profile {
                Profile::Lambda => StoreKind::Aws,
                Profile::LocalServer => StoreKind::Embedded,
            },
            Some("embedded") => StoreKind::Embedded,
            Some("aws") => StoreKind::Aws,
            Some(other) => {
                return Err(err(
                    "OUTGOING_MAIL_STORE",
                    format!("must be `embedded` or `aws`, got `{other}`"),
                ));
            }
        };
        let table = get("OUTGOING_MAIL_TABLE");
        if let Some(t) = &table
            && (t.len() < 3
                || t.len() > 255
                || !t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)))
        {
            return Err(err(
                "OUTGOING_MAIL_TABLE",
                format!("`{t}` is not a valid DynamoDB table name (3–255 of A-Z a-z 0-9 _ . -)"),
            ));
        }
        if store == StoreKind::Aws && table.is_none() {
            return Err(err(
                "OUTGOING_MAIL_TABLE",
                "is required when OUTGOING_MAIL_STORE=aws (the DynamoDB table name)",
            ));
        }
        let secret_prefix =
            get("OUTGOING_MAIL_SECRET_PREFIX").unwrap_or_else(|| "outgoing-mail/".to_owned());
        if secret_prefix.len() > 300
            || !secret_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/_+=.@-".contains(&b))
        {
            return Err(err(
                "OUTGOING_MAIL_SECRET_PREFIX",
                "may contain only A-Z a-z 0-9 / _ + = . @ - (Secrets Manager name characters)",
            ));
        }
        let listen_raw = get("OUTGOING_MAIL_LISTEN").unwrap_or_else(|| "127.0.0.1:8080".to_owned());
        let listen: SocketAddr = listen_raw.parse().map_err(|_| {
            err(
                "OUTGOING_MAIL_LISTEN",
                format!("must be an address like 127.0.0.1:8080, got `{listen_raw}`"),
            )
        })?;
        let public_url = match get("OUTGOING_MAIL_PUBLIC_URL") {
            Some(raw) => {
                let u = HttpsUrl::parse("OUTGOING_MAIL_PUBLIC_URL", &raw)
                    .map_err(|e| err("OUTGOING_MAIL_PUBLIC_URL", e.message))?;
                if u.url().query().is_some() {
                    return Err(err(
                        "OUTGOING_MAIL_PUBLIC_URL",
                        "must not contain a query string",
                    ));
                }
                Some(u.as_str().trim_end_matches('/').to_owned())
            }
            None if profile == Profile::LocalServer => Some(format!("http://{listen}")),
            None => None,
        };
        let admin_token = match get("OUTGOING_MAIL_ADMIN_TOKEN") {
            Some(t) if t.len() < 16 => {
                return Err(err(
                    "OUTGOING_MAIL_ADMIN_TOKEN",
                    "must be at least 16 characters",
                ));
            }
            Some(t) => Some(Sensitive::new(t)),
            None => None,
        };
        let extra_ca = match get("OUTGOING_MAIL_EXTRA_CA") {
            Some(path) => {
                let pem = std::fs::read(&path).map_err(|e| {
                    err(
                        "OUTGOING_MAIL_EXTRA_CA",
                        format!("cannot read `{path}`: {e}"),
                    )
                })?;
                if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                    return Err(err(
                        "OUTGOING_MAIL_EXTRA_CA",
                        format!("`{path}` holds no PEM certificate"),
                    ));
                }
                Some(pem)
            }
            None => None,
        };
        let secs = |var: &'static str, default: u64| -> Result<std::time::Duration, ConfigError> {
            match get(var) {
                None => Ok(std::time::Duration::from_secs(default)),
                Some(v) => v
                    .parse::<u64>()
                    .ok()
                    .filter(|n| (1..=600).contains(n))
                    .map(std::time::Duration::from_secs)
                    .ok_or_else(|| {
                        err(var, format!("must be a number of seconds 1–600, got `{v}`"))
                    }),
            }
        };
        let default_sender = match get("OUTGOING_MAIL_DEFAULT_SENDER") {
            Some(json) => Some(
                crate::service::send::DefaultSender::parse(&json)
                    .map_err(|e| err("OUTGOING_MAIL_DEFAULT_SENDER", e))?,
            ),
            None => None,
        };
        let verify_hours = match get("OUTGOING_MAIL_VERIFY_INTERVAL_HOURS") {
            None => 24,
            Some(v) => v
                .parse::<i64>()
                .ok()
                .filter(|h| (1..=720).contains(h))
                .ok_or_else(|| {
                    err(
                        "OUTGOING_MAIL_VERIFY_INTERVAL_HOURS",
                        format!("must be a number of hours 1–720, got `{v}`"),
                    )
                })?,
        };
        let alert_webhook = match get("OUTGOING_MAIL_ALERT_WEBHOOK_URL") {
            None => None,
            Some(raw) => Some(
                HttpsUrl::parse("OUTGOING_MAIL_ALERT_WEBHOOK_URL", &raw)
                    .map_err(|e| err("OUTGOING_MAIL_ALERT_WEBHOOK_URL", e.message))?
                    .to_string(),
            ),
        };
        let refresh_concurrency = match get("OUTGOING_MAIL_REFRESH_CONCURRENCY") {
            None => 64,
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=1000).contains(n))
                .ok_or_else(|| {
                    err(
                        "OUTGOING_MAIL_REFRESH_CONCURRENCY",
                        format!("must be 1–1000, got `{v}`"),
                    )
                })?,
        };
        Ok(Self {
            verify_interval: time::Duration::hours(verify_hours),
            alert_webhook,
            refresh_every: secs_long("OUTGOING_MAIL_REFRESH_EVERY_SECS", 900, &get)?,
            refresh_concurrency,
            default_sender,
            default_sender_secret: get("OUTGOING_MAIL_DEFAULT_SENDER_SECRET"),
            store,
            data_dir: PathBuf::from(
                get("OUTGOING_MAIL_DATA_DIR").unwrap_or_else(|| "./.outgoing-mail".to_owned()),
            ),
            table,
            secret_prefix,
            public_url,
            listen,
            admin_token,
            extra_ca,
            tenant_claim: get("OUTGOING_MAIL_TENANT_CLAIM")
                .unwrap_or_else(|| "tenant_id".to_owned()),
            token_timeout: secs("OUTGOING_MAIL_TOKEN_TIMEOUT_SECS", 10)?,
            smtp_timeout: secs("OUTGOING_MAIL_SMTP_TIMEOUT_SECS", 15)?,
            aws_timeout: secs("OUTGOING_MAIL_AWS_TIMEOUT_SECS", 10)?,
        })
    }
}

fn secs_long(
    var: &'static str,
    default: u64,
    get: &impl Fn(&str) -> Option<String>,
) -> Result<std::time::Duration, ConfigError> {
    match get(var) {
        None => Ok(std::time::Duration::from_secs(default)),
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|n| (10..=86_400).contains(n))
            .map(std::time::Duration::from_secs)
            .ok_or_else(|| {
                err(
                    var,
                    format!("must be a number of seconds 10–86400, got `{v}`"),
                )
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn with(pairs: &[(&str, &str)], profile: Profile) -> Result<Settings, ConfigError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(profile, |k| m.get(k).cloned())
    }

    #[test]
    fn defaults() {
        let s = with(&[], Profile::LocalServer).unwrap();
        assert_eq!(s.store, StoreKind::Embedded);
        assert_eq!(s.public_url.as_deref(), Some("http://127.0.0.1:8080"));
        assert_eq!(s.aws_timeout, std::time::Duration::from_secs(10));
        assert_eq!(
            with(&[], Profile::Lambda).unwrap_err().var,
            "OUTGOING_MAIL_TABLE"
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (k, v) in [
            ("OUTGOING_MAIL_STORE", "postgres"),
            ("OUTGOING_MAIL_LISTEN", "eight"),
            ("OUTGOING_MAIL_PUBLIC_URL", "http://example.com"),
            ("OUTGOING_MAIL_ADMIN_TOKEN", "short"),
            ("OUTGOING_MAIL_EXTRA_CA", "/nonexistent.pem"),
            ("OUTGOING_MAIL_SECRET_PREFIX", "bad prefix"),
            ("OUTGOING_MAIL_AWS_TIMEOUT_SECS", "0"),
            ("OUTGOING_MAIL_AWS_TIMEOUT_SECS", "ten"),
        ] {
            let e = with(&[(k, v)], Profile::LocalServer).unwrap_err();
            assert_eq!(e.var, k);
            assert!(
                e.to_string()
                    .starts_with("configuration error: OUTGOING_MAIL_")
            );
        }
    }
}
