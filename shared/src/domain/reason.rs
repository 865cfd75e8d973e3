//! Why a mailbox is not verified, as a machine code and a sentence a person can act on.
//!
//! Classification follows ../shared/reference/protocol-facts.md: branch on the OAuth
//! `error` field and the SMTP reply code; the AADSTS number and the enhanced status code
//! only choose the message.

use serde::{Deserialize, Serialize};

/// Whether trying again later can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Permanence {
    /// Network trouble, timeouts, 5xx, throttling: keep everything, retry later.
    Transient,
    /// A person has to change something; retrying as is will fail the same way.
    Permanent,
}

macro_rules! reasons {
    ($( $variant:ident => $code:literal, $message:literal; )*) => {
        /// The machine-readable reason for a mailbox's status (`status_reason`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum StatusReason { $( $variant, )* }

        impl StatusReason {
            pub const ALL: &'static [StatusReason] = &[ $( StatusReason::$variant, )* ];
            pub fn code(self) -> &'static str {
                match self { $( StatusReason::$variant => $code, )* }
            }
            /// What a person should do about it.
            pub fn message(self) -> &'static str {
                match self { $( StatusReason::$variant => $message, )* }
            }
        }
    };
}

reasons! {
    NotAuthorized => "not_authorized",
        "This mailbox has not been authorized yet. Click Authorize and sign in with the mailbox's account.";
    ConsentDeclined => "consent_declined",
        "The sign-in was cancelled or the requested permissions were declined. Click Authorize again and accept the permissions (SMTP.Send, offline access).";
    ProviderError => "provider_error",
        "The identity provider refused the authorization. Check the details below, fix the app registration if needed, and click Authorize again.";
    WrongAccount => "wrong_account",
        "You signed in with a different account than the mailbox's username. Click Authorize again and sign in as the configured mailbox (or change the username).";
    NoRefreshToken => "no_refresh_token",
        "The provider returned no refresh token, so the mailbox would stop working within the hour. Add the `offline_access` scope (Microsoft) or `access_type=offline` with `prompt=consent` (Google), then click Authorize again.";
    ClientSecretExpired => "client_secret_expired",
        "The client secret has expired. In Entra ID open App registrations → your app → Certificates & secrets, create a new client secret, paste its Value here, and click Authorize again.";
    InvalidClientSecret => "invalid_client_secret",
        "The client secret was rejected. Paste the secret's Value (not its Secret ID) from Entra ID → Certificates & secrets, then click Authorize again.";
    ClientSecretMissing => "client_secret_missing",
        "No client secret is stored for this mailbox. Enter the client secret's Value from the app registration, then click Authorize.";
    RedirectUriMismatch => "redirect_uri_mismatch",
        "The redirect URI is not registered for the app. Add this mailbox's redirect_uri exactly as shown to the app registration (Entra ID → Authentication → Web → Redirect URIs), then click Authorize again.";
    WrongTenantEndpoint => "wrong_tenant_endpoint",
        "The app is single-tenant but the /common endpoint was used. Use the tenant-specific endpoints (Entra ID → Overview → Endpoints) and click Authorize again.";
    PublicClient => "public_client",
        "The app is registered as a public client. Register the redirect URI under the \"Web\" platform in Entra ID → Authentication, then click Authorize again.";
    AppNotFound => "app_not_found",
        "The identity provider does not know this application or tenant. Check the client ID and the tenant in the authorization and token URLs.";
    ConsentRequired => "consent_required",
        "Consent for this app is missing or was revoked. Click Authorize and accept the requested permissions.";
    AdminConsentRequired => "admin_consent_required",
        "Your organization requires an administrator to approve this app. Ask a tenant administrator to grant admin consent for SMTP.Send, then click Authorize.";
    AuthorizationCodeInvalid => "authorization_code_invalid",
        "The sign-in could not be completed (the code was already used, expired, or came from another tenant). Click Authorize again.";
    RefreshTokenExpired => "refresh_token_expired",
        "The mailbox's authorization expired or was revoked. Click Authorize and sign in again.";
    GrantRevoked => "grant_revoked",
        "The mailbox's authorization was revoked (for example after a password reset or a session revocation). Click Authorize and sign in again.";
    ReauthenticationRequired => "reauthentication_required",
        "The organization's policy requires signing in again (multi-factor authentication or sign-in frequency). Click Authorize and sign in again.";
    BlockedByPolicy => "blocked_by_policy",
        "A Conditional Access or security policy blocked the sign-in. Ask a tenant administrator to allow this app for the mailbox.";
    AccountDisabled => "account_disabled",
        "The mailbox's account is disabled or its password has expired. Ask a tenant administrator to fix the account, then click Authorize again.";
    InvalidGrant => "invalid_grant",
        "The identity provider rejected the stored authorization. Click Authorize and sign in again.";
    InvalidClient => "invalid_client",
        "The identity provider rejected the client credentials. Check the client ID and client secret, then click Authorize again.";
    InvalidScope => "invalid_scope",
        "The identity provider rejected the requested scopes. For Microsoft use `https://outlook.office.com/SMTP.Send offline_access openid email profile`.";
    TokenEndpointUnavailable => "token_endpoint_unavailable",
        "The identity provider could not be reached or answered with a server error. The stored authorization was kept; the schedule retries automatically, or click Verify again later.";
    Throttled => "throttled",
        "The provider is throttling requests. It will be retried automatically later.";
    SmtpAuthDisabled => "smtp_auth_disabled",
        "SMTP AUTH is disabled for this mailbox or tenant. A Microsoft 365 administrator must enable \"Authenticated SMTP\" for the mailbox (Set-CASMailbox -SmtpClientAuthenticationDisabled $false); re-authorizing does not help.";
    SecurityPolicy => "security_policy",
        "The tenant's security defaults or Conditional Access block SMTP AUTH for this mailbox. A tenant administrator must allow it; re-authorizing does not help.";
    TokenRejected => "token_rejected",
        "The mail server rejected the access token (wrong account, missing SMTP.Send permission, or a token for another resource). Check the scopes and that you sign in as the mailbox, then click Authorize again.";
    CredentialsRejected => "credentials_rejected",
        "The mail server rejected the username or password. Enter the correct password and verify again.";
    PasswordMissing => "password_missing",
        "No password is stored for this basic-authentication mailbox. Enter the password and verify again.";
    TlsRequired => "tls_required",
        "The mail server does not offer STARTTLS, so credentials cannot be sent safely. Check the SMTP host, port and security setting (Microsoft 365: smtp.office365.com, 587, starttls).";
    TlsFailed => "tls_failed",
        "The TLS connection to the mail server failed: the certificate is not trusted or names another host, or the security setting does not match the port (starttls for 587, tls for 465). Check the SMTP host, port and security setting.";
    ConnectionFailed => "connection_failed",
        "The mail server could not be reached. Check the SMTP host and port; it will be retried automatically.";
    SendAsDenied => "send_as_denied",
        "The mailbox may not send as the From address. Send from the mailbox's own address, or grant it Send As rights on the From address.";
    SmtpMechanismUnsupported => "smtp_mechanism_unsupported",
        "The mail server does not offer the needed authentication mechanism (XOAUTH2 for OAuth 2.0, PLAIN/LOGIN for basic). Check the SMTP host and port.";
    SmtpError => "smtp_error",
        "The mail server refused the connection or the authentication. Check the details below.";
}

impl StatusReason {
    /// Only a person can fix it (re-authorize, enter a new secret or password): the job does
    /// not retry these on its own.
    pub fn needs_person(self) -> bool {
        matches!(
            self,
            StatusReason::RefreshTokenExpired
                | StatusReason::GrantRevoked
                | StatusReason::InvalidGrant
                | StatusReason::NoRefreshToken
                | StatusReason::WrongAccount
                | StatusReason::NotAuthorized
                | StatusReason::ClientSecretExpired
                | StatusReason::InvalidClientSecret
                | StatusReason::PasswordMissing
                | StatusReason::CredentialsRejected
                | StatusReason::ConsentDeclined
                | StatusReason::ConsentRequired
        )
    }

    /// Is a retry later likely to help without a person changing anything?
    pub fn permanence(self) -> Permanence {
        match self {
            StatusReason::TokenEndpointUnavailable
            | StatusReason::Throttled
            | StatusReason::ConnectionFailed => Permanence::Transient,
            _ => Permanence::Permanent,
        }
    }
}

/// The first `AADSTS<digits>` in a Microsoft error description.
pub fn aadsts_code(description: &str) -> Option<u32> {
    let start = description.find("AADSTS")? + "AADSTS".len();
    let digits: String = description[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// Classify a token-endpoint error response (`error`, `error_description`).
pub fn classify_token_error(error: &str, description: &str) -> StatusReason {
    if let Some(code) = aadsts_code(description) {
        let reason = match code {
            70008 | 700082 => Some(StatusReason::RefreshTokenExpired),
            50173 => Some(StatusReason::GrantRevoked),
            70043 | 50076 | 50078 | 50079 | 50072 => Some(StatusReason::ReauthenticationRequired),
            53003 | 530032 => Some(StatusReason::BlockedByPolicy),
            65001 => Some(StatusReason::ConsentRequired),
            65004 => Some(StatusReason::ConsentDeclined),
            90094 | 90095 => Some(StatusReason::AdminConsentRequired),
            7000222 => Some(StatusReason::ClientSecretExpired),
            7000215 => Some(StatusReason::InvalidClientSecret),
            700016 | 700011 | 90002 => Some(StatusReason::AppNotFound),
            50011 => Some(StatusReason::RedirectUriMismatch),
            50194 => Some(StatusReason::WrongTenantEndpoint),
            700025 => Some(StatusReason::PublicClient),
            54005 | 501481 | 700005 => Some(StatusReason::AuthorizationCodeInvalid),
            50020 | 50034 | 500208 => Some(StatusReason::WrongAccount),
            50057 | 50055 | 50144 => Some(StatusReason::AccountDisabled),
            90055 | 50196 => Some(StatusReason::Throttled),
            _ => None,
        };
        if let Some(r) = reason {
            return r;
        }
    }
    match error {
        "invalid_grant" => StatusReason::InvalidGrant,
        "invalid_client" | "unauthorized_client" => StatusReason::InvalidClient,
        "invalid_scope" => StatusReason::InvalidScope,
        "access_denied" => StatusReason::ConsentDeclined,
        "consent_required" | "interaction_required" | "login_required" => {
            StatusReason::ConsentRequired
        }
        "temporarily_unavailable" | "server_error" => StatusReason::TokenEndpointUnavailable,
        "slow_down" => StatusReason::Throttled,
        _ => StatusReason::ProviderError,
    }
}

/// Classify a negative SMTP reply (`code` like 535, `text` the server's words).
pub fn classify_smtp_reply(code: u16, text: &str, oauth: bool) -> StatusReason {
    let t = text.to_ascii_lowercase();
    if t.contains("5.7.139") {
        if t.contains("security defaults") || t.contains("did not meet the criteria") {
            return StatusReason::SecurityPolicy;
        }
        return StatusReason::SmtpAuthDisabled;
    }
    if t.contains("smtpclientauthentication is disabled") {
        return StatusReason::SmtpAuthDisabled;
    }
    if t.contains("5.2.252") || t.contains("sendasdenied") || t.contains("5.7.60") {
        return StatusReason::SendAsDenied;
    }
    if t.contains("starttls is required") || t.contains("must issue a starttls") {
        return StatusReason::TlsRequired;
    }
    if code == 432 || t.contains("4.3.2") || (400..500).contains(&code) {
        return StatusReason::Throttled;
    }
    if code == 535 || code == 534 || code == 530 {
        return if oauth {
            StatusReason::TokenRejected
        } else {
            StatusReason::CredentialsRejected
        };
    }
    StatusReason::SmtpError
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_messages_actionable() {
        let mut seen = std::collections::HashSet::new();
        for r in StatusReason::ALL {
            assert!(seen.insert(r.code()), "duplicate code {}", r.code());
            assert!(r.message().len() > 30);
            // serde name and code agree
            assert_eq!(serde_json::to_value(r).unwrap(), r.code());
        }
    }

    #[test]
    fn aadsts() {
        let d = "AADSTS7000222: The provided client secret keys for app 'x' are expired.";
        assert_eq!(aadsts_code(d), Some(7000222));
        assert_eq!(
            classify_token_error("invalid_client", d),
            StatusReason::ClientSecretExpired
        );
        assert_eq!(
            classify_token_error("invalid_grant", "AADSTS70008: expired"),
            StatusReason::RefreshTokenExpired
        );
        assert_eq!(
            classify_token_error("invalid_grant", "whatever"),
            StatusReason::InvalidGrant
        );
        assert_eq!(
            classify_token_error("temporarily_unavailable", ""),
            StatusReason::TokenEndpointUnavailable
        );
    }

    #[test]
    fn smtp() {
        assert_eq!(
            classify_smtp_reply(
                535,
                "5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.",
                true
            ),
            StatusReason::SmtpAuthDisabled
        );
        assert_eq!(
            classify_smtp_reply(
                535,
                "5.7.139 Authentication unsuccessful, user is locked by your organization's security defaults policy.",
                true
            ),
            StatusReason::SecurityPolicy
        );
        assert_eq!(
            classify_smtp_reply(535, "5.7.3 Authentication unsuccessful", true),
            StatusReason::TokenRejected
        );
        assert_eq!(
            classify_smtp_reply(535, "5.7.8 bad", false),
            StatusReason::CredentialsRejected
        );
        assert_eq!(
            classify_smtp_reply(
                432,
                "4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded",
                true
            ),
            StatusReason::Throttled
        );
        assert_eq!(
            classify_smtp_reply(554, "5.2.252 SendAsDenied", true),
            StatusReason::SendAsDenied
        );
    }
}
