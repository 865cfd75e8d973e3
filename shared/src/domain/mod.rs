//! Domain types: parsed once at the edge, impossible to hold in a bad state.
//!
//! Nothing in `domain` knows about AWS, Lambda or HTTP frameworks.

pub mod mailbox;
pub mod notification;
pub mod reason;

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A validation failure for one input field: which field, a machine code, and a sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub code: &'static str,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            code,
            message: message.into(),
        }
    }
}

fn has_line_break(s: &str) -> bool {
    s.contains(['\r', '\n'])
}

/// An RFC 5321/5322 mailbox address (`local@domain`), validated by lettre's parser.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EmailAddress(String);

impl EmailAddress {
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        let s = raw.trim();
        if has_line_break(raw) {
            return Err(FieldError::new(
                field,
                "header_injection",
                "must not contain line breaks",
            ));
        }
        if s.len() > 254 || lettre::Address::from_str(s).is_err() {
            return Err(FieldError::new(
                field,
                "invalid_email",
                format!(
                    "`{}` is not a valid e-mail address (expected name@domain)",
                    truncate(s, 80)
                ),
            ));
        }
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn domain(&self) -> &str {
        self.0.rsplit_once('@').map(|(_, d)| d).unwrap_or_default()
    }
    /// Case-insensitive comparison, as mail systems compare mailbox names in practice.
    pub fn same_mailbox(&self, other: &str) -> bool {
        self.0.eq_ignore_ascii_case(other.trim())
    }
}

impl TryFrom<String> for EmailAddress {
    type Error = FieldError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse("email", &s)
    }
}
impl From<EmailAddress> for String {
    fn from(e: EmailAddress) -> String {
        e.0
    }
}
impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EmailAddress({})", self.0)
    }
}

pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(max).collect();
        out.push('…');
        out
    }
}

macro_rules! string_id {
    ($name:ident) => {
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }
        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
    };
}

/// A mailbox identifier: `mbx_` followed by 32 lowercase hex digits.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MailboxId(String);
string_id!(MailboxId);

impl MailboxId {
    pub fn generate() -> Self {
        Self(format!("mbx_{}", uuid::Uuid::new_v4().simple()))
    }
    pub fn parse(raw: &str) -> Option<Self> {
        let hex = raw.strip_prefix("mbx_")?;
        (hex.len() == 32
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| Self(raw.to_owned()))
    }
}
impl TryFrom<String> for MailboxId {
    type Error = FieldError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s).ok_or_else(|| {
            FieldError::new(
                "mailbox_id",
                "invalid_mailbox_id",
                "not a mailbox id (mbx_…)",
            )
        })
    }
}

/// A tenant of the platform, as named by the authorizer's claim (or the local server's one tenant).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);
string_id!(TenantId);

impl TenantId {
    /// 1–128 characters from `[A-Za-z0-9._@+=-]` (safe in secret names and keys).
    pub fn parse(raw: &str) -> Option<Self> {
        let ok = !raw.is_empty()
            && raw.len() <= 128
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._@+=-".contains(&b));
        ok.then(|| Self(raw.to_owned()))
    }
}
impl TryFrom<String> for TenantId {
    type Error = FieldError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
            .ok_or_else(|| FieldError::new("tenant", "invalid_tenant", "not a valid tenant id"))
    }
}

/// True for `localhost`, 127.0.0.0/8 and ::1.
pub fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

/// An absolute URL that is `https`, or plain `http` only on a loopback host
/// (local development and tests). No credentials, no fragment.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HttpsUrl(url::Url);

impl HttpsUrl {
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        let bad = |msg: String| FieldError::new(field, "invalid_url", msg);
        if has_line_break(raw) {
            return Err(bad("must not contain line breaks".into()));
        }
        let url = url::Url::parse(raw.trim())
            .map_err(|e| bad(format!("is not an absolute URL ({e})")))?;
        let host = url.host_str().unwrap_or_default().to_owned();
        match url.scheme() {
            "https" => {}
            "http" if is_loopback_host(&host) => {}
            "http" => {
                return Err(bad(format!(
                    "must use https (plain http is allowed only for localhost), got `{}`",
                    truncate(raw, 120)
                )));
            }
            other => return Err(bad(format!("must be an https URL, not `{other}:`"))),
        }
        if host.is_empty() {
            return Err(bad("has no host".into()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad("must not contain a user name or password".into()));
        }
        if url.fragment().is_some() {
            return Err(bad("must not contain a #fragment".into()));
        }
        Ok(Self(url))
    }
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
    pub fn url(&self) -> &url::Url {
        &self.0
    }
    pub fn host(&self) -> &str {
        self.0.host_str().unwrap_or_default()
    }
    pub fn path(&self) -> &str {
        self.0.path()
    }
}
impl TryFrom<String> for HttpsUrl {
    type Error = FieldError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse("url", &s)
    }
}
impl From<HttpsUrl> for String {
    fn from(u: HttpsUrl) -> String {
        u.0.into()
    }
}
impl fmt::Display for HttpsUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_str())
    }
}
impl fmt::Debug for HttpsUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HttpsUrl({})", self.0)
    }
}

/// A value that must never be shown: Debug and Display print `[redacted]`.
/// It serializes transparently because the secret store must persist it (encrypted);
/// API view types never contain one.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sensitive(String);

impl Sensitive {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}
impl fmt::Debug for Sensitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}
impl fmt::Display for Sensitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Text that ends up in a mail header: one line, bounded length.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HeaderText(String);
string_id!(HeaderText);

impl HeaderText {
    pub fn parse(field: &str, raw: &str, max: usize) -> Result<Self, FieldError> {
        if has_line_break(raw) {
            return Err(FieldError::new(
                field,
                "header_injection",
                "must not contain line breaks (CR or LF): it ends up in a mail header",
            ));
        }
        if raw.chars().any(|c| c.is_control() && c != '\t') {
            return Err(FieldError::new(
                field,
                "invalid_text",
                "must not contain control characters",
            ));
        }
        if raw.chars().count() > max {
            return Err(FieldError::new(
                field,
                "too_long",
                format!("must be at most {max} characters"),
            ));
        }
        Ok(Self(raw.trim().to_owned()))
    }
}
impl TryFrom<String> for HeaderText {
    type Error = FieldError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse("text", &s, 998)
    }
}

/// A host name or IP literal for an SMTP server.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Hostname(String);
string_id!(Hostname);

impl Hostname {
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        let s = raw.trim();
        let valid = !s.is_empty()
            && s.len() <= 253
            && (s.parse::<IpAddr>().is_ok()
                || s.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && !label.starts_with('-')
                        && !label.ends_with('-')
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                }));
        if !valid {
            return Err(FieldError::new(
                field,
                "invalid_host",
                format!("`{}` is not a valid host name", truncate(s, 80)),
            ));
        }
        Ok(Self(s.to_ascii_lowercase()))
    }
    pub fn is_loopback(&self) -> bool {
        is_loopback_host(&self.0)
    }
}
impl TryFrom<String> for Hostname {
    type Error = FieldError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse("smtp_host", &s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_addresses() {
        assert!(EmailAddress::parse("f", "alerts@contoso.com").is_ok());
        assert_eq!(
            EmailAddress::parse("f", "nope").unwrap_err().code,
            "invalid_email"
        );
        assert_eq!(
            EmailAddress::parse("f", "a@b.com\r\nBcc: x@y.z")
                .unwrap_err()
                .code,
            "header_injection"
        );
        assert!(
            EmailAddress::parse("f", "a@b.com")
                .unwrap()
                .same_mailbox("A@B.COM")
        );
    }

    #[test]
    fn urls_require_https_except_loopback() {
        assert!(
            HttpsUrl::parse("u", "https://login.microsoftonline.com/x/oauth2/v2.0/token").is_ok()
        );
        assert!(HttpsUrl::parse("u", "http://127.0.0.1:8080/token").is_ok());
        assert!(HttpsUrl::parse("u", "http://localhost/token").is_ok());
        assert!(HttpsUrl::parse("u", "http://example.com/token").is_err());
        assert!(HttpsUrl::parse("u", "ftp://example.com/").is_err());
        assert!(HttpsUrl::parse("u", "https://u:p@example.com/").is_err());
        assert!(HttpsUrl::parse("u", "token").is_err());
    }

    #[test]
    fn ids() {
        let id = MailboxId::generate();
        assert_eq!(MailboxId::parse(id.as_str()), Some(id));
        assert!(MailboxId::parse("mbx_../../etc").is_none());
        assert!(TenantId::parse("tenant-demo").is_some());
        assert!(TenantId::parse("a/b").is_none());
        assert!(TenantId::parse("").is_none());
    }

    #[test]
    fn sensitive_is_redacted() {
        let s = Sensitive::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
    }
}
