//! The sample events in `events/` (the ones the README tells people to use with
//! `sam local invoke -e` and `cargo lambda invoke --data-file`) are accepted by their
//! function's handler against the peers and get the answer a user expects, so the samples
//! cannot rot. HTTP API events go through the router of the function that owns their route
//! (parsed by `lambda_http` as in Lambda, tenant from the JWT authorizer's `tenant_id`
//! claim); `send-notification` and `token-refresh` events go through their Lambda handlers.
//!
//! Mailbox ids are generated, so a test creates the mailboxes first and substitutes their
//! ids for the sample ids in the event text (the files keep their sample ids).
//!
//! Also: the `cargo lambda watch` router in Cargo.toml serves exactly the deployed routes.

use std::collections::BTreeSet;

use outgoing_mail_tests::outgoing_mail::api::{Function, ROUTES};
use outgoing_mail_tests::outgoing_mail::domain::mailbox::MailboxRecord;
use outgoing_mail_tests::outgoing_mail::domain::{MailboxId, TenantId};
use outgoing_mail_tests::outgoing_mail::lambda::{send_notification_event, token_refresh_event};
use outgoing_mail_tests::*;
use serde_json::{Value, json};

/// The tenant named by the samples' JWT claim `tenant_id`.
const TENANT: &str = "tenant-demo";
/// The sample mailbox ids (valid ids that no test store ever generates).
const SAMPLE_ID: &str = "mbx_7f3c9a2e4b1d4c8e9a06d5b3f1e2c4a7";
const SAMPLE_ID_2: &str = "mbx_1b8e4d2c6a9f3e7051d0c8b6a4f2e9d3";
const SAMPLE_CODE: &str = "1.AXoAq3zYdLdPiEKcL0Rz5v8uVn8sPD9BikpOnhXA0rek-GF6AK16AA.AgABBAIAAAApTwJmzXqdR4BN2miheQMYAgDs_wUA9P9qZtG2Ha1B7fVyC4mQ8xL0nR3tJ";
const SAMPLE_STATE: &str = "st_Zp4Hq9Vw2Lx7Rk3Nm8Tb5Yc1Fd6Gs0Aj";

/// Which handler takes a sample, and which test below checks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handler {
    /// API Gateway HTTP API (payload 2.0) request: through the router of the function
    /// that owns the event's `routeKey` in `ROUTES`.
    Http,
    /// `send-notification`'s handler (SQS batch or direct invocation).
    SendNotification,
    /// `token-refresh`'s handler.
    TokenRefresh,
}

/// Every file in `events/`: (file, handler, test that checks it).
const SAMPLES: &[(&str, Handler, &str)] = &[
    (
        "mailboxes-create.json",
        Handler::Http,
        "mailbox_crud_samples",
    ),
    ("mailboxes-list.json", Handler::Http, "mailbox_crud_samples"),
    ("mailboxes-get.json", Handler::Http, "mailbox_crud_samples"),
    (
        "mailboxes-patch.json",
        Handler::Http,
        "mailbox_crud_samples",
    ),
    (
        "mailboxes-delete.json",
        Handler::Http,
        "mailbox_crud_samples",
    ),
    (
        "authorize-start.json",
        Handler::Http,
        "authorize_callback_and_verify_samples",
    ),
    (
        "oauth-callback.json",
        Handler::Http,
        "authorize_callback_and_verify_samples",
    ),
    (
        "mailboxes-verify.json",
        Handler::Http,
        "authorize_callback_and_verify_samples",
    ),
    (
        "notifications-post.json",
        Handler::Http,
        "notifications_post_sample",
    ),
    (
        "send-notification-direct.json",
        Handler::SendNotification,
        "send_notification_direct_sample",
    ),
    (
        "send-notification-sqs.json",
        Handler::SendNotification,
        "send_notification_sqs_sample",
    ),
    (
        "token-refresh-scheduler.json",
        Handler::TokenRefresh,
        "token_refresh_schedule_samples",
    ),
    (
        "token-refresh-scheduled-event.json",
        Handler::TokenRefresh,
        "token_refresh_schedule_samples",
    ),
    (
        "token-refresh-manual.json",
        Handler::TokenRefresh,
        "token_refresh_manual_sample",
    ),
];

fn events_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../events")
}

/// The sample's text, with sample values replaced by real ones.
fn sample(name: &str, replace: &[(&str, &str)]) -> String {
    assert!(
        SAMPLES.iter().any(|(f, _, _)| *f == name),
        "{name} is not in SAMPLES"
    );
    let path = events_dir().join(name);
    let mut text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    for (from, to) in replace {
        assert!(text.contains(from), "{name} does not contain `{from}`");
        text = text.replace(from, to);
    }
    text
}

fn sample_json(name: &str, replace: &[(&str, &str)]) -> Value {
    serde_json::from_str(&sample(name, replace)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The function that serves an HTTP API event (its `routeKey` looked up in `ROUTES`).
fn owner(event: &Value) -> Function {
    let key = event["routeKey"].as_str().expect("routeKey");
    let (method, path) = key.split_once(' ').expect("routeKey is `METHOD /path`");
    assert_eq!(
        event["requestContext"]["routeKey"], key,
        "routeKey and requestContext.routeKey differ"
    );
    ROUTES
        .iter()
        .find(|r| r.method == method && r.path == path)
        .unwrap_or_else(|| panic!("no route `{key}` in outgoing_mail::api::ROUTES"))
        .function
}

/// Send an HTTP API sample through its function's router, as lambda_http does in Lambda.
/// Returns (status, headers, body text).
async fn http(t: &TestApp, text: &str) -> (u16, http::HeaderMap, String) {
    use tower::ServiceExt;
    let event: Value = serde_json::from_str(text).expect("event JSON");
    let claims = &event["requestContext"]["authorizer"]["jwt"]["claims"];
    if !claims.is_null() {
        assert_eq!(
            claims["tenant_id"], TENANT,
            "samples use the claim tenant_id"
        );
    }
    let router = lambda_router(&t.app, &[owner(&event)]);
    let req = lambda_http::request::from_str(text).expect("lambda_http parses the sample");
    let resp = router.oneshot(req).await.expect("infallible");
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.expect("body");
    (
        parts.status.as_u16(),
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

async fn http_json(t: &TestApp, text: &str) -> (u16, Value) {
    let (status, _, body) = http(t, text).await;
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

/// A mailbox of tenant-demo on the peers, authorized to `verified` with the
/// `authorize-start.json` and `oauth-callback.json` samples. Returns (id, SMTP user).
async fn verified_mailbox(t: &TestApp) -> (String, String) {
    let user = test_user("");
    let body = oauth_mailbox(&user, "events");
    let (status, created) = oneshot(
        &lambda_router(&t.app, &[Function::Mailboxes]),
        apigw_request("POST", "/mailboxes", Some(TENANT), Some(&body)),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().expect("id").to_owned();

    let (status, started) =
        http_json(t, &sample("authorize-start.json", &[(SAMPLE_ID, &id)])).await;
    assert_eq!(status, 200, "authorize-start.json: {started}");
    let url = started["authorization_url"]
        .as_str()
        .expect("authorization_url");
    assert!(url.starts_with(&peer_env("OM_TEST_OAUTH_URL")), "{url}");

    // the admin signs in at the provider, which redirects to the callback with code + state
    let callback = url::Url::parse(&follow_provider(&t.http, url).await).expect("callback URL");
    assert_eq!(callback.path(), "/oauth/callback");
    let param = |name: &str| {
        callback
            .query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .unwrap_or_else(|| panic!("no {name} in {callback}"))
    };
    let (code, state) = (param("code"), param("state"));
    let (status, headers, page) = http(
        t,
        &sample(
            "oauth-callback.json",
            &[(SAMPLE_CODE, &code), (SAMPLE_STATE, &state)],
        ),
    )
    .await;
    assert_eq!(status, 200, "oauth-callback.json: {page}");
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert!(page.contains("The mailbox is verified"), "{page}");
    (id, user)
}

/// Messages the SMTP peer accepted from one authenticated user.
async fn messages_sent_by(user: &str) -> Vec<Value> {
    let url = format!(
        "{}/messages?user={user}",
        peer_env("OM_TEST_SMTP_CONTROL_URL")
    );
    reqwest::get(url)
        .await
        .expect("smtp messages")
        .json()
        .await
        .expect("json")
}

fn recipients(messages: &[Value]) -> BTreeSet<String> {
    messages
        .iter()
        .flat_map(|m| m["to"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect()
}

async fn demo_record(t: &TestApp, id: &str) -> MailboxRecord {
    let tenant = TenantId::parse(TENANT).unwrap();
    let mid = MailboxId::parse(id).unwrap();
    t.app
        .mailboxes
        .get(&tenant, &mid)
        .await
        .expect("store")
        .expect("mailbox")
}

/// Make the mailbox due for the scheduled job: its access token expires in 10 minutes.
async fn make_due(t: &TestApp, id: &str) {
    let tenant = TenantId::parse(TENANT).unwrap();
    let mid = MailboxId::parse(id).unwrap();
    let at = time::OffsetDateTime::now_utc() + time::Duration::minutes(10);
    let mut secret = t
        .app
        .secrets
        .get(&tenant, &mid)
        .await
        .expect("store")
        .expect("secret");
    secret.access_token_expires_at = Some(at);
    t.app
        .secrets
        .put(&tenant, &mid, &secret)
        .await
        .expect("put");
    t.app.warm.forget(&(tenant, mid));
    let mut r = demo_record(t, id).await;
    r.state.access_token_expires_at = Some(at);
    r.state.next_due_at = r.compute_due(&t.app.due_policy);
    t.app.mailboxes.update(&r).await.expect("update");
}

async fn refresh(t: &TestApp, event: Value) -> Value {
    token_refresh_event(&t.app, event, std::time::Duration::from_secs(60), 4)
        .await
        .expect("token-refresh accepts the sample")
}

// ---------------------------------------------------------------------------------------------

#[test]
fn every_sample_has_an_expectation() {
    let on_disk: BTreeSet<String> = std::fs::read_dir(events_dir())
        .expect("events/")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    let expected: BTreeSet<String> = SAMPLES.iter().map(|(f, _, _)| f.to_string()).collect();
    let unchecked: Vec<_> = on_disk.difference(&expected).collect();
    assert!(
        unchecked.is_empty(),
        "events/ has samples no test checks: {unchecked:?}; add them to SAMPLES in tests/tests/events.rs with a test"
    );
    let missing: Vec<_> = expected.difference(&on_disk).collect();
    assert!(
        missing.is_empty(),
        "SAMPLES names files not in events/: {missing:?}"
    );
    for (file, handler, _) in SAMPLES {
        let v = sample_json(file, &[]);
        let http = v.get("requestContext").is_some() && v.get("rawPath").is_some();
        assert_eq!(http, *handler == Handler::Http, "{file}: {handler:?}");
        if http {
            assert_eq!(v["version"], "2.0", "{file}: payload format 2.0");
            let function = owner(&v);
            let public = ROUTES.iter().any(|r| {
                r.function == function
                    && r.public
                    && v["routeKey"] == format!("{} {}", r.method, r.path)
            });
            let claims = &v["requestContext"]["authorizer"]["jwt"]["claims"];
            assert_eq!(
                claims.is_null(),
                public,
                "{file}: only the public callback comes without the authorizer's claims"
            );
        }
    }
}

#[tokio::test]
async fn mailbox_crud_samples() {
    let t = TestApp::spawn(Backend::Aws).await;
    // create: the sample's Microsoft 365 mailbox as posted
    let (status, headers, body) = http(&t, &sample("mailboxes-create.json", &[])).await;
    let created: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(status, 201, "mailboxes-create.json: {created}");
    let id = created["id"].as_str().expect("id").to_owned();
    assert_eq!(headers["location"], format!("/mailboxes/{id}"));
    assert_eq!(
        (
            created["username"].as_str(),
            created["provider"].as_str(),
            created["status"].as_str()
        ),
        (
            Some("alerts@contoso.com"),
            Some("microsoft"),
            Some("pending_authorization")
        ),
        "{created}"
    );
    assert!(created.get("client_secret").is_none(), "{created}");

    let (status, list) = http_json(&t, &sample("mailboxes-list.json", &[])).await;
    assert_eq!(status, 200, "mailboxes-list.json: {list}");
    let ids: Vec<_> = list["mailboxes"]
        .as_array()
        .expect("mailboxes")
        .iter()
        .map(|m| m["id"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(ids, [id.as_str()]);

    let (status, got) = http_json(&t, &sample("mailboxes-get.json", &[(SAMPLE_ID, &id)])).await;
    assert_eq!(status, 200, "mailboxes-get.json: {got}");
    assert_eq!(got["id"], id.as_str());

    let (status, patched) =
        http_json(&t, &sample("mailboxes-patch.json", &[(SAMPLE_ID, &id)])).await;
    assert_eq!(status, 200, "mailboxes-patch.json: {patched}");
    assert_eq!(
        (patched["from_name"].as_str(), patched["reply_to"].as_str()),
        (Some("Contoso Notifications"), Some("support@contoso.com")),
        "{patched}"
    );

    let (status, _, body) = http(&t, &sample("mailboxes-delete.json", &[(SAMPLE_ID, &id)])).await;
    assert_eq!(status, 204, "mailboxes-delete.json: {body}");
    let (status, gone) = http_json(&t, &sample("mailboxes-get.json", &[(SAMPLE_ID, &id)])).await;
    assert_eq!(status, 404, "{gone}");
    assert_eq!(gone["error"]["code"], "not_found");

    // the samples' own ids name no mailbox: a clear 404, not a 400 or a 500
    for file in [
        "mailboxes-get.json",
        "mailboxes-verify.json",
        "authorize-start.json",
    ] {
        let (status, v) = http_json(&t, &sample(file, &[])).await;
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (404, Some("not_found")),
            "{file} as shipped: {v}"
        );
    }
}

#[tokio::test]
async fn authorize_callback_and_verify_samples() {
    let t = TestApp::spawn(Backend::Aws).await;
    let (id, user) = verified_mailbox(&t).await;
    let auths = smtp_stats(&user).await["auth_ok"].as_u64().unwrap();
    let (status, v) = http_json(&t, &sample("mailboxes-verify.json", &[(SAMPLE_ID, &id)])).await;
    assert_eq!(status, 200, "mailboxes-verify.json: {v}");
    assert_eq!(
        (v["id"].as_str(), v["status"].as_str()),
        (Some(id.as_str()), Some("verified")),
        "{v}"
    );
    assert_eq!(
        smtp_stats(&user).await["auth_ok"].as_u64().unwrap(),
        auths + 1,
        "verify logged in to the SMTP server again"
    );
    // the callback sample as shipped (a state nobody issued) gets a page, not a crash
    let (status, _, page) = http(&t, &sample("oauth-callback.json", &[])).await;
    assert!((400..500).contains(&status), "{status} {page}");
    assert!(page.starts_with("<!doctype html>"), "{page}");
}

#[tokio::test]
async fn notifications_post_sample() {
    let t = TestApp::spawn(Backend::Aws).await;
    let (id, user) = verified_mailbox(&t).await;
    let event = sample_json("notifications-post.json", &[(SAMPLE_ID, &id)]);
    assert_eq!(owner(&event), Function::SendNotification);
    // the send-notification function's own handler, which takes the HTTP event shape too
    let http = lambda_router(&t.app, &[Function::SendNotification]);
    let r = send_notification_event(&t.app, &http, event).await;
    assert_eq!(r["statusCode"], 202, "notifications-post.json: {r}");
    let body: Value = serde_json::from_str(r["body"].as_str().expect("body")).expect("json");
    assert_eq!(
        (body["notification_id"].as_str(), body["status"].as_str()),
        (Some("ntf_01JEK3Q8W5T2Y7R9M4N6P0B1C3"), Some("delivered")),
        "{body}"
    );
    let sent = messages_sent_by(&user).await;
    assert_eq!(
        recipients(&sent),
        BTreeSet::from(["jane.doe@fabrikam.com".to_owned()])
    );
    assert_eq!(sent.len(), 1);
}

#[tokio::test]
async fn send_notification_direct_sample() {
    let t = TestApp::spawn(Backend::Aws).await;
    let (id, user) = verified_mailbox(&t).await;
    let http = lambda_router(&t.app, &[Function::SendNotification]);
    let event = sample_json("send-notification-direct.json", &[(SAMPLE_ID, &id)]);
    let r = send_notification_event(&t.app, &http, event.clone()).await;
    assert_eq!(
        (r["notification_id"].as_str(), r["status"].as_str()),
        (Some("ntf_01JEK3Q8W5T2Y7R9M4N6P0B1C3"), Some("delivered")),
        "send-notification-direct.json: {r}"
    );
    // invoking it again (a retry) sends nothing twice
    let again = send_notification_event(&t.app, &http, event).await;
    assert_eq!(again["status"], "duplicate", "{again}");
    assert_eq!(messages_sent_by(&user).await.len(), 1);
}

#[tokio::test]
async fn send_notification_sqs_sample() {
    let t = TestApp::spawn(Backend::Aws).await;
    let (id, user) = verified_mailbox(&t).await;
    let http = lambda_router(&t.app, &[Function::SendNotification]);
    let event = sample_json("send-notification-sqs.json", &[(SAMPLE_ID, &id)]);
    let r = send_notification_event(&t.app, &http, event).await;
    assert_eq!(
        r,
        json!({"batchItemFailures": []}),
        "send-notification-sqs.json: every record delivered, none to retry"
    );
    let sent = messages_sent_by(&user).await;
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(
        recipients(&sent),
        BTreeSet::from([
            "jane.doe@fabrikam.com".to_owned(),
            "it-ops@fabrikam.com".to_owned(),
            "tom.baker@fabrikam.com".to_owned()
        ])
    );
}

#[tokio::test]
async fn token_refresh_schedule_samples() {
    let t = TestApp::spawn(Backend::Aws).await;
    let (id, _) = verified_mailbox(&t).await;
    for file in [
        "token-refresh-scheduler.json",
        "token-refresh-scheduled-event.json",
    ] {
        make_due(&t, &id).await;
        let s = refresh(&t, sample_json(file, &[])).await;
        assert_eq!(
            (
                s["due"].as_u64(),
                s["refreshed"].as_u64(),
                s["verified"].as_u64(),
                s["cut_short"].as_bool()
            ),
            (Some(1), Some(1), Some(1), Some(false)),
            "{file}: the due mailbox is refreshed and re-verified: {s}"
        );
        let r = demo_record(&t, &id).await;
        assert!(
            r.state.access_token_expires_at.expect("expiry")
                > time::OffsetDateTime::now_utc() + time::Duration::minutes(30),
            "{file}: a new access token was stored"
        );
    }
}

#[tokio::test]
async fn token_refresh_manual_sample() {
    let t = TestApp::spawn(Backend::Aws).await;
    let (a, _) = verified_mailbox(&t).await;
    let (b, _) = verified_mailbox(&t).await;
    let event = sample_json(
        "token-refresh-manual.json",
        &[(SAMPLE_ID, &a), (SAMPLE_ID_2, &b)],
    );
    let s = refresh(&t, event).await;
    assert_eq!(
        (
            s["due"].as_u64(),
            s["verified"].as_u64(),
            s["not_found"].as_u64()
        ),
        (Some(2), Some(2), Some(0)),
        "token-refresh-manual.json: both chosen mailboxes are checked although not due: {s}"
    );
    // as shipped, the sample's ids name no mailbox: accepted, counted as not found
    let s = refresh(&t, sample_json("token-refresh-manual.json", &[])).await;
    assert_eq!(s["not_found"], 2, "{s}");
}

/// `[workspace.metadata.lambda.watch.router]` in Cargo.toml (what `cargo lambda watch`
/// serves on its HTTP port) maps every deployed route to the function that owns it.
#[test]
fn cargo_lambda_watch_router_is_the_routes() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--offline",
            "--format-version",
            "1",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
    let router = meta["metadata"]["lambda"]["watch"]["router"]
        .as_object()
        .expect("[workspace.metadata.lambda.watch.router] in Cargo.toml");
    let mut served = BTreeSet::new();
    for (path, routes) in router {
        for r in routes.as_array().expect("a list of { method, function }") {
            served.insert((
                r["method"].as_str().expect("method").to_owned(),
                path.clone(),
                r["function"].as_str().expect("function").to_owned(),
            ));
        }
    }
    let deployed: BTreeSet<(String, String, String)> = ROUTES
        .iter()
        .filter(|r| r.function != Function::LocalServer)
        .map(|r| {
            (
                r.method.to_owned(),
                r.path.to_owned(),
                r.function.name().to_owned(),
            )
        })
        .collect();
    assert_eq!(served, deployed, "Cargo.toml's watch router vs api::ROUTES");
}
