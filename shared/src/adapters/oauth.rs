//! OAuth 2.0 adapter on the `oauth2` crate: authorization URLs (PKCE S256) and the token
//! endpoint (code exchange, refresh), over reqwest with rustls and redirects disabled.

use std::time::Duration;

use async_trait::async_trait;
use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
    BasicTokenType,
};
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet,
    EndpointSet, ExtraTokenFields, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken,
    RequestTokenError, Scope, StandardRevocableToken, StandardTokenResponse, TokenResponse,
    TokenUrl,
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::domain::Sensitive;
use crate::domain::mailbox::{ClientAuth, OAuthSettings};
use crate::domain::reason::{StatusReason, classify_token_error};
use crate::ports::{OAuthClientConfig, TokenEndpoint, TokenError, TokenSet};

/// The `id_token` an OpenID Connect provider returns beside the access token.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct IdTokenFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
}
impl ExtraTokenFields for IdTokenFields {}

type TokenClient = oauth2::Client<
    BasicErrorResponse,
    StandardTokenResponse<IdTokenFields, BasicTokenType>,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// A started authorization: the URL to send the admin to, and what must be kept server-side.
pub struct AuthorizationRequest {
    pub url: String,
    pub state: Sensitive,
    pub pkce_verifier: Sensitive,
}

fn config_error(what: &str, e: impl std::fmt::Display) -> TokenError {
    TokenError {
        reason: StatusReason::ProviderError,
        detail: format!("invalid {what}: {e}"),
    }
}

/// Build the authorization URL: `client_id`, `redirect_uri`, `response_type=code`, `scope`,
/// a fresh 256-bit `state`, PKCE S256 `code_challenge`, `login_hint`, and the extra parameters.
pub fn authorization_request(
    settings: &OAuthSettings,
    redirect_uri: &str,
    login_hint: &str,
) -> Result<AuthorizationRequest, TokenError> {
    let client = oauth2::basic::BasicClient::new(ClientId::new(settings.client_id.clone()))
        .set_auth_uri(
            AuthUrl::new(settings.authorization_url.to_string())
                .map_err(|e| config_error("authorization_url", e))?,
        )
        .set_redirect_uri(
            RedirectUrl::new(redirect_uri.to_owned())
                .map_err(|e| config_error("redirect_uri", e))?,
        );
    // 32 random bytes → 43-character verifier, the RFC 7636 minimum length and 256 bits.
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let mut req = client
        .authorize_url(|| CsrfToken::new_random_len(32))
        .add_scopes(settings.scopes.iter().cloned().map(Scope::new))
        .set_pkce_challenge(challenge);
    // an admin-supplied login_hint replaces the default one (a parameter must not appear twice)
    if !settings.extra_authorize_params.contains_key("login_hint") {
        req = req.add_extra_param("login_hint", login_hint);
    }
    for (k, v) in &settings.extra_authorize_params {
        req = req.add_extra_param(k.as_str(), v.as_str());
    }
    let (url, state) = req.url();
    Ok(AuthorizationRequest {
        url: url.to_string(),
        state: Sensitive::new(state.secret().clone()),
        pkce_verifier: Sensitive::new(verifier.secret().clone()),
    })
}

#[derive(Debug, thiserror::Error)]
enum HttpFailure {
    #[error("{0}")]
    Transport(String),
    #[error("HTTP {0} from the token endpoint")]
    Status(u16),
}

/// Token endpoint client over reqwest (rustls, no redirects, timeouts).
#[derive(Clone)]
pub struct OAuthHttp {
    http: reqwest::Client,
}

impl OAuthHttp {
    /// `extra_ca`: PEM bundle of additional trusted roots (OUTGOING_MAIL_EXTRA_CA).
    pub fn new(extra_ca: Option<&[u8]>, timeout: Duration) -> Result<Self, String> {
        let mut b = reqwest::Client::builder()
            // never follow redirects from a token endpoint (SSRF, credential forwarding)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5).min(timeout))
            .timeout(timeout)
            .user_agent(concat!("outgoing-mail/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = extra_ca {
            for cert in reqwest::Certificate::from_pem_bundle(pem).map_err(|e| e.to_string())? {
                b = b.add_root_certificate(cert);
            }
        }
        Ok(Self {
            http: b.build().map_err(|e| e.to_string())?,
        })
    }

    /// The underlying HTTP client (also used for alert webhooks).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    fn client(&self, c: &OAuthClientConfig) -> Result<TokenClient, TokenError> {
        let mut client = oauth2::Client::new(ClientId::new(c.settings.client_id.clone()))
            .set_token_uri(
                TokenUrl::new(c.settings.token_url.to_string())
                    .map_err(|e| config_error("token_url", e))?,
            )
            .set_auth_type(match c.settings.client_auth {
                ClientAuth::RequestBody => AuthType::RequestBody,
                ClientAuth::Basic => AuthType::BasicAuth,
            });
        if let Some(secret) = &c.client_secret {
            client = client.set_client_secret(ClientSecret::new(secret.expose().to_owned()));
        }
        if let Some(uri) = &c.redirect_uri {
            client = client.set_redirect_uri(
                RedirectUrl::new(uri.clone()).map_err(|e| config_error("redirect_uri", e))?,
            );
        }
        Ok(client)
    }

    async fn send(
        &self,
        request: oauth2::HttpRequest,
    ) -> Result<oauth2::HttpResponse, HttpFailure> {
        let req: reqwest::Request = request
            .try_into()
            .map_err(|e: reqwest::Error| HttpFailure::Transport(e.to_string()))?;
        let resp = self.http.execute(req).await.map_err(|e| {
            let kind = if e.is_timeout() {
                "timed out"
            } else if e.is_connect() {
                "connection failed"
            } else {
                "request failed"
            };
            HttpFailure::Transport(format!("token endpoint {kind}: {}", without_url(&e)))
        })?;
        let status = resp.status();
        if status.is_server_error() || status.as_u16() == 429 || status.is_redirection() {
            return Err(HttpFailure::Status(status.as_u16()));
        }
        let mut builder = http::Response::builder().status(status);
        for (k, v) in resp.headers() {
            builder = builder.header(k, v);
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| HttpFailure::Transport(without_url(&e)))?;
        builder
            .body(body.to_vec())
            .map_err(|e| HttpFailure::Transport(e.to_string()))
    }
}

/// reqwest errors print the URL; ours carry no secrets in URLs, but keep messages short.
fn without_url(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg = format!("{msg}: {s}");
        src = s.source();
    }
    msg
}

fn to_token_set(
    resp: StandardTokenResponse<IdTokenFields, BasicTokenType>,
    now: OffsetDateTime,
) -> TokenSet {
    TokenSet {
        access_token: Sensitive::new(resp.access_token().secret().clone()),
        expires_at: resp.expires_in().map(|d| now + d),
        refresh_token: resp
            .refresh_token()
            .map(|r| Sensitive::new(r.secret().clone())),
        id_token: resp.extra_fields().id_token.clone().map(Sensitive::new),
    }
}

fn classify(e: RequestTokenError<HttpFailure, BasicErrorResponse>) -> TokenError {
    match e {
        RequestTokenError::ServerResponse(err) => {
            let code = err.error().as_ref().to_owned();
            let description = err.error_description().cloned().unwrap_or_default();
            TokenError {
                reason: classify_token_error(&code, &description),
                detail: crate::domain::truncate(&format!("{code}: {description}"), 600),
            }
        }
        RequestTokenError::Request(HttpFailure::Status(429)) => TokenError {
            reason: StatusReason::Throttled,
            detail: "HTTP 429 from the token endpoint".into(),
        },
        RequestTokenError::Request(HttpFailure::Status(s)) if (300..400).contains(&s) => {
            TokenError {
                reason: StatusReason::ProviderError,
                detail: format!(
                    "the token endpoint answered with a redirect (HTTP {s}); check token_url"
                ),
            }
        }
        RequestTokenError::Request(f) => TokenError {
            reason: StatusReason::TokenEndpointUnavailable,
            detail: f.to_string(),
        },
        RequestTokenError::Parse(_, body) => TokenError {
            reason: StatusReason::ProviderError,
            detail: format!(
                "the token endpoint's answer is not a valid OAuth 2.0 response ({} bytes); check token_url",
                body.len()
            ),
        },
        RequestTokenError::Other(s) => TokenError {
            reason: StatusReason::ProviderError,
            detail: s,
        },
    }
}

#[async_trait]
impl TokenEndpoint for OAuthHttp {
    async fn exchange_code(
        &self,
        client: &OAuthClientConfig,
        code: &str,
        pkce_verifier: &Sensitive,
        now: OffsetDateTime,
    ) -> Result<TokenSet, TokenError> {
        let c = self.client(client)?;
        let this = self.clone();
        let call = move |req| {
            let this = this.clone();
            async move { this.send(req).await }
        };
        c.exchange_code(AuthorizationCode::new(code.to_owned()))
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.expose().to_owned()))
            .request_async(&call)
            .await
            .map(|r| to_token_set(r, now))
            .map_err(classify)
    }

    async fn refresh(
        &self,
        client: &OAuthClientConfig,
        refresh_token: &Sensitive,
        now: OffsetDateTime,
    ) -> Result<TokenSet, TokenError> {
        let c = self.client(client)?;
        let this = self.clone();
        let call = move |req| {
            let this = this.clone();
            async move { this.send(req).await }
        };
        let token = RefreshToken::new(refresh_token.expose().to_owned());
        // On refresh Microsoft issues the token for the first scope's resource: send the scopes.
        c.exchange_refresh_token(&token)
            .add_scopes(client.settings.scopes.iter().cloned().map(Scope::new))
            .request_async(&call)
            .await
            .map(|r| to_token_set(r, now))
            .map_err(classify)
    }
}
