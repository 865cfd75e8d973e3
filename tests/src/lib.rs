//! Test harness: real peers (moto, the OAuth server, the SMTP server) started by
//! `infra/test.sh`, and a fresh app per test on either storage backend.

use std::sync::{Arc, Mutex, OnceLock};

use outgoing_mail::api::{ALL_FUNCTIONS, Function, router};
use outgoing_mail::app::{App, Stores, Tenancy};
use outgoing_mail::config::{Profile, Settings};
use outgoing_mail::domain::{MailboxId, Sensitive, TenantId};
use outgoing_mail::ports::{
    AuthStateStore, DeliveryLog, LeaseStore, MailboxSecret, MailboxStore, SecretStore,
};
use serde_json::{Value, json};

pub use outgoing_mail;

pub mod bench;

/// Which storage backend a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    Aws,
}

/// A required variable from `.peers/env`.
pub fn peer_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: the peers are not running. Run the tests with `infra/test.sh` (it starts moto, the OAuth server and the SMTP server).")
    })
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// The three storage ports of one backend, isolated for one test.
pub struct TestStores {
    pub mailboxes: Arc<dyn MailboxStore>,
    pub states: Arc<dyn AuthStateStore>,
    pub secrets: Arc<dyn SecretStore>,
    pub leases: Arc<dyn LeaseStore>,
    pub deliveries: Arc<dyn DeliveryLog>,
    pub dir: Option<tempfile::TempDir>,
    pub table: Option<String>,
    pub secret_prefix: String,
}

impl TestStores {
    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Embedded => {
                use outgoing_mail::adapters::embedded::{EmbeddedStore, EncryptedSecretStore};
                let dir = tempfile::tempdir().expect("tempdir");
                let store = Arc::new(EmbeddedStore::open(dir.path()).expect("open store"));
                let secrets =
                    Arc::new(EncryptedSecretStore::open(dir.path()).expect("open secrets"));
                Self {
                    mailboxes: store.clone(),
                    states: store.clone(),
                    leases: store.clone(),
                    deliveries: store,
                    secrets,
                    dir: Some(dir),
                    table: None,
                    secret_prefix: String::new(),
                }
            }
            Backend::Aws => {
                use outgoing_mail::adapters::aws::{DynamoStore, SecretsManagerStore};
                let sdk = aws_sdk_config().await;
                let table = unique("om-test");
                let prefix = format!("{}/", unique("om-test"));
                let store = DynamoStore::new(&sdk, table.clone());
                store
                    .create_table_if_missing()
                    .await
                    .expect("create table in moto");
                let store = Arc::new(store);
                let secrets = Arc::new(SecretsManagerStore::new(&sdk, prefix.clone()));
                Self {
                    mailboxes: store.clone(),
                    states: store.clone(),
                    leases: store.clone(),
                    deliveries: store,
                    secrets,
                    dir: None,
                    table: Some(table),
                    secret_prefix: prefix,
                }
            }
        }
    }

    pub fn stores(&self) -> Stores {
        Stores {
            mailboxes: self.mailboxes.clone(),
            states: self.states.clone(),
            secrets: self.secrets.clone(),
            leases: self.leases.clone(),
            deliveries: self.deliveries.clone(),
        }
    }
}

/// SDK configuration pointing at moto.
pub async fn aws_sdk_config() -> outgoing_mail::adapters::aws::SdkConfig {
    let moto = peer_env("OM_TEST_MOTO_URL");
    // SAFETY of intent: every test process sets the same values; the SDK reads them at load.
    unsafe {
        std::env::set_var("AWS_ENDPOINT_URL", &moto);
        std::env::set_var("AWS_REGION", "us-east-1");
        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    }
    // moto is one Python process serving every parallel test (and the benchmarks' 10,000-item
    // tables): give it far longer than DynamoDB would ever need
    outgoing_mail::adapters::aws::load_sdk_config(std::time::Duration::from_secs(120)).await
}

/// Log lines captured from this test process (each nextest test is its own process).
pub fn captured_logs() -> String {
    let buf = log_buffer().lock().map(|b| b.clone()).unwrap_or_default();
    String::from_utf8_lossy(&buf).into_owned()
}

fn log_buffer() -> &'static Arc<Mutex<Vec<u8>>> {
    static BUF: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUF.get_or_init(Default::default)
}

#[derive(Clone)]
struct BufWriter(Arc<Mutex<Vec<u8>>>);
impl std::io::Write for BufWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(b);
        }
        std::io::stderr().write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn capture_logs() {
    let buf = log_buffer().clone();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
        .with_ansi(false)
        .with_writer(move || BufWriter(buf.clone()))
        .try_init();
}

/// A running app on a loopback port, with its own storage.
pub struct TestApp {
    pub base: String,
    pub token: String,
    pub http: reqwest::Client,
    pub app: App,
    pub tenant: TenantId,
    pub stores: TestStores,
    pub backend: Backend,
}

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

pub fn settings(extra: &[(&str, String)]) -> Settings {
    let ca = std::env::var("OM_TEST_CA").ok();
    let mut vars: Vec<(String, String)> = vec![
        ("OUTGOING_MAIL_ADMIN_TOKEN".into(), ADMIN_TOKEN.into()),
        ("OUTGOING_MAIL_SMTP_TIMEOUT_SECS".into(), "5".into()),
        ("OUTGOING_MAIL_TOKEN_TIMEOUT_SECS".into(), "5".into()),
    ];
    if let Some(ca) = ca {
        vars.push(("OUTGOING_MAIL_EXTRA_CA".into(), ca));
    }
    vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    Settings::from_lookup(Profile::LocalServer, |k| {
        vars.iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    })
    .expect("test settings")
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, &[]).await
    }

    /// A second app (another "container") on the same storage as `self`.
    pub async fn sibling(&self) -> App {
        let settings = settings(&[("OUTGOING_MAIL_PUBLIC_URL", self.base.clone())]);
        App::with_stores(
            &settings,
            Tenancy::AdminToken {
                token: Sensitive::new(ADMIN_TOKEN),
                tenant: self.tenant.clone(),
            },
            self.stores.stores(),
        )
        .expect("app")
    }

    pub async fn spawn_with(backend: Backend, env: &[(&str, String)]) -> Self {
        capture_logs();
        let stores = TestStores::new(backend).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let base = format!("http://{addr}");
        let mut vars = vec![("OUTGOING_MAIL_PUBLIC_URL", base.clone())];
        vars.extend(env.iter().cloned());
        let settings = settings(&vars);
        let tenant = TenantId::parse("local").expect("tenant");
        let app = App::with_stores(
            &settings,
            Tenancy::AdminToken {
                token: Sensitive::new(ADMIN_TOKEN),
                tenant: tenant.clone(),
            },
            stores.stores(),
        )
        .expect("app");
        let service = router(app.clone(), ALL_FUNCTIONS);
        tokio::spawn(async move {
            let _ = axum::serve(listener, service).await;
        });
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        Self {
            base,
            token: ADMIN_TOKEN.into(),
            http,
            app,
            tenant,
            stores,
            backend,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self
            .http
            .request(m, self.url(path))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn create(&self, body: Value) -> Value {
        let (status, v) = self.call("POST", "/mailboxes", Some(body)).await;
        assert_eq!(status, 201, "create failed: {v}");
        v
    }

    pub async fn get(&self, id: &str) -> Value {
        let (status, v) = self.call("GET", &format!("/mailboxes/{id}"), None).await;
        assert_eq!(status, 200, "{v}");
        v
    }

    pub async fn secret(&self, id: &str) -> Option<MailboxSecret> {
        let id = MailboxId::parse(id).expect("mailbox id");
        self.app
            .secrets
            .get(&self.tenant, &id)
            .await
            .expect("secret store")
    }

    pub async fn mailbox_count(&self) -> usize {
        self.app
            .mailboxes
            .list(&self.tenant)
            .await
            .expect("list")
            .len()
    }

    /// Authorize: start, follow the provider's redirect, land on the callback.
    /// Returns (callback HTTP status, page HTML, mailbox JSON after).
    pub async fn authorize(&self, id: &str) -> (u16, String, Value) {
        let (status, v) = self
            .call("POST", &format!("/mailboxes/{id}/authorize"), None)
            .await;
        assert_eq!(status, 200, "authorize-start failed: {v}");
        let url = v["authorization_url"]
            .as_str()
            .expect("authorization_url")
            .to_owned();
        let callback = follow_provider(&self.http, &url).await;
        let (status, html) = self.get_page(&callback).await;
        (status, html, self.get(id).await)
    }

    pub async fn get_page(&self, url: &str) -> (u16, String) {
        let resp = self.http.get(url).send().await.expect("callback request");
        (
            resp.status().as_u16(),
            resp.text().await.unwrap_or_default(),
        )
    }
}

/// Ask the OAuth peer's /authorize (the "user signs in") and return the redirect target.
pub async fn follow_provider(http: &reqwest::Client, authorization_url: &str) -> String {
    let resp = http
        .get(authorization_url)
        .send()
        .await
        .expect("authorize at provider");
    assert_eq!(
        resp.status().as_u16(),
        302,
        "provider did not redirect: {}",
        resp.text().await.unwrap_or_default()
    );
    resp.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .expect("location")
        .to_owned()
}

/// A unique mailbox user at the test tenant; `flags` go into the local part (SMTP behaviour).
pub fn test_user(flags: &str) -> String {
    format!("u{flags}-{}@tenant.test", uuid::Uuid::new_v4().simple())
}

/// A `custom` OAuth mailbox pointed at the peers. `client_flags` select OAuth peer behaviour.
pub fn oauth_mailbox(user: &str, client_flags: &str) -> Value {
    let oauth = peer_env("OM_TEST_OAUTH_URL");
    json!({
        "auth": "oauth2",
        "provider": "custom",
        "username": user,
        "from_name": "Contoso Alerts",
        "reply_to": "helpdesk@tenant.test",
        "signature": "Contoso IT\nhttps://contoso.example",
        "smtp_host": peer_env("OM_TEST_SMTP_HOST"),
        "smtp_port": peer_env("OM_TEST_SMTP_PORT").parse::<u16>().expect("port"),
        "smtp_security": "starttls",
        "authorization_url": format!("{oauth}/authorize"),
        "token_url": format!("{oauth}/token"),
        "client_id": format!("{client_flags}-{}", uuid::Uuid::new_v4().simple()),
        "client_secret": format!("s3cr~{}", uuid::Uuid::new_v4().simple()),
        "scopes": ["https://outlook.office.com/SMTP.Send", "offline_access", "openid", "email", "profile"],
    })
}

/// GET a peer's control endpoint as JSON.
async fn peer_json<T: serde::de::DeserializeOwned>(url: String, what: &str) -> T {
    let resp = reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    resp.json()
        .await
        .unwrap_or_else(|e| panic!("{what}: not JSON: {e}"))
}

/// The OAuth peer's request counts for one client id.
pub async fn oauth_stats(client_id: &str) -> Value {
    let url = format!(
        "{}/_control/stats?client_id={client_id}",
        peer_env("OM_TEST_OAUTH_URL")
    );
    peer_json(url, "oauth stats").await
}

/// The SMTP peer's counts for one AUTH user.
pub async fn smtp_stats(user: &str) -> Value {
    let url = format!("{}/stats?user={user}", peer_env("OM_TEST_SMTP_CONTROL_URL"));
    peer_json(url, "smtp stats").await
}

/// Router for a Lambda function with JWT-claim tenancy, for tests that go through the
/// API Gateway event shape.
pub fn lambda_router(app: &App, functions: &[Function]) -> axum::Router {
    let mut app = app.clone();
    app.tenancy = Tenancy::JwtClaim {
        claim: "tenant_id".into(),
    };
    router(app, functions)
}

/// An API Gateway HTTP API (payload 2.0) request, parsed the way lambda_http parses it.
pub fn apigw_request(
    method: &str,
    path: &str,
    tenant: Option<&str>,
    body: Option<&Value>,
) -> lambda_http::Request {
    let (raw_path, query) = path.split_once('?').unwrap_or((path, ""));
    let mut ctx = json!({
        "accountId": "123456789012", "apiId": "abc123", "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
        "domainPrefix": "abc123", "http": {"method": method, "path": raw_path, "protocol": "HTTP/1.1", "sourceIp": "203.0.113.7", "userAgent": "test"},
        "requestId": "req-1", "routeKey": format!("{method} {raw_path}"), "stage": "$default", "time": "04/Dec/2026:20:00:00 +0000", "timeEpoch": 1_796_400_000_000u64
    });
    if let Some(t) = tenant {
        ctx["authorizer"] =
            json!({"jwt": {"claims": {"tenant_id": t, "sub": "admin-1"}, "scopes": null}});
    }
    let event = json!({
        "version": "2.0", "routeKey": format!("{method} {raw_path}"), "rawPath": raw_path, "rawQueryString": query,
        "headers": {"content-type": "application/json", "host": "abc123.execute-api.us-east-1.amazonaws.com"},
        "requestContext": ctx, "body": body.map(|b| b.to_string()), "isBase64Encoded": false
    });
    lambda_http::request::from_str(&event.to_string()).expect("valid API Gateway event")
}

/// Send a lambda_http request through a router; (status, JSON body).
pub async fn oneshot(router: &axum::Router, req: lambda_http::Request) -> (u16, Value) {
    use tower::ServiceExt;
    let resp = router.clone().oneshot(req).await.expect("infallible");
    let status = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// A default sender on the SMTP peer (basic auth), as OUTGOING_MAIL_DEFAULT_SENDER JSON.
/// Returns (env pair, the sender's address).
pub fn default_sender_env() -> ((&'static str, String), String) {
    let address = format!("platform-{}@platform.test", uuid::Uuid::new_v4().simple());
    let json = json!({
        "host": peer_env("OM_TEST_SMTP_HOST"), "port": peer_env("OM_TEST_SMTP_PORT").parse::<u16>().expect("port"),
        "security": "starttls", "from_address": address, "from_name": "Platform Notifications",
        "username": address, "password": "correct-horse"
    });
    (("OUTGOING_MAIL_DEFAULT_SENDER", json.to_string()), address)
}

impl TestApp {
    /// Create an OAuth mailbox for a fresh user and authorize it to `verified`.
    /// Returns (mailbox JSON, user, client_id).
    pub async fn verified_mailbox(
        &self,
        user_flags: &str,
        client_flags: &str,
        extra: Value,
    ) -> (Value, String, String) {
        let user = test_user(user_flags);
        let mut body = oauth_mailbox(&user, client_flags);
        body.as_object_mut()
            .expect("object")
            .extend(extra.as_object().cloned().unwrap_or_default());
        let client_id = body["client_id"].as_str().expect("client_id").to_owned();
        let created = self.create(body).await;
        let id = created["id"].as_str().expect("id").to_owned();
        let (_, html, mailbox) = self.authorize(&id).await;
        assert_eq!(
            mailbox["status"], "verified",
            "setup: mailbox must verify: {mailbox} {html}"
        );
        (mailbox, user, client_id)
    }
}

/// Messages the SMTP peer accepted for a recipient.
pub async fn messages_for(rcpt: &str) -> Vec<Value> {
    let url = format!(
        "{}/messages?rcpt={rcpt}",
        peer_env("OM_TEST_SMTP_CONTROL_URL")
    );
    peer_json(url, "smtp messages").await
}

impl TestApp {
    /// Make the stored access token look expired (and forget this process's cached copy),
    /// so the next use must refresh.
    pub async fn expire_access_token(&self, id: &str) {
        let mid = MailboxId::parse(id).expect("mailbox id");
        let mut secret = self.secret(id).await.expect("secret");
        secret.access_token_expires_at =
            Some(time::OffsetDateTime::now_utc() - time::Duration::minutes(1));
        self.app
            .secrets
            .put(&self.tenant, &mid, &secret)
            .await
            .expect("put secret");
        self.app.warm.forget(&(self.tenant.clone(), mid));
    }
}

/// Make the SMTP peer cut every open session of `user` (a server restart, a middlebox's idle
/// timeout); returns how many it cut.
pub async fn smtp_drop_sessions(user: &str) -> u64 {
    let url = format!("{}/drop?user={user}", peer_env("OM_TEST_SMTP_CONTROL_URL"));
    let answer: Value = peer_json(url, "smtp drop").await;
    answer["dropped"].as_u64().unwrap_or(0)
}
