//! Wiring: settings → adapters → [`App`], the bundle every handler works with.

use std::sync::Arc;

use crate::adapters::oauth::OAuthHttp;
use crate::adapters::smtp::LettreTransport;
use crate::config::{Settings, StoreKind};
use crate::domain::{Sensitive, TenantId};
use crate::ports::{
    AuthStateStore, Clock, DeliveryLog, LeaseStore, MailTransport, MailboxStore, SecretStore,
    SystemClock, TokenEndpoint,
};
use crate::service::send::{DefaultSenderSource, EnvDefaultSender};
use crate::service::warm::WarmCache;

/// How a management request names its tenant.
#[derive(Debug, Clone)]
pub enum Tenancy {
    /// Local server: one tenant, `Authorization: Bearer <admin token>`.
    AdminToken { token: Sensitive, tenant: TenantId },
    /// AWS: the API Gateway JWT authorizer's claim with this name.
    JwtClaim { claim: String },
}

/// The ports, wired. Cheap to clone (all `Arc`).
#[derive(Clone)]
pub struct App {
    pub mailboxes: Arc<dyn MailboxStore>,
    pub states: Arc<dyn AuthStateStore>,
    pub secrets: Arc<dyn SecretStore>,
    pub leases: Arc<dyn LeaseStore>,
    pub deliveries: Arc<dyn DeliveryLog>,
    pub tokens: Arc<dyn TokenEndpoint>,
    pub mail: Arc<dyn MailTransport>,
    pub clock: Arc<dyn Clock>,
    /// Base URL for the redirect URI; `None` in Lambda means "derive from the request".
    pub public_url: Option<String>,
    pub tenancy: Tenancy,
    /// The platform's own sender, for mailboxes that cannot send.
    pub default_sender: Arc<dyn DefaultSenderSource>,
    /// What a warm process keeps between invocations: tokens, SMTP connections.
    pub warm: Arc<WarmCache>,
    /// When mailboxes are due for the refresh job.
    pub due_policy: crate::domain::mailbox::DuePolicy,
    /// Where alerts about broken mailboxes go besides e-mail (JSON POST), if anywhere.
    pub alert_webhook: Option<String>,
    /// Plain HTTPS client (webhooks): rustls, no redirects, the extra CA.
    pub http: reqwest::Client,
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Backend(String),
}

/// The storage adapters chosen by `OUTGOING_MAIL_STORE`.
pub struct Stores {
    pub mailboxes: Arc<dyn MailboxStore>,
    pub states: Arc<dyn AuthStateStore>,
    pub secrets: Arc<dyn SecretStore>,
    pub leases: Arc<dyn LeaseStore>,
    pub deliveries: Arc<dyn DeliveryLog>,
}

pub async fn open_stores(settings: &Settings) -> Result<Stores, StartupError> {
    match settings.store {
        #[cfg(feature = "embedded")]
        StoreKind::Embedded => {
            use crate::adapters::embedded::{EmbeddedStore, EncryptedSecretStore};
            let store = Arc::new(
                EmbeddedStore::open(&settings.data_dir)
                    .map_err(|e| StartupError::Backend(e.to_string()))?,
            );
            let secrets = Arc::new(
                EncryptedSecretStore::open(&settings.data_dir)
                    .map_err(|e| StartupError::Backend(e.to_string()))?,
            );
            Ok(Stores {
                mailboxes: store.clone(),
                states: store.clone(),
                leases: store.clone(),
                deliveries: store,
                secrets,
            })
        }
        #[cfg(not(feature = "embedded"))]
        StoreKind::Embedded => Err(StartupError::Backend(
            "OUTGOING_MAIL_STORE=embedded is not built into this binary (use aws)".into(),
        )),
        #[cfg(feature = "aws")]
        StoreKind::Aws => {
            use crate::adapters::aws::{DynamoStore, SecretsManagerStore, load_sdk_config};
            let sdk = load_sdk_config(settings.aws_timeout).await;
            let table = settings.table.clone().unwrap_or_default();
            let store = Arc::new(DynamoStore::new(&sdk, table));
            let secrets = Arc::new(SecretsManagerStore::new(
                &sdk,
                settings.secret_prefix.clone(),
            ));
            Ok(Stores {
                mailboxes: store.clone(),
                states: store.clone(),
                leases: store.clone(),
                deliveries: store,
                secrets,
            })
        }
        #[cfg(not(feature = "aws"))]
        StoreKind::Aws => Err(StartupError::Backend(
            "OUTGOING_MAIL_STORE=aws is not built into this binary".into(),
        )),
    }
}

impl App {
    /// Wire the real adapters for `settings`.
    pub async fn from_settings(
        settings: &Settings,
        tenancy: Tenancy,
    ) -> Result<Self, StartupError> {
        let stores = open_stores(settings).await?;
        Self::with_stores(settings, tenancy, stores)
    }

    pub fn with_stores(
        settings: &Settings,
        tenancy: Tenancy,
        stores: Stores,
    ) -> Result<Self, StartupError> {
        let ca = settings.extra_ca.as_deref();
        let tokens = OAuthHttp::new(ca, settings.token_timeout)
            .map_err(|e| StartupError::Backend(format!("OUTGOING_MAIL_EXTRA_CA: {e}")))?;
        let mail = LettreTransport::new(ca, settings.smtp_timeout)
            .map_err(|e| StartupError::Backend(format!("OUTGOING_MAIL_EXTRA_CA: {e}")))?;
        let default_sender: Arc<dyn DefaultSenderSource> = match &settings.default_sender {
            Some(s) => Arc::new(EnvDefaultSender(Some(s.clone()))),
            None => default_sender_from_secret(settings),
        };
        Ok(Self {
            mailboxes: stores.mailboxes,
            states: stores.states,
            secrets: stores.secrets,
            leases: stores.leases,
            deliveries: stores.deliveries,
            tokens: Arc::new(tokens.clone()),
            mail: Arc::new(mail),
            clock: Arc::new(SystemClock),
            public_url: settings.public_url.clone(),
            tenancy,
            default_sender,
            warm: Arc::default(),
            due_policy: crate::domain::mailbox::DuePolicy {
                verify_interval: settings.verify_interval,
                ..Default::default()
            },
            alert_webhook: settings.alert_webhook.clone(),
            http: tokens.http().clone(),
        })
    }

    /// The redirect URI for a given base URL.
    pub fn redirect_uri(base: &str) -> String {
        format!("{}/oauth/callback", base.trim_end_matches('/'))
    }
}

#[cfg(feature = "aws")]
fn default_sender_from_secret(settings: &Settings) -> Arc<dyn DefaultSenderSource> {
    match &settings.default_sender_secret {
        Some(id) => Arc::new(crate::adapters::aws::SecretDefaultSender::new(
            id.clone(),
            settings.aws_timeout,
        )),
        None => Arc::new(EnvDefaultSender(None)),
    }
}

#[cfg(not(feature = "aws"))]
fn default_sender_from_secret(_settings: &Settings) -> Arc<dyn DefaultSenderSource> {
    Arc::new(EnvDefaultSender(None))
}
