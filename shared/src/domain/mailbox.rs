//! The outgoing mailbox: what the admin configured (`MailboxSpec`), what it resolves to
//! with provider presets (`Resolved`), its state (`MailboxState`), and the API view.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::reason::StatusReason;
use super::{
    EmailAddress, FieldError, HeaderText, Hostname, HttpsUrl, MailboxId, Sensitive, TenantId,
    truncate,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthKind {
    Oauth2,
    Basic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    Microsoft,
    Google,
    Custom,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpSecurity {
    Starttls,
    Tls,
    None,
}

impl SmtpSecurity {
    pub fn default_port(self) -> u16 {
        match self {
            SmtpSecurity::Starttls => 587,
            SmtpSecurity::Tls => 465,
            SmtpSecurity::None => 25,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    RequestBody,
    Basic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MailboxStatus {
    /// OAuth 2.0 mailbox waiting for an admin to click Authorize.
    PendingAuthorization,
    /// Basic mailbox waiting for its first verification.
    PendingVerification,
    Verified,
    NotVerified,
}

/// A calendar date `YYYY-MM-DD` (e.g. the client secret's expiry copied from Entra ID).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CalendarDate(time::Date);

const DATE_FORMAT: &[time::format_description::BorrowedFormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day]");

impl CalendarDate {
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        // Accept a full RFC 3339 timestamp too (Entra shows dates; APIs often send timestamps).
        let day = raw.get(..10).unwrap_or(raw);
        time::Date::parse(day, DATE_FORMAT)
            .map(Self)
            .map_err(|_| FieldError::new(field, "invalid_date", "must be a date like 2027-06-30"))
    }
    pub fn date(self) -> time::Date {
        self.0
    }
}
impl TryFrom<String> for CalendarDate {
    type Error = FieldError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse("date", &s)
    }
}
impl From<CalendarDate> for String {
    fn from(d: CalendarDate) -> String {
        d.0.format(DATE_FORMAT).unwrap_or_default()
    }
}

/// What the admin configured, validated. Provider presets are applied by [`MailboxSpec::resolve`],
/// so changing `tenant` or `provider` later re-derives the endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MailboxSpec {
    pub auth: AuthKind,
    pub provider: Provider,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub username: EmailAddress,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_address: Option<EmailAddress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_name: Option<HeaderText>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<EmailAddress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_host: Option<Hostname>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_security: Option<SmtpSecurity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_url: Option<HttpsUrl>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_url: Option<HttpsUrl>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<ClientAuth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_authorize_params: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_expires_at: Option<CalendarDate>,
    #[serde(default)]
    pub default: bool,
    /// Who is told when this mailbox breaks, recovers or its secret nears expiry
    /// (default: the mailbox's reply_to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert_recipients: Option<Vec<EmailAddress>>,
}

/// OAuth 2.0 client settings after presets.
#[derive(Debug, Clone, PartialEq)]
pub struct OAuthSettings {
    pub authorization_url: HttpsUrl,
    pub token_url: HttpsUrl,
    pub client_id: String,
    pub scopes: Vec<String>,
    pub client_auth: ClientAuth,
    pub extra_authorize_params: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SmtpSettings {
    pub host: Hostname,
    pub port: u16,
    pub security: SmtpSecurity,
}

/// Everything needed to authorize and send, with presets applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub smtp: SmtpSettings,
    pub oauth: Option<OAuthSettings>,
    pub from_address: EmailAddress,
}

pub const MICROSOFT_SCOPES: &[&str] = &[
    "https://outlook.office.com/SMTP.Send",
    "offline_access",
    "openid",
    "email",
    "profile",
];
pub const GOOGLE_SCOPES: &[&str] = &["https://mail.google.com/", "openid", "email"];
const MICROSOFT_MULTI_TENANT: &[&str] = &["common", "organizations", "consumers"];
const RESERVED_AUTHORIZE_PARAMS: &[&str] = &[
    "client_id",
    "redirect_uri",
    "response_type",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
];

fn microsoft_url(tenant: &str, endpoint: &str) -> Result<HttpsUrl, FieldError> {
    HttpsUrl::parse(
        "tenant",
        &format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0/{endpoint}"),
    )
}

/// The `{tenant}` path segment of a Microsoft identity-platform URL, if it is one.
fn microsoft_tenant_segment(url: &HttpsUrl) -> Option<String> {
    let host = url.host().to_ascii_lowercase();
    if !(host.starts_with("login.microsoftonline.")
        || host.starts_with("login.partner.microsoftonline.")
        || host == "login.windows.net")
    {
        return None;
    }
    url.path()
        .trim_start_matches('/')
        .split('/')
        .next()
        .map(|s| s.to_ascii_lowercase())
}

fn single_tenant_error(field: &str, tenant_segment: &str) -> FieldError {
    FieldError::new(
        field,
        "multi_tenant_endpoint",
        format!(
            "uses the `/{tenant_segment}` endpoint, but the app registered in Entra ID is single-tenant \
             (\"Accounts in this organizational directory only\"), which gives AADSTS50194. Use the \
             tenant-specific endpoints from Entra ID → App registrations → your app → Overview → \
             Endpoints, e.g. https://login.microsoftonline.com/<your tenant id>/oauth2/v2.0/authorize, \
             or set `tenant` instead of the URLs"
        ),
    )
}

impl MailboxSpec {
    pub fn resolve(&self) -> Result<Resolved, FieldError> {
        let from_address = self
            .from_address
            .clone()
            .unwrap_or_else(|| self.username.clone());
        let (preset_host, preset_security) = match self.provider {
            Provider::Microsoft => (Some("smtp.office365.com"), SmtpSecurity::Starttls),
            Provider::Google => (Some("smtp.gmail.com"), SmtpSecurity::Starttls),
            Provider::Custom => (None, SmtpSecurity::Starttls),
        };
        let host = match (&self.smtp_host, preset_host) {
            (Some(h), _) => h.clone(),
            (None, Some(p)) => Hostname::parse("smtp_host", p)?,
            (None, None) => {
                return Err(FieldError::new(
                    "smtp_host",
                    "required",
                    "is required for provider `custom`",
                ));
            }
        };
        let security = self.smtp_security.unwrap_or(preset_security);
        if security == SmtpSecurity::None && !host.is_loopback() {
            return Err(FieldError::new(
                "smtp_security",
                "insecure_smtp",
                "`none` (no TLS) is allowed only for a loopback SMTP host; credentials would travel in clear text. Use `starttls` (port 587) or `tls` (port 465)",
            ));
        }
        let port = self.smtp_port.unwrap_or_else(|| security.default_port());
        let smtp = SmtpSettings {
            host,
            port,
            security,
        };

        let oauth = match self.auth {
            AuthKind::Basic => None,
            AuthKind::Oauth2 => Some(self.resolve_oauth()?),
        };
        Ok(Resolved {
            smtp,
            oauth,
            from_address,
        })
    }

    fn resolve_oauth(&self) -> Result<OAuthSettings, FieldError> {
        let client_id = self
            .client_id
            .clone()
            .ok_or_else(|| FieldError::new("client_id", "required", "is required for auth `oauth2` (the Application (client) ID of the app registration)"))?;
        let (auth_url, token_url, scopes, mut extra): (
            Option<HttpsUrl>,
            Option<HttpsUrl>,
            Vec<String>,
            BTreeMap<String, String>,
        ) = match self.provider {
            Provider::Microsoft => {
                let derived = match &self.tenant {
                    Some(t) => Some((microsoft_url(t, "authorize")?, microsoft_url(t, "token")?)),
                    None => None,
                };
                let a = self
                    .authorization_url
                    .clone()
                    .or_else(|| derived.as_ref().map(|d| d.0.clone()));
                let t = self.token_url.clone().or_else(|| derived.map(|d| d.1));
                (
                    a,
                    t,
                    MICROSOFT_SCOPES.iter().map(|s| s.to_string()).collect(),
                    BTreeMap::new(),
                )
            }
            Provider::Google => (
                Some(HttpsUrl::parse(
                    "authorization_url",
                    "https://accounts.google.com/o/oauth2/v2/auth",
                )?),
                Some(HttpsUrl::parse(
                    "token_url",
                    "https://oauth2.googleapis.com/token",
                )?),
                GOOGLE_SCOPES.iter().map(|s| s.to_string()).collect(),
                BTreeMap::from([
                    ("access_type".to_owned(), "offline".to_owned()),
                    ("prompt".to_owned(), "consent".to_owned()),
                ]),
            ),
            Provider::Custom => (None, None, Vec::new(), BTreeMap::new()),
        };
        let authorization_url = self.authorization_url.clone().or(auth_url).ok_or_else(|| {
            let hint = if self.provider == Provider::Microsoft {
                "is required: set `tenant` (your tenant ID or domain) or paste the OAuth 2.0 authorization endpoint (v2) from Entra ID → Overview → Endpoints"
            } else {
                "is required for provider `custom`"
            };
            FieldError::new("authorization_url", "required", hint)
        })?;
        let token_url = self.token_url.clone().or(token_url).ok_or_else(|| {
            FieldError::new(
                "token_url",
                "required",
                "is required: set `tenant` or paste the OAuth 2.0 token endpoint (v2)",
            )
        })?;
        if self.provider == Provider::Microsoft {
            let a = microsoft_tenant_segment(&authorization_url);
            let t = microsoft_tenant_segment(&token_url);
            if let Some(seg) = a.as_deref().filter(|s| MICROSOFT_MULTI_TENANT.contains(s)) {
                return Err(single_tenant_error("authorization_url", seg));
            }
            if let Some(seg) = t.as_deref().filter(|s| MICROSOFT_MULTI_TENANT.contains(s)) {
                return Err(single_tenant_error("token_url", seg));
            }
            if let (Some(a), Some(t)) = (&a, &t)
                && a != t
            {
                return Err(FieldError::new(
                    "token_url",
                    "tenant_mismatch",
                    format!(
                        "is for tenant `{t}` but authorization_url is for tenant `{a}`: a code must be redeemed on the tenant it was issued on (AADSTS700005). Use both endpoints of the same tenant"
                    ),
                ));
            }
        }
        let scopes = match &self.scopes {
            Some(s) => s.clone(),
            None if !scopes.is_empty() => scopes,
            None => {
                return Err(FieldError::new(
                    "scopes",
                    "required",
                    "is required for provider `custom` (e.g. [\"openid\", \"email\", \"offline_access\", \"<the SMTP scope>\"])",
                ));
            }
        };
        if self.provider == Provider::Microsoft {
            if scopes.iter().any(|s| {
                s.to_ascii_lowercase()
                    .starts_with("https://graph.microsoft.com")
            }) {
                return Err(FieldError::new(
                    "scopes",
                    "wrong_resource",
                    "contains a Microsoft Graph scope: a Graph token is rejected by SMTP (535 5.7.3). Use https://outlook.office.com/SMTP.Send offline_access openid email profile",
                ));
            }
            if !scopes.iter().any(|s| s == "offline_access") {
                return Err(FieldError::new(
                    "scopes",
                    "offline_access_missing",
                    "must include `offline_access`, or Microsoft returns no refresh token and the mailbox stops working within the hour",
                ));
            }
        }
        if let Some(user) = &self.extra_authorize_params {
            extra.extend(user.clone());
        }
        Ok(OAuthSettings {
            authorization_url,
            token_url,
            client_id,
            scopes,
            client_auth: self.client_auth.unwrap_or(ClientAuth::RequestBody),
            extra_authorize_params: extra,
        })
    }

    /// The fields whose change invalidates an authorization (tokens are discarded and the
    /// status goes back to `pending_authorization`): who signs in, and with which client.
    pub fn authorization_fingerprint(&self) -> Value {
        let r = self.resolve().ok();
        serde_json::json!({
            "auth": self.auth,
            "username": self.username.as_str().to_ascii_lowercase(),
            "oauth": r.as_ref().and_then(|r| r.oauth.as_ref()).map(|o| serde_json::json!({
                "a": o.authorization_url.as_str(), "t": o.token_url.as_str(), "c": o.client_id,
                "s": o.scopes, "ca": o.client_auth,
            })),
        })
    }

    /// Everything a verification depends on: the authorization plus the SMTP server. A result
    /// computed for another fingerprint is not written (a concurrent admin change wins).
    pub fn verification_fingerprint(&self) -> Value {
        let r = self.resolve().ok();
        serde_json::json!({
            "authorization": self.authorization_fingerprint(),
            "smtp": r.as_ref().map(|r| (r.smtp.host.as_str().to_owned(), r.smtp.port, r.smtp.security)),
            "from": r.as_ref().map(|r| r.from_address.as_str().to_owned()),
        })
    }
}

/// Write-only values from a create/patch request. They go to the secret store only.
#[derive(Debug, Default, Clone)]
pub struct SecretInput {
    pub client_secret: Option<Sensitive>,
    pub password: Option<Sensitive>,
}

/// A non-blocking remark on a mailbox (e.g. "the secret expires in 7 days").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Warning {
    pub code: String,
    pub message: String,
}

/// What the service knows about the mailbox beyond its configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MailboxState {
    pub status: MailboxStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<StatusReason>,
    /// The provider's or server's own words, shortened (never a secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_detail: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub status_warnings: Vec<Warning>,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_verified_at: Option<OffsetDateTime>,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub authorized_at: Option<OffsetDateTime>,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_refreshed_at: Option<OffsetDateTime>,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub access_token_expires_at: Option<OffsetDateTime>,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub refresh_token_last_used_at: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default)]
    pub consecutive_failures: u32,
    /// Which secrets are stored (the values live in the secret store only).
    #[serde(default)]
    pub has_client_secret: bool,
    #[serde(default)]
    pub has_password: bool,
    #[serde(default)]
    pub has_refresh_token: bool,
    /// When the refresh job should next look at this mailbox (`None`: nothing to do until a
    /// person acts). Stores index it so a run reads only due mailboxes.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub next_due_at: Option<OffsetDateTime>,
    /// When the scheduled job last tried this mailbox (for backoff).
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_checked_at: Option<OffsetDateTime>,
    /// When `status` last changed (part of alert idempotency keys).
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub status_changed_at: Option<OffsetDateTime>,
    /// Keys of the alerts already sent for this mailbox (bounded; idempotency per change).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts_sent: Vec<String>,
    /// An alert still has to go out (the job comes back for it even if nothing else is due).
    #[serde(default)]
    pub alerts_pending: bool,
}

/// When mailboxes are due for the refresh job.
#[derive(Debug, Clone, Copy)]
pub struct DuePolicy {
    /// Re-verify at least this often.
    pub verify_interval: time::Duration,
    /// Refresh when the access token has less than this left (more than one schedule period).
    pub token_margin: time::Duration,
    /// Use the refresh token at least this often (Microsoft's 90-day inactivity window).
    pub refresh_token_max_idle: time::Duration,
    pub backoff_base: time::Duration,
    pub backoff_cap: time::Duration,
}

impl Default for DuePolicy {
    fn default() -> Self {
        Self {
            verify_interval: time::Duration::hours(24),
            token_margin: time::Duration::minutes(20),
            refresh_token_max_idle: time::Duration::hours(24),
            backoff_base: time::Duration::minutes(5),
            backoff_cap: time::Duration::hours(4),
        }
    }
}

impl DuePolicy {
    /// Exponential backoff after `failures` consecutive transient failures.
    pub fn backoff(&self, failures: u32) -> time::Duration {
        let factor = 1i32 << failures.saturating_sub(1).min(10);
        (self.backoff_base * factor).min(self.backoff_cap)
    }
}

impl MailboxRecord {
    /// Who is alerted about this mailbox: the configured list, else its reply_to.
    pub fn alert_recipients(&self) -> Vec<EmailAddress> {
        match &self.spec.alert_recipients {
            Some(list) => list.clone(),
            None => self.spec.reply_to.iter().cloned().collect(),
        }
    }

    /// The next time the refresh job has something to do for this mailbox.
    pub fn compute_due(&self, policy: &DuePolicy) -> Option<OffsetDateTime> {
        let s = &self.state;
        let oauth = self.spec.auth == AuthKind::Oauth2;
        let alert_retry = s
            .alerts_pending
            .then(|| s.last_checked_at.unwrap_or(self.updated_at) + time::Duration::minutes(10));
        if oauth && !s.has_refresh_token {
            return alert_retry;
        }
        if s.status == MailboxStatus::NotVerified
            && s.status_reason.is_some_and(StatusReason::needs_person)
        {
            // only a person can fix these (re-authorize, new secret or password): the PATCH
            // or authorization that fixes it makes the mailbox due again
            return alert_retry;
        }
        let epoch = self.created_at;
        let mut due = s
            .last_verified_at
            .map(|t| t + policy.verify_interval)
            .unwrap_or(epoch);
        if s.status == MailboxStatus::PendingVerification {
            // settings changed (or a new credential): check soon
            due = due.min(self.updated_at);
        }
        if oauth {
            if let Some(exp) = s.access_token_expires_at {
                due = due.min(exp - policy.token_margin);
            }
            let used = s
                .refresh_token_last_used_at
                .or(s.authorized_at)
                .unwrap_or(epoch);
            due = due.min(used + policy.refresh_token_max_idle);
        }
        if s.consecutive_failures > 0
            && let Some(last) = s.last_checked_at
        {
            due = due.max(last + policy.backoff(s.consecutive_failures));
        }
        Some(alert_retry.map_or(due, |a| a.min(due)))
    }
}

impl MailboxState {
    pub fn pending(auth: AuthKind) -> Self {
        Self {
            status: match auth {
                AuthKind::Oauth2 => MailboxStatus::PendingAuthorization,
                AuthKind::Basic => MailboxStatus::PendingVerification,
            },
            status_reason: None,
            status_detail: None,
            status_warnings: Vec::new(),
            last_verified_at: None,
            authorized_at: None,
            last_refreshed_at: None,
            access_token_expires_at: None,
            refresh_token_last_used_at: None,
            last_error: None,
            consecutive_failures: 0,
            has_client_secret: false,
            has_password: false,
            has_refresh_token: false,
            next_due_at: None,
            last_checked_at: None,
            status_changed_at: None,
            alerts_sent: Vec::new(),
            alerts_pending: false,
        }
    }

    pub fn set_verified(&mut self, now: OffsetDateTime) {
        self.status = MailboxStatus::Verified;
        self.status_reason = None;
        self.status_detail = None;
        self.last_verified_at = Some(now);
        self.last_error = None;
        self.consecutive_failures = 0;
    }

    pub fn set_not_verified(&mut self, reason: StatusReason, detail: Option<String>) {
        self.status = MailboxStatus::NotVerified;
        self.status_reason = Some(reason);
        self.last_error = detail.clone().or_else(|| Some(reason.code().to_owned()));
        self.status_detail = detail.map(|d| truncate(&d, 500));
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
    }

    pub fn set_warning(&mut self, code: &str, message: impl Into<String>) {
        self.status_warnings.retain(|w| w.code != code);
        self.status_warnings.push(Warning {
            code: code.to_owned(),
            message: message.into(),
        });
    }

    pub fn clear_warning(&mut self, code: &str) {
        self.status_warnings.retain(|w| w.code != code);
    }
}

/// The stored mailbox: identity, optimistic-concurrency version, configuration, state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MailboxRecord {
    pub id: MailboxId,
    pub tenant: TenantId,
    /// Incremented by the store on every successful write; writes are conditional on it.
    pub version: u64,
    pub spec: MailboxSpec,
    pub state: MailboxState,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

// ---------------------------------------------------------------------------------------------
// Parsing the API's JSON body
// ---------------------------------------------------------------------------------------------

const WRITABLE: &[&str] = &[
    "auth",
    "provider",
    "tenant",
    "username",
    "from_address",
    "from_name",
    "reply_to",
    "signature",
    "smtp_host",
    "smtp_port",
    "smtp_security",
    "authorization_url",
    "token_url",
    "client_id",
    "client_secret",
    "client_secret_expires_at",
    "scopes",
    "client_auth",
    "extra_authorize_params",
    "password",
    "default",
    "alert_recipients",
];
const READ_ONLY: &[&str] = &[
    "id",
    "redirect_uri",
    "status",
    "status_reason",
    "status_message",
    "status_detail",
    "status_warnings",
    "last_verified_at",
    "authorized_at",
    "created_at",
    "updated_at",
    "client_secret_set",
    "password_set",
    "last_refreshed_at",
    "access_token_expires_at",
    "refresh_token_last_used_at",
    "last_error",
    "consecutive_failures",
];
/// Fields that must not be set on a mailbox with the other `auth` kind.
const OAUTH_ONLY: &[&str] = &[
    "authorization_url",
    "token_url",
    "client_id",
    "client_secret",
    "client_secret_expires_at",
    "scopes",
    "client_auth",
    "extra_authorize_params",
    "tenant",
];

pub const MAX_SIGNATURE: usize = 4000;

fn check_keys(body: &Map<String, Value>) -> Result<(), FieldError> {
    for key in body.keys() {
        if READ_ONLY.contains(&key.as_str()) {
            return Err(FieldError::new(
                key,
                "read_only",
                "is read-only and cannot be set",
            ));
        }
        if !WRITABLE.contains(&key.as_str()) {
            return Err(FieldError::new(
                key,
                "unknown_field",
                format!(
                    "is not a mailbox field (known fields: {})",
                    WRITABLE.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

fn get_str<'a>(body: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, FieldError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(FieldError::new(key, "invalid_type", "must be a string")),
    }
}

fn get_enum<T: serde::de::DeserializeOwned>(
    body: &Map<String, Value>,
    key: &str,
    allowed: &str,
) -> Result<Option<T>, FieldError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone()).map(Some).map_err(|_| {
            FieldError::new(key, "invalid_value", format!("must be one of: {allowed}"))
        }),
    }
}

fn plain_token(field: &str, raw: &str, max: usize) -> Result<String, FieldError> {
    let s = raw.trim();
    if s.is_empty() || s.len() > max || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(FieldError::new(
            field,
            "invalid_value",
            format!("must be 1–{max} characters without spaces or line breaks"),
        ));
    }
    Ok(s.to_owned())
}

fn looks_like_guid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && [8, 4, 4, 4, 12]
            .iter()
            .zip(&parts)
            .all(|(n, p)| p.len() == *n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The result of parsing a create or patch body.
#[derive(Debug)]
pub struct ParsedInput {
    pub spec: MailboxSpec,
    pub secrets: SecretInput,
    pub warnings: Vec<Warning>,
}

/// Parse a create body, or a patch body laid over the current spec (`base`).
/// In a patch, `null` clears an optional field.
pub fn parse_mailbox_input(
    body: &Value,
    base: Option<&MailboxSpec>,
) -> Result<ParsedInput, FieldError> {
    let Value::Object(patch) = body else {
        return Err(FieldError::new(
            "body",
            "invalid_json",
            "must be a JSON object",
        ));
    };
    check_keys(patch)?;
    let mut merged = match base {
        Some(spec) => match serde_json::to_value(spec) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        },
        None => Map::new(),
    };
    for (k, v) in patch {
        merged.insert(k.clone(), v.clone());
    }
    let m = &merged;

    let auth: AuthKind = get_enum(m, "auth", "oauth2, basic")?.unwrap_or(AuthKind::Oauth2);
    let provider: Provider =
        get_enum(m, "provider", "microsoft, google, custom")?.ok_or_else(|| {
            FieldError::new(
                "provider",
                "required",
                "is required: microsoft, google or custom",
            )
        })?;
    if auth == AuthKind::Basic {
        for key in OAUTH_ONLY {
            // fields carried over from an oauth2 base are dropped when switching to basic
            if patch.get(*key).is_some_and(|v| !v.is_null()) {
                return Err(FieldError::new(
                    *key,
                    "not_applicable",
                    "applies only to auth `oauth2`",
                ));
            }
        }
    } else if patch.get("password").is_some_and(|v| !v.is_null()) {
        return Err(FieldError::new(
            "password",
            "not_applicable",
            "applies only to auth `basic`; OAuth 2.0 mailboxes never store a password",
        ));
    }
    let oauth = auth == AuthKind::Oauth2;

    let username = EmailAddress::parse(
        "username",
        get_str(m, "username")?.ok_or_else(|| {
            FieldError::new(
                "username",
                "required",
                "is required: the mailbox that signs in and sends",
            )
        })?,
    )?;
    let opt_email = |k: &str| -> Result<Option<EmailAddress>, FieldError> {
        get_str(m, k)?
            .map(|s| EmailAddress::parse(k, s))
            .transpose()
    };
    let tenant = if oauth && provider == Provider::Microsoft {
        match get_str(m, "tenant")? {
            None => None,
            Some(t) => {
                let t = t.trim().to_ascii_lowercase();
                if MICROSOFT_MULTI_TENANT.contains(&t.as_str()) {
                    return Err(single_tenant_error("tenant", &t));
                }
                if !looks_like_guid(&t) && Hostname::parse("tenant", &t).is_err() {
                    return Err(FieldError::new(
                        "tenant",
                        "invalid_tenant",
                        "must be your Entra tenant ID (a GUID) or its domain, e.g. contoso.onmicrosoft.com",
                    ));
                }
                Some(t)
            }
        }
    } else {
        if patch.get("tenant").is_some_and(|v| !v.is_null()) {
            return Err(FieldError::new(
                "tenant",
                "not_applicable",
                "applies only to provider `microsoft`",
            ));
        }
        None
    };
    let signature = match get_str(m, "signature")? {
        None => None,
        Some(s) if s.chars().count() > MAX_SIGNATURE => {
            return Err(FieldError::new(
                "signature",
                "too_long",
                format!("must be at most {MAX_SIGNATURE} characters"),
            ));
        }
        Some(s)
            if s.chars()
                .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) =>
        {
            return Err(FieldError::new(
                "signature",
                "invalid_text",
                "must not contain control characters",
            ));
        }
        Some(s) => Some(s.replace("\r\n", "\n")),
    };
    let smtp_port = match m.get("smtp_port") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|p| (1..=65535).contains(p))
                .map(|p| p as u16)
                .ok_or_else(|| {
                    FieldError::new(
                        "smtp_port",
                        "invalid_value",
                        "must be a port number 1–65535",
                    )
                })?,
        ),
    };
    let url = |k: &str| -> Result<Option<HttpsUrl>, FieldError> {
        if !oauth {
            return Ok(None);
        }
        get_str(m, k)?.map(|s| HttpsUrl::parse(k, s)).transpose()
    };
    let scopes = match (oauth, m.get("scopes")) {
        (false, _) | (_, None) | (_, Some(Value::Null)) => None,
        (true, Some(Value::Array(items))) => {
            if items.is_empty() || items.len() > 30 {
                return Err(FieldError::new(
                    "scopes",
                    "invalid_value",
                    "must list 1–30 scopes",
                ));
            }
            let mut out = Vec::new();
            for item in items {
                let s = item.as_str().ok_or_else(|| {
                    FieldError::new("scopes", "invalid_type", "must be an array of strings")
                })?;
                out.push(plain_token("scopes", s, 300)?);
            }
            Some(out)
        }
        (true, Some(_)) => {
            return Err(FieldError::new(
                "scopes",
                "invalid_type",
                "must be an array of strings",
            ));
        }
    };
    let extra_authorize_params = match (oauth, m.get("extra_authorize_params")) {
        (false, _) | (_, None) | (_, Some(Value::Null)) => None,
        (true, Some(Value::Object(obj))) => {
            if obj.len() > 20 {
                return Err(FieldError::new(
                    "extra_authorize_params",
                    "invalid_value",
                    "must have at most 20 entries",
                ));
            }
            let mut out = BTreeMap::new();
            for (k, v) in obj {
                if RESERVED_AUTHORIZE_PARAMS.contains(&k.as_str()) {
                    return Err(FieldError::new(
                        "extra_authorize_params",
                        "reserved_param",
                        format!("must not set `{k}`: the service sets it"),
                    ));
                }
                let v = v.as_str().ok_or_else(|| {
                    FieldError::new(
                        "extra_authorize_params",
                        "invalid_type",
                        "values must be strings",
                    )
                })?;
                out.insert(
                    plain_token("extra_authorize_params", k, 100)?,
                    HeaderText::parse("extra_authorize_params", v, 500)?.to_string(),
                );
            }
            Some(out)
        }
        (true, Some(_)) => {
            return Err(FieldError::new(
                "extra_authorize_params",
                "invalid_type",
                "must be an object of string values",
            ));
        }
    };
    let client_id = if oauth {
        get_str(m, "client_id")?
            .map(|s| plain_token("client_id", s, 200))
            .transpose()?
    } else {
        None
    };
    let client_secret_expires_at = if oauth {
        get_str(m, "client_secret_expires_at")?
            .map(|s| CalendarDate::parse("client_secret_expires_at", s))
            .transpose()?
    } else {
        None
    };
    let default = match m.get("default") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(FieldError::new(
                "default",
                "invalid_type",
                "must be true or false",
            ));
        }
    };

    let spec = MailboxSpec {
        auth,
        provider,
        tenant,
        username,
        from_address: opt_email("from_address")?,
        from_name: get_str(m, "from_name")?
            .map(|s| HeaderText::parse("from_name", s, 200))
            .transpose()?,
        reply_to: opt_email("reply_to")?,
        signature,
        smtp_host: get_str(m, "smtp_host")?
            .map(|s| Hostname::parse("smtp_host", s))
            .transpose()?,
        smtp_port,
        smtp_security: get_enum(m, "smtp_security", "starttls, tls, none")?,
        authorization_url: url("authorization_url")?,
        token_url: url("token_url")?,
        client_id,
        scopes,
        client_auth: if oauth {
            get_enum(m, "client_auth", "request_body, basic")?
        } else {
            None
        },
        extra_authorize_params,
        client_secret_expires_at,
        default,
        alert_recipients: match m.get("alert_recipients") {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) if items.len() <= 20 => Some(
                items
                    .iter()
                    .map(|v| {
                        v.as_str()
                            .ok_or_else(|| {
                                FieldError::new(
                                    "alert_recipients",
                                    "invalid_type",
                                    "must be a list of e-mail addresses",
                                )
                            })
                            .and_then(|s| EmailAddress::parse("alert_recipients", s))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            Some(_) => {
                return Err(FieldError::new(
                    "alert_recipients",
                    "invalid_value",
                    "must be a list of at most 20 e-mail addresses",
                ));
            }
        },
    };
    spec.resolve()?;

    // write-only secrets (only from the request itself, never from the base)
    let mut warnings = Vec::new();
    let client_secret = match get_str(patch, "client_secret")? {
        None => None,
        Some(s) => {
            if s.is_empty() || s.len() > 1024 || s.contains(['\r', '\n']) {
                return Err(FieldError::new(
                    "client_secret",
                    "invalid_value",
                    "must be 1–1024 characters on one line",
                ));
            }
            if looks_like_guid(s.trim()) {
                warnings.push(Warning {
                    code: "client_secret_looks_like_secret_id".into(),
                    message: "The client secret looks like a GUID: this is usually the Secret ID, not the secret's Value. In Entra ID → Certificates & secrets, copy the Value column (shown only once after creating the secret).".into(),
                });
            }
            Some(Sensitive::new(s.to_owned()))
        }
    };
    let password = match get_str(patch, "password")? {
        None => None,
        Some(s) if s.is_empty() || s.len() > 1024 || s.contains(['\r', '\n']) => {
            return Err(FieldError::new(
                "password",
                "invalid_value",
                "must be 1–1024 characters on one line",
            ));
        }
        Some(s) => Some(Sensitive::new(s.to_owned())),
    };
    Ok(ParsedInput {
        spec,
        secrets: SecretInput {
            client_secret,
            password,
        },
        warnings,
    })
}

// ---------------------------------------------------------------------------------------------
// API view
// ---------------------------------------------------------------------------------------------

/// The JSON the API returns for a mailbox. Holds no secret by construction.
#[derive(Debug, Clone, Serialize)]
pub struct MailboxView {
    pub id: MailboxId,
    pub auth: AuthKind,
    pub provider: Provider,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub username: EmailAddress,
    pub from_address: EmailAddress,
    pub from_name: Option<HeaderText>,
    pub reply_to: Option<EmailAddress>,
    pub signature: Option<String>,
    pub smtp_host: Option<String>,
    pub smtp_port: Option<u16>,
    pub smtp_security: Option<SmtpSecurity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorization_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect_uri: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret_set: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret_expires_at: Option<CalendarDate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<ClientAuth>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extra_authorize_params: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_set: Option<bool>,
    pub default: bool,
    pub alert_recipients: Vec<EmailAddress>,
    pub status: MailboxStatus,
    pub status_reason: Option<StatusReason>,
    pub status_message: Option<String>,
    pub status_detail: Option<String>,
    pub status_warnings: Vec<Warning>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_verified_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub authorized_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_refreshed_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub access_token_expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub refresh_token_last_used_at: Option<OffsetDateTime>,
    pub last_error: Option<String>,
    pub consecutive_failures: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl MailboxView {
    pub fn new(r: &MailboxRecord, redirect_uri: Option<&str>) -> Self {
        let resolved = r.spec.resolve().ok();
        let oauth = resolved.as_ref().and_then(|x| x.oauth.clone());
        let is_oauth = r.spec.auth == AuthKind::Oauth2;
        let s = &r.state;
        let status_message = match (s.status, s.status_reason) {
            (_, Some(reason)) => Some(reason.message().to_owned()),
            (MailboxStatus::PendingAuthorization, None) => Some(
                "Click Authorize and sign in with the mailbox's account to finish the setup."
                    .to_owned(),
            ),
            (MailboxStatus::PendingVerification, None) => {
                Some("Run Verify to check the SMTP credentials.".to_owned())
            }
            _ => None,
        };
        // warnings are part of what a person should read
        let status_message = if s.status_warnings.is_empty() {
            status_message
        } else {
            let warnings: Vec<&str> = s
                .status_warnings
                .iter()
                .map(|w| w.message.as_str())
                .collect();
            Some(match status_message {
                Some(m) => format!("{m} Warning: {}", warnings.join(" ")),
                None => format!("Warning: {}", warnings.join(" ")),
            })
        };
        Self {
            id: r.id.clone(),
            auth: r.spec.auth,
            provider: r.spec.provider,
            tenant: r.spec.tenant.clone(),
            username: r.spec.username.clone(),
            from_address: r
                .spec
                .from_address
                .clone()
                .unwrap_or_else(|| r.spec.username.clone()),
            from_name: r.spec.from_name.clone(),
            reply_to: r.spec.reply_to.clone(),
            signature: r.spec.signature.clone(),
            smtp_host: resolved.as_ref().map(|x| x.smtp.host.to_string()),
            smtp_port: resolved.as_ref().map(|x| x.smtp.port),
            smtp_security: resolved.as_ref().map(|x| x.smtp.security),
            authorization_url: oauth.as_ref().map(|o| o.authorization_url.to_string()),
            token_url: oauth.as_ref().map(|o| o.token_url.to_string()),
            redirect_uri: if is_oauth {
                redirect_uri.map(str::to_owned)
            } else {
                None
            },
            client_id: oauth.as_ref().map(|o| o.client_id.clone()),
            client_secret_set: is_oauth.then_some(s.has_client_secret),
            client_secret_expires_at: r.spec.client_secret_expires_at,
            scopes: oauth.as_ref().map(|o| o.scopes.clone()),
            client_auth: oauth.as_ref().map(|o| o.client_auth),
            extra_authorize_params: oauth.as_ref().map(|o| o.extra_authorize_params.clone()),
            password_set: (!is_oauth).then_some(s.has_password),
            default: r.spec.default,
            alert_recipients: r.alert_recipients(),
            status: s.status,
            status_reason: s.status_reason,
            status_message,
            status_detail: s.status_detail.clone(),
            status_warnings: s.status_warnings.clone(),
            last_verified_at: s.last_verified_at,
            authorized_at: s.authorized_at,
            last_refreshed_at: s.last_refreshed_at,
            access_token_expires_at: s.access_token_expires_at,
            refresh_token_last_used_at: s.refresh_token_last_used_at,
            last_error: s.last_error.clone(),
            consecutive_failures: s.consecutive_failures,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ms(extra: Value) -> Value {
        let mut base = json!({"provider": "microsoft", "tenant": "contoso.onmicrosoft.com", "username": "alerts@contoso.com", "client_id": "11111111-2222-3333-4444-555555555555"});
        base.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        base
    }

    #[test]
    fn microsoft_preset() {
        let p = parse_mailbox_input(&ms(json!({})), None).unwrap();
        let r = p.spec.resolve().unwrap();
        let o = r.oauth.unwrap();
        assert_eq!(
            o.token_url.as_str(),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        assert_eq!(
            o.scopes.join(" "),
            "https://outlook.office.com/SMTP.Send offline_access openid email profile"
        );
        assert_eq!(r.smtp.host.as_str(), "smtp.office365.com");
        assert_eq!(r.smtp.port, 587);
        assert_eq!(o.client_auth, ClientAuth::RequestBody);
    }

    #[test]
    fn pasted_urls_are_kept() {
        let p = parse_mailbox_input(
            &json!({"provider": "microsoft", "username": "a@b.com", "client_id": "x",
            "authorization_url": "https://login.microsoftonline.com/abc/oauth2/v2.0/authorize",
            "token_url": "https://login.microsoftonline.com/abc/oauth2/v2.0/token"}),
            None,
        )
        .unwrap();
        assert!(
            p.spec
                .resolve()
                .unwrap()
                .oauth
                .unwrap()
                .authorization_url
                .as_str()
                .contains("/abc/")
        );
    }

    #[test]
    fn common_endpoint_is_refused_with_fix() {
        let e = parse_mailbox_input(&ms(json!({"tenant": "common"})), None).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.code),
            ("tenant", "multi_tenant_endpoint")
        );
        let e = parse_mailbox_input(&ms(json!({"authorization_url": "https://login.microsoftonline.com/common/oauth2/v2.0/authorize"})), None).unwrap_err();
        assert_eq!(e.field, "authorization_url");
        assert!(e.message.contains("AADSTS50194"));
    }

    #[test]
    fn validation_names_the_field() {
        let cases = [
            (json!({"reply_to": "nope"}), "reply_to"),
            (json!({"from_name": "A\r\nBcc: x@y.z"}), "from_name"),
            (json!({"color": "red"}), "color"),
            (json!({"status": "verified"}), "status"),
            (
                json!({"token_url": "http://evil.example/token"}),
                "token_url",
            ),
            (
                json!({"smtp_host": "mail.example.com", "smtp_security": "none"}),
                "smtp_security",
            ),
            (json!({"password": "x"}), "password"),
            (
                json!({"scopes": ["https://graph.microsoft.com/.default", "offline_access"]}),
                "scopes",
            ),
        ];
        for (extra, field) in cases {
            let e = parse_mailbox_input(&ms(extra.clone()), None).unwrap_err();
            assert_eq!(e.field, field, "{extra}: {e}");
        }
    }

    #[test]
    fn guid_secret_warns() {
        let p = parse_mailbox_input(
            &ms(json!({"client_secret": "0b7d4c8e-1f2a-4b3c-9d8e-7f6a5b4c3d2e"})),
            None,
        )
        .unwrap();
        assert_eq!(p.warnings[0].code, "client_secret_looks_like_secret_id");
    }

    #[test]
    fn patch_rederives_and_clears() {
        let p = parse_mailbox_input(&ms(json!({"reply_to": "help@contoso.com"})), None).unwrap();
        let q = parse_mailbox_input(
            &json!({"tenant": "fabrikam.com", "reply_to": null}),
            Some(&p.spec),
        )
        .unwrap();
        assert!(q.spec.reply_to.is_none());
        assert!(
            q.spec
                .resolve()
                .unwrap()
                .oauth
                .unwrap()
                .token_url
                .as_str()
                .contains("fabrikam.com")
        );
        assert_ne!(
            p.spec.authorization_fingerprint(),
            q.spec.authorization_fingerprint()
        );
    }
}
