//! The HTTP API, one axum router for the Lambda functions and the local server.
//!
//! Each Lambda function serves only the routes it owns ([`ROUTES`]); the local server serves
//! them all. `template.yaml` declares the same table (a test keeps them in agreement).

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, on};
use serde_json::{Value, json};

use crate::app::{App, Tenancy};
use crate::domain::mailbox::{MailboxRecord, MailboxView};
use crate::domain::{MailboxId, TenantId};
use crate::service::authorize::{CallbackOutcome, CallbackParams};
use crate::service::{ServiceError, authorize, mailboxes, verify};

/// Largest accepted request body.
pub const MAX_BODY: usize = 64 * 1024;
/// Largest `POST /notifications` body (text and HTML may each be 512 KiB).
pub const MAX_NOTIFICATION_BODY: usize = 1200 * 1024;

/// The deployable units that serve HTTP routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    Mailboxes,
    AuthorizeStart,
    OauthCallback,
    SendNotification,
    /// Only the local server (health check).
    LocalServer,
}

impl Function {
    /// The binary / SAM function name.
    pub fn name(self) -> &'static str {
        match self {
            Function::Mailboxes => "mailboxes",
            Function::AuthorizeStart => "authorize-start",
            Function::OauthCallback => "oauth-callback",
            Function::SendNotification => "send-notification",
            Function::LocalServer => "local-server",
        }
    }
}

/// One HTTP route: method, path (API Gateway syntax), owning function, public or not.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub function: Function,
    /// No authorizer (the provider's redirect lands here).
    pub public: bool,
}

pub const ROUTES: &[Route] = &[
    Route {
        method: "POST",
        path: "/mailboxes",
        function: Function::Mailboxes,
        public: false,
    },
    Route {
        method: "GET",
        path: "/mailboxes",
        function: Function::Mailboxes,
        public: false,
    },
    Route {
        method: "GET",
        path: "/mailboxes/{id}",
        function: Function::Mailboxes,
        public: false,
    },
    Route {
        method: "PATCH",
        path: "/mailboxes/{id}",
        function: Function::Mailboxes,
        public: false,
    },
    Route {
        method: "DELETE",
        path: "/mailboxes/{id}",
        function: Function::Mailboxes,
        public: false,
    },
    Route {
        method: "POST",
        path: "/mailboxes/{id}/verify",
        function: Function::Mailboxes,
        public: false,
    },
    Route {
        method: "POST",
        path: "/mailboxes/{id}/authorize",
        function: Function::AuthorizeStart,
        public: false,
    },
    Route {
        method: "GET",
        path: "/oauth/callback",
        function: Function::OauthCallback,
        public: true,
    },
    Route {
        method: "POST",
        path: "/notifications",
        function: Function::SendNotification,
        public: false,
    },
    Route {
        method: "GET",
        path: "/healthz",
        function: Function::LocalServer,
        public: true,
    },
];

/// A JSON error: `{"error": {"code", "message", "field"?}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }
    fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "No such mailbox.")
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Invalid(f) => ApiError {
                status: StatusCode::BAD_REQUEST,
                code: f.code,
                message: format!("{}: {}", f.field, f.message),
                field: Some(f.field),
            },
            ServiceError::BadRequest { code, message } => {
                ApiError::new(StatusCode::BAD_REQUEST, code, message)
            }
            ServiceError::NotFound => ApiError::not_found(),
            ServiceError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            ServiceError::Unavailable(m) => {
                tracing::error!(error = %m, "storage unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage_unavailable",
                    "The service's storage is unavailable. Nothing was changed; try again in a minute.",
                )
            }
            ServiceError::Misconfigured(m) => {
                tracing::error!(error = %m, "misconfigured");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "misconfigured", m)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": {"code": self.code, "message": self.message}});
        if let Some(f) = self.field {
            body["error"]["field"] = Value::String(f);
        }
        json_response(self.status, &body)
    }
}

fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut r = Response::new(Body::from(bytes));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

type ApiResult = Result<Response, ApiError>;

/// Who is calling: the tenant from the admin token (local) or the JWT authorizer's claim (AWS).
fn tenant_of(app: &App, req: &Request) -> Result<TenantId, ApiError> {
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
    match &app.tenancy {
        Tenancy::AdminToken { token, tenant } => {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or_default();
            if constant_time_eq(given.trim().as_bytes(), token.expose().as_bytes()) {
                Ok(tenant.clone())
            } else {
                Err(unauthorized(
                    "Send the header `Authorization: Bearer <OUTGOING_MAIL_ADMIN_TOKEN>` (printed by the local server at start-up).",
                ))
            }
        }
        Tenancy::JwtClaim { claim } => {
            let value = jwt_claim(req, claim).ok_or_else(|| {
                unauthorized(&format!(
                    "The request carries no `{claim}` claim from the JWT authorizer."
                ))
            })?;
            TenantId::parse(&value).ok_or_else(|| {
                unauthorized(&format!("The `{claim}` claim is not a valid tenant id."))
            })
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(feature = "lambda")]
fn jwt_claim(req: &Request, claim: &str) -> Option<String> {
    use lambda_http::request::RequestContext;
    match req.extensions().get::<RequestContext>()? {
        RequestContext::ApiGatewayV2(ctx) => ctx
            .authorizer
            .as_ref()?
            .jwt
            .as_ref()?
            .claims
            .get(claim)
            .cloned(),
        _ => None,
    }
}

#[cfg(not(feature = "lambda"))]
fn jwt_claim(_req: &Request, _claim: &str) -> Option<String> {
    None
}

/// `https://<domain>[/<stage>]` from API Gateway's request context, for the redirect URI
/// when OUTGOING_MAIL_PUBLIC_URL is not set.
#[cfg(feature = "lambda")]
fn request_base(req: &Request) -> Option<String> {
    use lambda_http::request::RequestContext;
    match req.extensions().get::<RequestContext>()? {
        RequestContext::ApiGatewayV2(ctx) => {
            let domain = ctx.domain_name.as_deref()?;
            match ctx.stage.as_deref() {
                Some(stage) if stage != "$default" && !stage.is_empty() => {
                    Some(format!("https://{domain}/{stage}"))
                }
                _ => Some(format!("https://{domain}")),
            }
        }
        _ => None,
    }
}

#[cfg(not(feature = "lambda"))]
fn request_base(_req: &Request) -> Option<String> {
    None
}

fn redirect_uri(app: &App, req: &Request) -> Option<String> {
    app.public_url
        .clone()
        .or_else(|| request_base(req))
        .map(|b| App::redirect_uri(&b))
}

fn view(r: &MailboxRecord, redirect: Option<&str>) -> MailboxView {
    MailboxView::new(r, redirect)
}

async fn json_body(req: Request) -> Result<Value, ApiError> {
    json_body_limited(req, MAX_BODY).await
}

async fn json_body_limited(req: Request, limit: usize) -> Result<Value, ApiError> {
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|ct| ct.starts_with("application/json") || ct.contains("+json"));
    if !is_json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Send the body as application/json.",
        ));
    }
    let bytes = axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("The request body must be at most {} KiB.", limit / 1024),
            )
        })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("The body is not valid JSON: {e}"),
        )
    })
}

fn mailbox_id(raw: &str) -> Result<MailboxId, ApiError> {
    // a malformed id cannot exist: same answer as an unknown one
    MailboxId::parse(raw).ok_or_else(ApiError::not_found)
}

async fn create_mailbox(State(app): State<App>, req: Request) -> ApiResult {
    let tenant = tenant_of(&app, &req)?;
    let redirect = redirect_uri(&app, &req);
    let body = json_body(req).await?;
    let r = mailboxes::create(&app, &tenant, &body).await?;
    let mut resp = json_response(StatusCode::CREATED, &view(&r, redirect.as_deref()));
    if let Ok(v) = HeaderValue::from_str(&format!("/mailboxes/{}", r.id)) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

async fn list_mailboxes(State(app): State<App>, req: Request) -> ApiResult {
    let tenant = tenant_of(&app, &req)?;
    let redirect = redirect_uri(&app, &req);
    let all = mailboxes::list(&app, &tenant).await?;
    let views: Vec<MailboxView> = all.iter().map(|r| view(r, redirect.as_deref())).collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({ "mailboxes": views }),
    ))
}

async fn get_mailbox(State(app): State<App>, Path(id): Path<String>, req: Request) -> ApiResult {
    let tenant = tenant_of(&app, &req)?;
    let id = mailbox_id(&id)?;
    let r = mailboxes::get(&app, &tenant, &id).await?;
    Ok(json_response(
        StatusCode::OK,
        &view(&r, redirect_uri(&app, &req).as_deref()),
    ))
}

async fn patch_mailbox(State(app): State<App>, Path(id): Path<String>, req: Request) -> ApiResult {
    let tenant = tenant_of(&app, &req)?;
    let id = mailbox_id(&id)?;
    let redirect = redirect_uri(&app, &req);
    let body = json_body(req).await?;
    let r = mailboxes::patch(&app, &tenant, &id, &body).await?;
    Ok(json_response(
        StatusCode::OK,
        &view(&r, redirect.as_deref()),
    ))
}

async fn delete_mailbox(State(app): State<App>, Path(id): Path<String>, req: Request) -> ApiResult {
    let tenant = tenant_of(&app, &req)?;
    let id = mailbox_id(&id)?;
    mailboxes::delete(&app, &tenant, &id).await?;
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    Ok(r)
}

async fn verify_mailbox(State(app): State<App>, Path(id): Path<String>, req: Request) -> ApiResult {
    let tenant = tenant_of(&app, &req)?;
    let id = mailbox_id(&id)?;
    let r = verify::verify_now(&app, &tenant, &id).await?;
    Ok(json_response(
        StatusCode::OK,
        &view(&r, redirect_uri(&app, &req).as_deref()),
    ))
}

async fn authorize_mailbox(
    State(app): State<App>,
    Path(id): Path<String>,
    req: Request,
) -> ApiResult {
    let tenant = tenant_of(&app, &req)?;
    let id = mailbox_id(&id)?;
    let base = request_base(&req);
    let url = authorize::start(&app, &tenant, &id, base.as_deref()).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "authorization_url": url }),
    ))
}

async fn oauth_callback(
    State(app): State<App>,
    query: Result<Query<CallbackParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let params = query.map(|Query(q)| q).unwrap_or_default();
    let outcome = authorize::callback(&app, &params).await;
    callback_page(&outcome)
}

/// The small HTML page the admin's browser shows after the provider's redirect.
pub fn callback_page(o: &CallbackOutcome) -> Response {
    use html_escape::encode_text as esc;
    let detail = o
        .detail
        .as_deref()
        .map(|d| format!("<p class=\"detail\">Details: <code>{}</code></p>", esc(d)))
        .unwrap_or_default();
    let reason = o
        .mailbox
        .as_ref()
        .and_then(|m| m.state.status_reason)
        .map(|r| {
            format!(
                "<p class=\"reason\">Reason: <code>{}</code></p>",
                esc(r.code())
            )
        })
        .unwrap_or_default();
    let mailbox = o
        .mailbox
        .as_ref()
        .map(|m| {
            format!(
                "<p>Mailbox: <strong>{}</strong> ({})</p>",
                esc(m.spec.username.as_str()),
                esc(m.id.as_str())
            )
        })
        .unwrap_or_default();
    let class = if o.success { "ok" } else { "fail" };
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
         <title>{title}</title><style>body{{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem}}\
         h1.ok{{color:#116329}}h1.fail{{color:#a40e26}}.detail{{color:#555;font-size:.9em}}code{{word-break:break-all}}</style></head>\
         <body><h1 class=\"{class}\">{title}</h1>{mailbox}<p>{message}</p>{reason}{detail}</body></html>",
        title = esc(&o.title),
        message = esc(&o.message),
    );
    let mut r = Response::new(Body::from(html));
    *r.status_mut() = StatusCode::from_u16(o.http_status).unwrap_or(StatusCode::OK);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // the URL carries the authorization code: never leak it onward
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    r
}

async fn healthz() -> Response {
    json_response(StatusCode::OK, &json!({"status": "ok"}))
}

/// `POST /notifications`: deliver now. 202 delivered (or duplicate of an earlier delivery),
/// 422 failed for good, 503 + Retry-After when it should be tried again.
async fn post_notification(State(app): State<App>, req: Request) -> ApiResult {
    let tenant = tenant_of(&app, &req)?;
    let body = json_body_limited(req, MAX_NOTIFICATION_BODY).await?;
    if body.get("tenant").is_some() {
        return Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "read_only",
            message: "tenant: is taken from the caller's credentials and cannot be set".into(),
            field: Some("tenant".into()),
        });
    }
    let n = crate::domain::notification::parse_notification(&body).map_err(ServiceError::from)?;
    let result = crate::service::send::deliver(&app, &tenant, &n).await;
    let earlier_failure = result
        .record
        .as_ref()
        .is_some_and(|r| r.status == crate::ports::DeliveryStatus::Failed);
    let status = match result.status {
        "duplicate" if earlier_failure => StatusCode::UNPROCESSABLE_ENTITY,
        "delivered" | "duplicate" => StatusCode::ACCEPTED,
        "failed" => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    let mut resp = json_response(status, &result);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
    }
    Ok(resp)
}

async fn not_found() -> Response {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "No such route.").into_response()
}

fn handler_for(route: &Route) -> MethodRouter<App> {
    let method = route.method.parse::<Method>().unwrap_or(Method::GET);
    let filter =
        axum::routing::MethodFilter::try_from(method).unwrap_or(axum::routing::MethodFilter::GET);
    match (route.method, route.path) {
        ("POST", "/mailboxes") => on(filter, create_mailbox),
        ("GET", "/mailboxes") => on(filter, list_mailboxes),
        ("GET", "/mailboxes/{id}") => on(filter, get_mailbox),
        ("PATCH", "/mailboxes/{id}") => on(filter, patch_mailbox),
        ("DELETE", "/mailboxes/{id}") => on(filter, delete_mailbox),
        ("POST", "/mailboxes/{id}/verify") => on(filter, verify_mailbox),
        ("POST", "/mailboxes/{id}/authorize") => on(filter, authorize_mailbox),
        ("GET", "/oauth/callback") => on(filter, oauth_callback),
        ("POST", "/notifications") => on(filter, post_notification),
        _ => on(filter, healthz),
    }
}

/// The router serving the routes owned by `functions`.
pub fn router(app: App, functions: &[Function]) -> Router {
    let mut by_path: std::collections::BTreeMap<&str, MethodRouter<App>> = Default::default();
    for route in ROUTES.iter().filter(|r| functions.contains(&r.function)) {
        let mr = handler_for(route);
        let entry = by_path.remove(route.path);
        by_path.insert(
            route.path,
            match entry {
                Some(existing) => existing.merge(mr),
                None => mr,
            },
        );
    }
    let mut router = Router::new();
    for (path, mr) in by_path {
        router = router.route(path, mr.fallback(method_not_allowed));
    }
    router.fallback(not_found).with_state(app)
}

async fn method_not_allowed(headers: HeaderMap) -> Response {
    let _ = headers;
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "This route does not accept that method.",
    )
    .into_response()
}

/// Every function, as the local server serves them.
pub const ALL_FUNCTIONS: &[Function] = &[
    Function::Mailboxes,
    Function::AuthorizeStart,
    Function::OauthCallback,
    Function::SendNotification,
    Function::LocalServer,
];
