//! The OAuth 2.0 authorization flow of issue 3, end to end through the real HTTP routes
//! against the real peers (oauth2-mock-server as Entra ID, smtp-server as Exchange Online):
//! authorize-start, the provider's redirect, oauth-callback, the SMTP verification, and
//! `POST /mailboxes/{id}/verify`. What is asserted is what a person sees (HTTP status, the
//! callback page, the mailbox's status fields), what is (not) in the secret store, and what
//! the peers saw.

use std::collections::HashMap;

use base64::Engine;
use outgoing_mail_tests::outgoing_mail::domain::Sensitive;
use outgoing_mail_tests::outgoing_mail::ports::{AuthState, MailboxSecret};
use outgoing_mail_tests::{
    Backend, TestApp, captured_logs, follow_provider, oauth_mailbox, oauth_stats, peer_env,
    smtp_stats, test_user,
};
use serde_json::{Value, json};
use sha2::Digest;

const B64URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

// ------------------------------------------------------------------------------- helpers

/// `base` with the fields of `overrides` replaced.
fn with(mut base: Value, overrides: Value) -> Value {
    let o = base.as_object_mut().expect("object");
    for (k, v) in overrides.as_object().expect("object") {
        o.insert(k.clone(), v.clone());
    }
    base
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

fn timestamp(v: &Value, key: &str) -> time::OffsetDateTime {
    time::OffsetDateTime::parse(
        str_of(v, key),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap_or_else(|e| panic!("{key} is not RFC 3339 ({e}): {v}"))
}

fn query(url: &str) -> HashMap<String, String> {
    url::Url::parse(url)
        .expect("absolute URL")
        .query_pairs()
        .into_owned()
        .collect()
}

/// The URL with query parameter `name` set to `value` (or removed when `None`).
fn set_param(url: &str, name: &str, value: Option<&str>) -> String {
    let mut u = url::Url::parse(url).expect("absolute URL");
    let pairs: Vec<(String, String)> = u
        .query_pairs()
        .into_owned()
        .filter(|(k, _)| k != name)
        .collect();
    {
        let mut q = u.query_pairs_mut();
        q.clear();
        for (k, v) in &pairs {
            q.append_pair(k, v);
        }
        if let Some(v) = value {
            q.append_pair(name, v);
        }
    }
    u.to_string()
}

/// The claims of a JWT (no signature check: the SMTP peer does that).
fn jwt_claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&B64URL.decode(payload).expect("base64url")).expect("JSON claims")
}

/// Create the mailbox, POST authorize, and return (id, authorization URL, callback URL the
/// provider redirected to). The callback is not visited.
async fn start(t: &TestApp, mailbox: Value) -> (String, String, String) {
    let created = t.create(mailbox).await;
    let id = str_of(&created, "id").to_owned();
    let url = authorization_url(t, &id).await;
    let callback = follow_provider(&t.http, &url).await;
    (id, url, callback)
}

async fn authorization_url(t: &TestApp, id: &str) -> String {
    let (status, v) = t
        .call("POST", &format!("/mailboxes/{id}/authorize"), None)
        .await;
    assert_eq!(status, 200, "authorize-start: {v}");
    str_of(&v, "authorization_url").to_owned()
}

/// Create and authorize; (id, callback status, page, mailbox after).
async fn create_and_authorize(t: &TestApp, mailbox: Value) -> (String, u16, String, Value) {
    let created = t.create(mailbox).await;
    let id = str_of(&created, "id").to_owned();
    let (status, page, after) = t.authorize(&id).await;
    (id, status, page, after)
}

fn tokens_of(secret: &Option<MailboxSecret>) -> (Option<String>, Option<String>) {
    let s = secret.as_ref();
    (
        s.and_then(|s| s.refresh_token.as_ref())
            .map(|x| x.expose().to_owned()),
        s.and_then(|s| s.access_token.as_ref())
            .map(|x| x.expose().to_owned()),
    )
}

/// No token was written for the mailbox, and the client secret is still there.
async fn assert_no_tokens_stored(t: &TestApp, id: &str, client_secret: &str) {
    let secret = t.secret(id).await;
    assert_eq!(
        tokens_of(&secret),
        (None, None),
        "no token may be stored for {id}"
    );
    let s = secret.expect("the client secret is still stored");
    assert!(s.access_token_expires_at.is_none());
    assert_eq!(
        s.client_secret.as_ref().map(Sensitive::expose),
        Some(client_secret)
    );
}

fn assert_not_verified(mailbox: &Value, reason: &str) {
    assert_eq!(mailbox["status"], "not_verified", "{mailbox}");
    assert_eq!(mailbox["status_reason"], reason, "{mailbox}");
    assert!(mailbox["last_verified_at"].is_null(), "{mailbox}");
}

/// The callback page of a failed authorization: says so, names the reason and what to do.
fn assert_failure_page(status: u16, page: &str, mailbox: &Value) {
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("The mailbox is not verified"), "{page}");
    let reason = str_of(mailbox, "status_reason");
    assert!(page.contains(reason), "the page names `{reason}`: {page}");
    let message = str_of(mailbox, "status_message")
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    assert!(
        page.contains(&message),
        "the page says what to do ({message}): {page}"
    );
}

/// Every item of the test's DynamoDB table, printed.
async fn dynamo_dump(t: &TestApp) -> String {
    let table = t.stores.table.as_deref().expect("AWS backend");
    let sdk = outgoing_mail_tests::aws_sdk_config().await;
    let client = aws_sdk_dynamodb::Client::new(&sdk);
    let mut all = Vec::new();
    let mut start: Option<HashMap<String, aws_sdk_dynamodb::types::AttributeValue>> = None;
    loop {
        let out = client
            .scan()
            .table_name(table)
            .consistent_read(true)
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .expect("scan the table in moto");
        all.extend(out.items().iter().cloned());
        match out.last_evaluated_key() {
            Some(k) if !k.is_empty() => start = Some(k.clone()),
            _ => break,
        }
    }
    format!("{all:?}")
}

fn assert_absent(what: &str, haystack: &str, secrets: &[(&str, &str)]) {
    for (name, value) in secrets {
        assert!(
            !haystack.contains(value),
            "the {name} appears in {what}: …{}…",
            haystack
                .find(value)
                .map(|i| &haystack[i.saturating_sub(80)..(i + value.len() + 20).min(haystack.len())])
                .unwrap_or_default()
        );
    }
}

/// Neither the mailbox's secrets nor the SMTP AUTH strings built from them appear in `texts`
/// (pages, API responses) or in the captured logs.
async fn assert_secrets_not_shown(t: &TestApp, id: &str, user: &str, texts: &[&str]) {
    let secret = t.secret(id).await.unwrap_or_default();
    let mut secrets: Vec<(&str, String)> = Vec::new();
    for (name, value) in [
        ("refresh token", &secret.refresh_token),
        ("access token", &secret.access_token),
        ("client secret", &secret.client_secret),
        ("password", &secret.password),
    ] {
        if let Some(v) = value {
            secrets.push((name, v.expose().to_owned()));
        }
    }
    assert!(!secrets.is_empty(), "nothing to look for");
    let b64 = base64::engine::general_purpose::STANDARD;
    if let Some(a) = &secret.access_token {
        let xoauth2 = format!("user={user}\x01auth=Bearer {}\x01\x01", a.expose());
        secrets.push(("XOAUTH2 response", b64.encode(xoauth2)));
    }
    if let Some(p) = &secret.password {
        secrets.push((
            "AUTH PLAIN response",
            b64.encode(format!("\0{user}\0{}", p.expose())),
        ));
        secrets.push(("AUTH LOGIN password", b64.encode(p.expose())));
    }
    let secrets: Vec<(&str, &str)> = secrets.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let (_, one) = t.call("GET", &format!("/mailboxes/{id}"), None).await;
    let (_, list) = t.call("GET", "/mailboxes", None).await;
    for text in texts
        .iter()
        .copied()
        .chain([one.to_string().as_str(), list.to_string().as_str()])
    {
        assert_absent("a page or API response", text, &secrets);
    }
    assert_absent("the logs", &captured_logs(), &secrets);
}

async fn stat(client_id: &str, key: &str) -> u64 {
    let s = oauth_stats(client_id).await;
    s[key]
        .as_u64()
        .unwrap_or_else(|| panic!("oauth stats {key}: {s}"))
}

async fn smtp_stat(user: &str, key: &str) -> u64 {
    let s = smtp_stats(user).await;
    s[key]
        .as_u64()
        .unwrap_or_else(|| panic!("smtp stats {key}: {s}"))
}

fn port(var: &str) -> u16 {
    peer_env(var).parse().expect("port number")
}

// ----------------------------------------------------------------------------- happy path

async fn happy_path(backend: Backend) {
    let t = TestApp::spawn(backend).await;
    let user = test_user("");
    let mailbox = with(
        oauth_mailbox(&user, "happy"),
        json!({"extra_authorize_params": {"prompt": "select_account", "domain_hint": "tenant.test"}}),
    );
    let client_id = str_of(&mailbox, "client_id").to_owned();
    let client_secret = str_of(&mailbox, "client_secret").to_owned();
    let mut responses: Vec<String> = Vec::new();

    let (status, created) = t.call("POST", "/mailboxes", Some(mailbox)).await;
    assert_eq!(status, 201, "{created}");
    responses.push(created.to_string());
    let id = str_of(&created, "id").to_owned();
    assert_eq!(created["status"], "pending_authorization");
    assert_eq!(created["client_secret_set"], true);

    // authorize-start
    let (status, started) = t
        .call("POST", &format!("/mailboxes/{id}/authorize"), None)
        .await;
    assert_eq!(status, 200, "{started}");
    responses.push(started.to_string());
    let url = str_of(&started, "authorization_url").to_owned();
    assert!(
        url.starts_with(&format!("{}/authorize?", peer_env("OM_TEST_OAUTH_URL"))),
        "{url}"
    );
    let q = query(&url);
    let redirect_uri = format!("{}/oauth/callback", t.base);
    assert_eq!(q.get("client_id"), Some(&client_id), "{url}");
    assert_eq!(q.get("response_type").map(String::as_str), Some("code"));
    assert_eq!(q.get("redirect_uri"), Some(&redirect_uri), "{url}");
    assert_eq!(
        q.get("scope").map(String::as_str),
        Some("https://outlook.office.com/SMTP.Send offline_access openid email profile")
    );
    assert_eq!(q.get("login_hint"), Some(&user));
    assert_eq!(q.get("prompt").map(String::as_str), Some("select_account"));
    assert_eq!(
        q.get("domain_hint").map(String::as_str),
        Some("tenant.test")
    );
    assert_eq!(
        q.get("code_challenge_method").map(String::as_str),
        Some("S256")
    );
    let state = q.get("state").expect("state").clone();
    let state_bytes = B64URL.decode(&state).expect("state is base64url");
    assert!(state_bytes.len() >= 16, "state carries ≥128 bits: {state}");
    let challenge = q.get("code_challenge").expect("code_challenge").clone();
    assert_eq!(B64URL.decode(&challenge).map(|b| b.len()), Ok(32));

    // server side: the state is bound to tenant, mailbox and provider, lives 10 minutes,
    // and keeps the PKCE verifier whose S256 is the challenge
    let stored = t
        .app
        .states
        .take_state(&state)
        .await
        .expect("state store")
        .expect("the state is stored server-side");
    assert_eq!(stored.mailbox_id.as_str(), id);
    assert_eq!(stored.tenant, t.tenant);
    assert_eq!(stored.client_id, client_id);
    assert_eq!(
        stored.token_url,
        format!("{}/token", peer_env("OM_TEST_OAUTH_URL"))
    );
    assert_eq!(stored.redirect_uri, redirect_uri);
    assert_eq!(
        stored.expires_at - stored.created_at,
        time::Duration::minutes(10)
    );
    let verifier = stored.pkce_verifier.expose().to_owned();
    assert!(
        (43..=128).contains(&verifier.len())
            && verifier
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b)),
        "RFC 7636 verifier"
    );
    assert_eq!(
        B64URL.encode(sha2::Sha256::digest(verifier.as_bytes())),
        challenge
    );
    t.app.states.put_state(&stored).await.expect("put back");

    // the admin signs in; the provider redirects to the callback
    let callback = follow_provider(&t.http, &url).await;
    assert!(callback.starts_with(&redirect_uri), "{callback}");
    assert_eq!(query(&callback).get("state"), Some(&state));
    let (status, page) = t.get_page(&callback).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("The mailbox is verified"), "{page}");
    assert!(page.contains(&user), "{page}");
    responses.push(page);

    let (status, after) = t.call("GET", &format!("/mailboxes/{id}"), None).await;
    assert_eq!(status, 200);
    responses.push(after.to_string());
    assert_eq!(after["status"], "verified", "{after}");
    assert!(after["status_reason"].is_null(), "{after}");
    assert!(after["last_verified_at"].is_string(), "{after}");
    assert!(after["authorized_at"].is_string(), "{after}");
    let (_, list) = t.call("GET", "/mailboxes", None).await;
    responses.push(list.to_string());
    let (status, verified_again) = t
        .call("POST", &format!("/mailboxes/{id}/verify"), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(verified_again["status"], "verified", "{verified_again}");
    responses.push(verified_again.to_string());

    // the secret store holds the tokens and the client secret, in one secret
    let secret = t.secret(&id).await.expect("secret");
    let refresh = secret
        .refresh_token
        .as_ref()
        .expect("refresh token")
        .expose();
    let access = secret.access_token.as_ref().expect("access token").expose();
    assert!(refresh.starts_with("rt."), "the peer's refresh token");
    let claims = jwt_claims(access);
    assert_eq!(claims["preferred_username"], user.as_str());
    assert_eq!(claims["aud"], "https://outlook.office.com");
    let expires = secret.access_token_expires_at.expect("expiry stored");
    let left = expires - time::OffsetDateTime::now_utc();
    assert!(
        left > time::Duration::minutes(55) && left <= time::Duration::minutes(60),
        "{left}"
    );
    assert_eq!(
        secret.client_secret.as_ref().map(Sensitive::expose),
        Some(client_secret.as_str())
    );

    // the peers: one authorize, one code exchange, no refresh; SMTP AUTH twice, no mail
    let s = oauth_stats(&client_id).await;
    assert_eq!(
        (
            &s["authorize"],
            &s["authorization_code"],
            &s["refresh_token"]
        ),
        (&json!(1), &json!(1), &json!(0)),
        "{s}"
    );
    let m = smtp_stats(&user).await;
    assert_eq!(
        (&m["auth_ok"], &m["messages"]),
        (&json!(2), &json!(0)),
        "{m}"
    );

    // no secret anywhere it must not be
    let secrets = [
        ("refresh token", refresh),
        ("access token", access),
        ("client secret", client_secret.as_str()),
        ("PKCE verifier", verifier.as_str()),
    ];
    for r in &responses {
        assert_absent("an API response", r, &secrets);
    }
    let logs = captured_logs();
    assert!(
        logs.contains("authorization stored"),
        "the logs were captured"
    );
    assert_absent("the logs", &logs, &secrets);
    if backend == Backend::Aws {
        let table = dynamo_dump(&t).await;
        assert!(table.contains(&id), "the scan sees the mailbox: {table}");
        assert!(
            !table.contains("S#"),
            "the used state is gone from the table"
        );
        assert_absent("the DynamoDB table", &table, &secrets);
    }
}

#[tokio::test]
async fn happy_path_to_verified_embedded() {
    happy_path(Backend::Embedded).await;
}

#[tokio::test]
async fn happy_path_to_verified_aws() {
    happy_path(Backend::Aws).await;
}

// -------------------------------------------------------------------------------- state

#[tokio::test]
async fn a_replayed_state_is_refused_and_changes_nothing() {
    for backend in [Backend::Embedded, Backend::Aws] {
        let t = TestApp::spawn(backend).await;
        let user = test_user("");
        let mailbox = oauth_mailbox(&user, "replay");
        let client_id = str_of(&mailbox, "client_id").to_owned();
        let (id, _, callback) = start(&t, mailbox).await;
        let (status, page) = t.get_page(&callback).await;
        assert_eq!(status, 200, "{backend:?}: {page}");
        let before = t.get(&id).await;
        assert_eq!(before["status"], "verified", "{backend:?}");
        let secret_before = t.secret(&id).await;

        let (status, page) = t.get_page(&callback).await;
        assert_eq!(status, 400, "{backend:?}: {page}");
        assert!(page.contains("already used"), "{page}");
        assert!(page.contains("Nothing was changed"), "{page}");
        assert!(!page.contains("is verified"), "{page}");
        assert_eq!(t.get(&id).await, before, "{backend:?}: mailbox unchanged");
        assert_eq!(t.secret(&id).await, secret_before, "{backend:?}");
        assert_eq!(
            stat(&client_id, "authorization_code").await,
            1,
            "{backend:?}: the code was exchanged once"
        );
    }
}

#[tokio::test]
async fn concurrent_callbacks_with_one_state_complete_once() {
    for backend in [Backend::Embedded, Backend::Aws] {
        let t = TestApp::spawn(backend).await;
        let user = test_user("");
        let mailbox = oauth_mailbox(&user, "doubleclick");
        let client_id = str_of(&mailbox, "client_id").to_owned();
        let (id, _, callback) = start(&t, mailbox).await;
        let (a, b, c, d) = tokio::join!(
            t.get_page(&callback),
            t.get_page(&callback),
            t.get_page(&callback),
            t.get_page(&callback)
        );
        let mut statuses = [a.0, b.0, c.0, d.0];
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 400, 400, 400], "{backend:?}");
        assert_eq!(
            stat(&client_id, "authorization_code").await,
            1,
            "{backend:?}"
        );
        assert_eq!(t.get(&id).await["status"], "verified", "{backend:?}");
    }
}

#[tokio::test]
async fn a_code_from_another_sign_in_is_refused_by_pkce() {
    let t = TestApp::spawn(Backend::Embedded).await;
    let (user_a, user_b) = (test_user(""), test_user(""));
    let a = oauth_mailbox(&user_a, "injection");
    let client_id = str_of(&a, "client_id").to_owned();
    let client_secret = str_of(&a, "client_secret").to_owned();
    // a second mailbox of the same app registration, signed in by another person
    let b = with(
        oauth_mailbox(&user_b, "injection"),
        json!({"client_id": client_id}),
    );
    let (id_a, _, callback_a) = start(&t, a).await;
    let (_, _, callback_b) = start(&t, b).await;
    let injected = set_param(
        &callback_a,
        "code",
        Some(query(&callback_b)["code"].as_str()),
    );
    let (status, page) = t.get_page(&injected).await;
    assert_eq!(status, 200, "{page}");
    let after = t.get(&id_a).await;
    assert_not_verified(&after, "authorization_code_invalid");
    assert!(
        str_of(&after, "status_detail").contains("501481"),
        "the provider refused the verifier: {after}"
    );
    assert_no_tokens_stored(&t, &id_a, &client_secret).await;
    assert_eq!(smtp_stat(&user_b, "connections").await, 0);
}

#[tokio::test]
async fn an_expired_state_is_refused_and_changes_nothing() {
    for backend in [Backend::Embedded, Backend::Aws] {
        let t = TestApp::spawn(backend).await;
        let user = test_user("");
        let mailbox = oauth_mailbox(&user, "expired");
        let client_id = str_of(&mailbox, "client_id").to_owned();
        let client_secret = str_of(&mailbox, "client_secret").to_owned();
        let (id, _, callback) = start(&t, mailbox).await;
        // eleven minutes pass between Authorize and the redirect
        let state = query(&callback)["state"].clone();
        let mut stored = t
            .app
            .states
            .take_state(&state)
            .await
            .unwrap()
            .expect("stored state");
        stored.created_at -= time::Duration::minutes(11);
        stored.expires_at -= time::Duration::minutes(11);
        t.app.states.put_state(&stored).await.unwrap();
        let before = t.get(&id).await;

        let (status, page) = t.get_page(&callback).await;
        assert_eq!(status, 400, "{backend:?}: {page}");
        assert!(page.contains("expired"), "{page}");
        assert!(page.contains("Authorize again"), "{page}");
        assert_eq!(t.get(&id).await, before, "{backend:?}: mailbox unchanged");
        assert_eq!(before["status"], "pending_authorization");
        assert_no_tokens_stored(&t, &id, &client_secret).await;
        assert_eq!(
            stat(&client_id, "authorization_code").await,
            0,
            "{backend:?}: an expired state never reaches the token endpoint"
        );
        // and it was consumed
        let (status, _) = t.get_page(&callback).await;
        assert_eq!(status, 400);
    }
}

#[tokio::test]
async fn an_expired_state_inserted_for_a_real_mailbox_is_refused() {
    let t = TestApp::spawn(Backend::Aws).await;
    let user = test_user("");
    let mailbox = oauth_mailbox(&user, "oldstate");
    let client_id = str_of(&mailbox, "client_id").to_owned();
    let created = t.create(mailbox.clone()).await;
    let id = str_of(&created, "id").to_owned();
    let now = time::OffsetDateTime::now_utc();
    let state = B64URL.encode(uuid::Uuid::new_v4().as_bytes());
    t.app
        .states
        .put_state(&AuthState {
            state: Sensitive::new(state.clone()),
            tenant: t.tenant.clone(),
            mailbox_id: outgoing_mail_tests::outgoing_mail::domain::MailboxId::parse(&id).unwrap(),
            token_url: str_of(&mailbox, "token_url").to_owned(),
            client_id: client_id.clone(),
            pkce_verifier: Sensitive::new("v".repeat(43)),
            redirect_uri: format!("{}/oauth/callback", t.base),
            created_at: now - time::Duration::minutes(30),
            expires_at: now - time::Duration::minutes(20),
        })
        .await
        .unwrap();
    let (status, page) = t
        .get_page(&t.url(&format!("/oauth/callback?code=c0de&state={state}")))
        .await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("expired"), "{page}");
    assert_eq!(t.get(&id).await, created);
    assert_eq!(stat(&client_id, "authorization_code").await, 0);
}

#[tokio::test]
async fn a_forged_state_is_refused_and_the_real_one_still_works() {
    let t = TestApp::spawn(Backend::Embedded).await;
    let user = test_user("");
    let mailbox = oauth_mailbox(&user, "forged");
    let client_id = str_of(&mailbox, "client_id").to_owned();
    let client_secret = str_of(&mailbox, "client_secret").to_owned();
    let (id, _, callback) = start(&t, mailbox).await;
    let before = t.get(&id).await;
    let forged = B64URL.encode([7u8; 32]);
    for url in [
        set_param(&callback, "state", Some(&forged)),
        t.url(&format!(
            "/oauth/callback?error=access_denied&error_description=AADSTS65004&state={forged}"
        )),
    ] {
        let (status, page) = t.get_page(&url).await;
        assert_eq!(status, 400, "{url}: {page}");
        assert!(page.contains("not valid"), "{page}");
        assert_eq!(t.get(&id).await, before, "a forged state changes nothing");
    }
    assert_no_tokens_stored(&t, &id, &client_secret).await;
    assert_eq!(stat(&client_id, "authorization_code").await, 0);

    let (status, page) = t.get_page(&callback).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(t.get(&id).await["status"], "verified");
}

#[tokio::test]
async fn a_missing_or_malformed_state_is_refused() {
    let t = TestApp::spawn(Backend::Embedded).await;
    let user = test_user("");
    let mailbox = oauth_mailbox(&user, "nostate");
    let client_id = str_of(&mailbox, "client_id").to_owned();
    let (id, _, callback) = start(&t, mailbox).await;
    let before = t.get(&id).await;
    let long = "a".repeat(600);
    for url in [
        set_param(&callback, "state", None),
        set_param(&callback, "state", Some("")),
        set_param(&callback, "state", Some(&long)),
        t.url("/oauth/callback"),
        t.url("/oauth/callback?error=access_denied"),
    ] {
        let (status, page) = t.get_page(&url).await;
        assert_eq!(status, 400, "{url}: {page}");
        assert!(page.contains("Authorize again"), "{page}");
        assert_eq!(t.get(&id).await, before);
    }
    assert_eq!(stat(&client_id, "authorization_code").await, 0);
    // the real response still completes
    let (status, _) = t.get_page(&callback).await;
    assert_eq!(status, 200);
    assert_eq!(t.get(&id).await["status"], "verified");
}

// ------------------------------------------------------------------- provider-side failures

#[tokio::test]
async fn declined_consent_is_not_verified_and_stores_nothing() {
    let t = TestApp::spawn(Backend::Embedded).await;
    let user = test_user("");
    let mailbox = oauth_mailbox(&user, "decline");
    let client_id = str_of(&mailbox, "client_id").to_owned();
    let client_secret = str_of(&mailbox, "client_secret").to_owned();
    let (id, status, page, after) = create_and_authorize(&t, mailbox).await;
    assert_not_verified(&after, "consent_declined");
    assert!(
        str_of(&after, "status_message").contains("Authorize again"),
        "{after}"
    );
    assert!(
        str_of(&after, "status_detail").contains("access_denied"),
        "the provider's words are kept: {after}"
    );
    assert_failure_page(status, &page, &after);
    assert_no_tokens_stored(&t, &id, &client_secret).await;
    assert_eq!(stat(&client_id, "authorization_code").await, 0);
    assert_eq!(smtp_stat(&user, "connections").await, 0);
}

#[tokio::test]
async fn a_different_account_is_refused_and_its_tokens_discarded() {
    let t = TestApp::spawn(Backend::Aws).await;
    let user = test_user("");
    let mailbox = oauth_mailbox(&user, "wrongaccount");
    let client_id = str_of(&mailbox, "client_id").to_owned();
    let client_secret = str_of(&mailbox, "client_secret").to_owned();
    let (id, status, page, after) = create_and_authorize(&t, mailbox).await;
    assert_not_verified(&after, "wrong_account");
    assert!(
        str_of(&after, "status_detail").contains("someone.else@elsewhere.test"),
        "says who signed in: {after}"
    );
    assert_failure_page(status, &page, &after);
    assert_no_tokens_stored(&t, &id, &client_secret).await;
    assert_eq!(stat(&client_id, "authorization_code").await, 1);
    assert_eq!(
        smtp_stat("someone.else@elsewhere.test", "connections").await
            + smtp_stat(&user, "connections").await,
        0,
        "the foreign token was never used"
    );
}

#[tokio::test]
async fn no_refresh_token_names_offline_access() {
    let t = TestApp::spawn(Backend::Embedded).await;
    let user = test_user("");
    let mailbox = oauth_mailbox(&user, "norefresh");
    let client_secret = str_of(&mailbox, "client_secret").to_owned();
    let (id, status, page, after) = create_and_authorize(&t, mailbox).await;
    assert_not_verified(&after, "no_refresh_token");
    assert!(
        str_of(&after, "status_message").contains("offline_access"),
        "{after}"
    );
    assert_failure_page(status, &page, &after);
    assert_no_tokens_stored(&t, &id, &client_secret).await;
}

#[tokio::test]
async fn an_expired_client_secret_says_how_to_make_a_new_one() {
    let t = TestApp::spawn(Backend::Embedded).await;
    let user = test_user("");
    let mailbox = oauth_mailbox(&user, "expiredsecret");
    let client_secret = str_of(&mailbox, "client_secret").to_owned();
    let (id, status, page, after) = create_and_authorize(&t, mailbox).await;
    assert_not_verified(&after, "client_secret_expired");
    let message = str_of(&after, "status_message");
    assert!(message.contains("create a new client secret"), "{after}");
    assert!(message.contains("Certificates & secrets"), "{after}");
    assert!(
        str_of(&after, "status_detail").contains("AADSTS7000222"),
        "{after}"
    );
    assert_failure_page(status, &page, &after);
    assert_no_tokens_stored(&t, &id, &client_secret).await;
    assert_absent(
        "the page",
        &page,
        &[("client secret", client_secret.as_str())],
    );
}

#[tokio::test]
async fn a_wrong_client_secret_asks_for_the_secret_value() {
    let t = TestApp::spawn(Backend::Embedded).await;
    let user = test_user("");
    let mailbox = with(
        oauth_mailbox(&user, "badsecret"),
        json!({"client_secret": "wrong-secret"}),
    );
    let (id, status, page, after) = create_and_authorize(&t, mailbox).await;
    assert_not_verified(&after, "invalid_client_secret");
    assert!(
        str_of(&after, "status_message").contains("not its Secret ID"),
        "{after}"
    );
    assert_failure_page(status, &page, &after);
    assert_no_tokens_stored(&t, &id, "wrong-secret").await;
}

#[tokio::test]
async fn an_unavailable_token_endpoint_keeps_the_mailbox_pending() {
    let t = TestApp::spawn(Backend::Embedded).await;
    let user = test_user("");
    let mailbox = oauth_mailbox(&user, "unavailable");
    let client_id = str_of(&mailbox, "client_id").to_owned();
    let client_secret = str_of(&mailbox, "client_secret").to_owned();
    let (id, status, page, after) = create_and_authorize(&t, mailbox).await;
    assert!((500..600).contains(&status), "{status}: {page}");
    assert!(page.contains("unavailable"), "{page}");
    assert!(page.contains("Click Authorize again"), "{page}");
    assert!(page.contains("503"), "the page names what happened: {page}");
    assert!(page.contains("The mailbox was not changed"), "{page}");
    assert!(
        !page.contains("retried automatically"),
        "nothing retries an interrupted sign-in: {page}"
    );
    assert_eq!(after["status"], "pending_authorization", "{after}");
    assert!(after["status_reason"].is_null(), "{after}");
    assert_no_tokens_stored(&t, &id, &client_secret).await;
    assert_eq!(stat(&client_id, "authorization_code").await, 1);
}

#[tokio::test]
async fn a_token_endpoint_that_does_not_answer_times_out_with_a_clear_page() {
    let t = TestApp::spawn(Backend::Embedded).await;
    let user = test_user("");
    let mailbox = oauth_mailbox(&user, "slow");
    let client_secret = str_of(&mailbox, "client_secret").to_owned();
    let began = std::time::Instant::now();
    let (id, status, page, after) = create_and_authorize(&t, mailbox).await;
    assert!(
        began.elapsed() < std::time::Duration::from_secs(15),
        "the token request is bounded by OUTGOING_MAIL_TOKEN_TIMEOUT_SECS (5 s), not the peer's 20 s"
    );
    assert_eq!(status, 502, "{page}");
    assert!(page.contains("timed out"), "{page}");
    assert!(page.contains("Click Authorize again"), "{page}");
    assert_eq!(after["status"], "pending_authorization", "{after}");
    assert_no_tokens_stored(&t, &id, &client_secret).await;
}

#[tokio::test]
async fn a_transient_provider_error_in_the_redirect_keeps_the_status() {
    let t = TestApp::spawn(Backend::Embedded).await;
    let user = test_user("");
    let mailbox = oauth_mailbox(&user, "busy");
    let client_id = str_of(&mailbox, "client_id").to_owned();
    let client_secret = str_of(&mailbox, "client_secret").to_owned();
    let created = t.create(mailbox).await;
    let id = str_of(&created, "id").to_owned();
    for (error, title) in [
        ("temporarily_unavailable", "unavailable"),
        ("server_error", "unavailable"),
        ("slow_down", "busy"),
    ] {
        let callback = follow_provider(&t.http, &authorization_url(&t, &id).await).await;
        let url = set_param(&set_param(&callback, "code", None), "error", Some(error));
        let url = set_param(
            &url,
            "error_description",
            Some("AADSTS90033: A transient error has occurred. Please try again."),
        );
        let (status, page) = t.get_page(&url).await;
        assert_eq!(status, 502, "{error}: {page}");
        assert!(page.contains(title), "{error}: {page}");
        assert!(page.contains("Click Authorize again"), "{error}: {page}");
        assert!(!page.contains("retried automatically"), "{error}: {page}");
        assert!(page.contains(error), "the provider's words: {page}");
        let after = t.get(&id).await;
        assert_eq!(after["status"], "pending_authorization", "{error}: {after}");
        assert!(after["status_reason"].is_null(), "{error}: {after}");
    }
    assert_no_tokens_stored(&t, &id, &client_secret).await;
    assert_eq!(stat(&client_id, "authorization_code").await, 0);
}

#[tokio::test]
async fn provider_text_on_the_page_is_escaped() {
    let t = TestApp::spawn(Backend::Embedded).await;
    let user = test_user("");
    let (id, _, callback) = start(&t, oauth_mailbox(&user, "xss")).await;
    let url = set_param(&callback, "code", None);
    let url = set_param(&url, "error", Some("access_denied"));
    let url = set_param(
        &url,
        "error_description",
        Some("<script>alert(document.cookie)</script><img src=x onerror=alert(1)>"),
    );
    let (status, page) = t.get_page(&url).await;
    assert_eq!(status, 200, "{page}");
    assert!(!page.contains("<script>alert"), "{page}");
    assert!(!page.contains("<img"), "{page}");
    assert!(page.contains("&lt;script&gt;"), "shown as text: {page}");
    assert_not_verified(&t.get(&id).await, "consent_declined");
}

#[tokio::test]
async fn a_mailbox_deleted_during_the_sign_in_gets_nothing_stored() {
    let t = TestApp::spawn(Backend::Aws).await;
    let user = test_user("");
    let mailbox = oauth_mailbox(&user, "deleted");
    let client_id = str_of(&mailbox, "client_id").to_owned();
    let (id, _, callback) = start(&t, mailbox).await;
    let (status, _) = t.call("DELETE", &format!("/mailboxes/{id}"), None).await;
    assert_eq!(status, 204);
    let (status, page) = t.get_page(&callback).await;
    assert_eq!(status, 404, "{page}");
    assert!(page.contains("deleted"), "{page}");
    assert!(t.secret(&id).await.is_none(), "no secret re-created");
    assert_eq!(t.mailbox_count().await, 0);
    assert_eq!(stat(&client_id, "authorization_code").await, 0);
}

// ------------------------------------------------------------------------------- SMTP

#[tokio::test]
async fn smtp_auth_disabled_for_the_mailbox() {
    let t = TestApp::spawn(Backend::Embedded).await;
    let user = test_user("smtpdisabled");
    let mailbox = oauth_mailbox(&user, "smtpoff");
    let client_id = str_of(&mailbox, "client_id").to_owned();
    let (id, status, page, after) = create_and_authorize(&t, mailbox).await;
    assert_not_verified(&after, "smtp_auth_disabled");
    assert!(
        str_of(&after, "status_message").contains("re-authorizing does not help"),
        "{after}"
    );
    assert!(
        str_of(&after, "status_detail").contains("5.7.139"),
        "{after}"
    );
    assert_failure_page(status, &page, &after);
    // re-authorizing does not help, so the authorization is kept for a later Verify
    assert!(tokens_of(&t.secret(&id).await).0.is_some());
    assert_eq!(
        stat(&client_id, "refresh_token").await,
        0,
        "no pointless refresh"
    );
    assert_secrets_not_shown(&t, &id, &user, &[&page]).await;
}

#[tokio::test]
async fn security_defaults_block_smtp_auth() {
    let t = TestApp::spawn(Backend::Embedded).await;
    let user = test_user("securitydefaults");
    let (_, status, page, after) =
        create_and_authorize(&t, oauth_mailbox(&user, "secdefaults")).await;
    assert_not_verified(&after, "security_policy");
    assert!(
        str_of(&after, "status_message").contains("administrator"),
        "{after}"
    );
    assert_failure_page(status, &page, &after);
}

#[tokio::test]
async fn a_token_without_smtp_send_is_rejected_after_one_refresh() {
    let t = TestApp::spawn(Backend::Embedded).await;
    let user = test_user("");
    let mailbox = with(
        oauth_mailbox(&user, "nosmtpscope"),
        json!({"scopes": ["offline_access", "openid", "email", "profile"]}),
    );
    let client_id = str_of(&mailbox, "client_id").to_owned();
    let (id, status, page, after) = create_and_authorize(&t, mailbox).await;
    assert_not_verified(&after, "token_rejected");
    assert!(
        str_of(&after, "status_message").contains("SMTP.Send"),
        "{after}"
    );
    assert!(str_of(&after, "status_detail").contains("5.7.3"), "{after}");
    assert_failure_page(status, &page, &after);
    assert_eq!(
        stat(&client_id, "refresh_token").await,
        1,
        "exactly one refresh"
    );
    assert_eq!(smtp_stat(&user, "auth_failed").await, 2);
    assert_eq!(smtp_stat(&user, "auth_ok").await, 0);
    assert_secrets_not_shown(&t, &id, &user, &[&page]).await;
}

#[tokio::test]
async fn an_unreachable_smtp_server_is_connection_failed() {
    let t = TestApp::spawn(Backend::Embedded).await;
    let user = test_user("");
    let mailbox = with(
        oauth_mailbox(&user, "smtpdown"),
        json!({"smtp_port": port("OM_TEST_DEAD_PORT")}),
    );
    let (id, status, page, after) = create_and_authorize(&t, mailbox).await;
    assert_not_verified(&after, "connection_failed");
    assert!(
        str_of(&after, "status_message").contains("could not be reached"),
        "{after}"
    );
    assert_failure_page(status, &page, &after);
    // the authorization itself succeeded: Verify can be retried once the server is back
    assert!(tokens_of(&t.secret(&id).await).0.is_some());
}

#[tokio::test]
async fn a_server_without_starttls_gets_no_credentials() {
    let t = TestApp::spawn(Backend::Embedded).await;
    let user = test_user("");
    let mailbox = with(
        oauth_mailbox(&user, "nostarttls"),
        json!({"smtp_port": port("OM_TEST_SMTP_PLAIN_PORT"), "smtp_security": "starttls"}),
    );
    let (_, status, page, after) = create_and_authorize(&t, mailbox).await;
    assert_not_verified(&after, "tls_required");
    assert!(
        str_of(&after, "status_message").contains("STARTTLS"),
        "{after}"
    );
    assert_failure_page(status, &page, &after);
    let s = smtp_stats(&user).await;
    assert_eq!(
        (&s["connections"], &s["auth_ok"], &s["auth_failed"]),
        (&json!(0), &json!(0), &json!(0)),
        "no AUTH in clear text: {s}"
    );
}

/// Like `TestApp::spawn`, but the app does not trust the peers' throwaway CA.
async fn spawn_without_test_ca() -> TestApp {
    use outgoing_mail_tests::outgoing_mail::api::{ALL_FUNCTIONS, router};
    use outgoing_mail_tests::outgoing_mail::app::{App, Tenancy};
    use outgoing_mail_tests::outgoing_mail::domain::TenantId;
    outgoing_mail_tests::capture_logs();
    let stores = outgoing_mail_tests::TestStores::new(Backend::Embedded).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut settings = outgoing_mail_tests::settings(&[("OUTGOING_MAIL_PUBLIC_URL", base.clone())]);
    settings.extra_ca = None;
    let tenant = TenantId::parse("local").unwrap();
    let app = App::with_stores(
        &settings,
        Tenancy::AdminToken {
            token: Sensitive::new(outgoing_mail_tests::ADMIN_TOKEN),
            tenant: tenant.clone(),
        },
        stores.stores(),
    )
    .unwrap();
    let service = router(app.clone(), ALL_FUNCTIONS);
    tokio::spawn(async move {
        let _ = axum::serve(listener, service).await;
    });
    TestApp {
        base,
        token: outgoing_mail_tests::ADMIN_TOKEN.into(),
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        app,
        tenant,
        stores,
        backend: Backend::Embedded,
    }
}

#[tokio::test]
async fn an_untrusted_smtp_certificate_is_a_tls_failure_and_gets_no_token() {
    let t = spawn_without_test_ca().await;
    for (security, port_var) in [
        ("starttls", "OM_TEST_SMTP_PORT"),
        ("tls", "OM_TEST_SMTP_TLS_PORT"),
    ] {
        let user = test_user("");
        let mailbox = with(
            oauth_mailbox(&user, "untrusted"),
            json!({"smtp_security": security, "smtp_port": port(port_var)}),
        );
        let (_, status, page, after) = create_and_authorize(&t, mailbox).await;
        assert_not_verified(&after, "tls_failed");
        assert!(
            str_of(&after, "status_detail").contains("certificate"),
            "{security}: {after}"
        );
        assert!(
            str_of(&after, "status_message").contains("TLS"),
            "{security}: {after}"
        );
        assert_failure_page(status, &page, &after);
        assert_eq!(
            smtp_stat(&user, "connections").await,
            0,
            "{security}: no AUTH over an unverified connection"
        );
    }
}

#[tokio::test]
async fn implicit_tls_against_a_starttls_port_says_which_setting_to_use() {
    let t = TestApp::spawn(Backend::Embedded).await;
    let user = test_user("");
    let mailbox = with(
        oauth_mailbox(&user, "wrongmode"),
        json!({"smtp_security": "tls", "smtp_port": port("OM_TEST_SMTP_PORT")}),
    );
    let (_, status, page, after) = create_and_authorize(&t, mailbox).await;
    assert_not_verified(&after, "tls_failed");
    assert!(
        str_of(&after, "status_detail").contains("smtp_security `starttls`"),
        "{after}"
    );
    assert_failure_page(status, &page, &after);
}

#[tokio::test]
async fn implicit_tls_verifies() {
    let t = TestApp::spawn(Backend::Aws).await;
    let user = test_user("");
    let mailbox = with(
        oauth_mailbox(&user, "implicittls"),
        json!({"smtp_port": port("OM_TEST_SMTP_TLS_PORT"), "smtp_security": "tls"}),
    );
    let (_, status, page, after) = create_and_authorize(&t, mailbox).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("The mailbox is verified"), "{page}");
    assert_eq!(after["status"], "verified", "{after}");
    assert_eq!(smtp_stat(&user, "auth_ok").await, 1);
}

// ------------------------------------------------------------------------------ verify

#[tokio::test]
async fn verify_again_uses_the_cached_access_token() {
    let t = TestApp::spawn(Backend::Aws).await;
    let user = test_user("");
    let mailbox = oauth_mailbox(&user, "reverify");
    let client_id = str_of(&mailbox, "client_id").to_owned();
    let (id, _, _, first) = create_and_authorize(&t, mailbox).await;
    assert_eq!(first["status"], "verified", "{first}");
    let secret_before = t.secret(&id).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;

    let (status, v) = t
        .call("POST", &format!("/mailboxes/{id}/verify"), None)
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "verified", "{v}");
    assert!(
        timestamp(&v, "last_verified_at") > timestamp(&first, "last_verified_at"),
        "{v}"
    );
    assert_eq!(stat(&client_id, "refresh_token").await, 0, "no refresh");
    assert_eq!(smtp_stat(&user, "auth_ok").await, 2);
    assert_eq!(t.secret(&id).await, secret_before, "nothing rewritten");
}

#[tokio::test]
async fn verify_before_authorizing_says_to_authorize() {
    let t = TestApp::spawn(Backend::Embedded).await;
    let user = test_user("");
    let mailbox = oauth_mailbox(&user, "neverauthorized");
    let client_id = str_of(&mailbox, "client_id").to_owned();
    let created = t.create(mailbox).await;
    let id = str_of(&created, "id");
    let (status, v) = t
        .call("POST", &format!("/mailboxes/{id}/verify"), None)
        .await;
    assert_eq!(status, 200, "{v}");
    assert_not_verified(&v, "not_authorized");
    assert!(
        str_of(&v, "status_message").contains("Click Authorize"),
        "{v}"
    );
    assert_eq!(smtp_stat(&user, "connections").await, 0);
    assert_eq!(oauth_stats(&client_id).await["refresh_token"], 0);
}

#[tokio::test]
async fn a_short_lived_token_is_refreshed_and_the_rotated_refresh_token_kept() {
    let t = TestApp::spawn(Backend::Aws).await;
    let user = test_user("");
    let mailbox = oauth_mailbox(&user, "shortlived");
    let client_id = str_of(&mailbox, "client_id").to_owned();
    let client_secret = str_of(&mailbox, "client_secret").to_owned();
    let (id, status, page, after) = create_and_authorize(&t, mailbox).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(after["status"], "verified", "{after}");
    // the code exchange's token had 2 s left: it was refreshed before use, once
    assert_eq!(stat(&client_id, "refresh_token").await, 1);
    let (status, v) = t
        .call("POST", &format!("/mailboxes/{id}/verify"), None)
        .await;
    assert_eq!((status, &v["status"]), (200, &json!("verified")), "{v}");
    assert_eq!(
        stat(&client_id, "refresh_token").await,
        1,
        "the refreshed token is cached"
    );
    // the stored refresh token is the newest one: the provider still accepts it
    let refresh = tokens_of(&t.secret(&id).await).0.expect("refresh token");
    let resp = reqwest::Client::new()
        .post(format!("{}/token", peer_env("OM_TEST_OAUTH_URL")))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.as_str()),
            ("client_id", client_id.as_str()),
            ("client_secret", client_secret.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        200,
        "{}",
        resp.text().await.unwrap()
    );
}

// ------------------------------------------------------------------------------- PATCH

#[tokio::test]
async fn patching_authorization_settings_resets_and_drops_tokens() {
    let t = TestApp::spawn(Backend::Aws).await;
    let user = test_user("");
    let mailbox = oauth_mailbox(&user, "patchme");
    let client_secret = str_of(&mailbox, "client_secret").to_owned();
    let (id, _, _, verified) = create_and_authorize(&t, mailbox).await;
    assert_eq!(verified["status"], "verified", "{verified}");
    let path = format!("/mailboxes/{id}");

    // a display field keeps the verification
    let (status, v) = t
        .call("PATCH", &path, Some(json!({"from_name": "Contoso NOC"})))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "verified", "{v}");
    assert_eq!(v["last_verified_at"], verified["last_verified_at"]);
    assert!(tokens_of(&t.secret(&id).await).0.is_some());

    // another app registration invalidates the authorization
    let new_client = format!("other-{}", uuid::Uuid::new_v4().simple());
    let (status, v) = t
        .call("PATCH", &path, Some(json!({"client_id": new_client})))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "pending_authorization", "{v}");
    assert!(v["status_reason"].is_null(), "{v}");
    assert!(str_of(&v, "status_message").contains("Authorize"), "{v}");
    assert_no_tokens_stored(&t, &id, &client_secret).await;
    // verifying now tells the admin to authorize, rather than using old tokens
    let (_, v) = t
        .call("POST", &format!("/mailboxes/{id}/verify"), None)
        .await;
    assert_not_verified(&v, "not_authorized");
}

#[tokio::test]
async fn a_callback_for_changed_settings_is_refused() {
    let oauth = peer_env("OM_TEST_OAUTH_URL");
    let other_token_url = format!(
        "http://localhost:{}/token",
        url::Url::parse(&oauth).unwrap().port().unwrap()
    );
    let changes = [
        json!({"client_id": format!("mixup-other-{}", uuid::Uuid::new_v4().simple())}),
        json!({"token_url": other_token_url}),
    ];
    for change in changes {
        let t = TestApp::spawn(Backend::Embedded).await;
        let user = test_user("");
        let mailbox = oauth_mailbox(&user, "mixup");
        let client_id = str_of(&mailbox, "client_id").to_owned();
        let client_secret = str_of(&mailbox, "client_secret").to_owned();
        let (id, _, callback) = start(&t, mailbox).await;
        let (status, v) = t
            .call("PATCH", &format!("/mailboxes/{id}"), Some(change.clone()))
            .await;
        assert_eq!(status, 200, "{change}: {v}");
        let before = t.get(&id).await;

        let (status, page) = t.get_page(&callback).await;
        assert_eq!(status, 409, "{change}: {page}");
        assert!(page.contains("settings changed"), "{page}");
        assert!(page.contains("Authorize again"), "{page}");
        assert_eq!(t.get(&id).await, before, "{change}: nothing changed");
        assert_eq!(before["status"], "pending_authorization");
        assert_no_tokens_stored(&t, &id, &client_secret).await;
        assert_eq!(
            stat(&client_id, "authorization_code").await,
            0,
            "{change}: the code was not redeemed"
        );
        assert_eq!(smtp_stat(&user, "connections").await, 0);
    }
}

// ------------------------------------------------------------------------ basic and presets

fn basic_mailbox(user: &str, password: &str) -> Value {
    json!({
        "auth": "basic",
        "provider": "custom",
        "username": user,
        "smtp_host": peer_env("OM_TEST_SMTP_HOST"),
        "smtp_port": port("OM_TEST_SMTP_PORT"),
        "smtp_security": "starttls",
        "password": password,
    })
}

#[tokio::test]
async fn a_basic_mailbox_verifies_with_its_password() {
    let t = TestApp::spawn(Backend::Embedded).await;
    let user = test_user("");
    let (status, created) = t
        .call(
            "POST",
            "/mailboxes",
            Some(basic_mailbox(&user, "correct-horse")),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["status"], "pending_verification");
    assert_eq!(created["password_set"], true);
    let id = str_of(&created, "id");

    let (status, v) = t
        .call("POST", &format!("/mailboxes/{id}/authorize"), None)
        .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "not_applicable", "{v}");

    let (status, v) = t
        .call("POST", &format!("/mailboxes/{id}/verify"), None)
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "verified", "{v}");
    assert!(v["last_verified_at"].is_string());
    assert_eq!(smtp_stat(&user, "auth_ok").await, 1);
    let secret = t.secret(id).await.expect("secret");
    assert_eq!(
        secret.password.as_ref().map(Sensitive::expose),
        Some("correct-horse")
    );
    assert_eq!(tokens_of(&Some(secret.clone())), (None, None));
    assert!(secret.client_secret.is_none());
    let (_, list) = t.call("GET", "/mailboxes", None).await;
    for text in [
        created.to_string(),
        v.to_string(),
        list.to_string(),
        captured_logs(),
    ] {
        assert_absent(
            "a response or the logs",
            &text,
            &[("password", "correct-horse")],
        );
    }
}

#[tokio::test]
async fn a_basic_mailbox_with_a_wrong_password_is_credentials_rejected() {
    let t = TestApp::spawn(Backend::Aws).await;
    let user = test_user("");
    let created = t.create(basic_mailbox(&user, "Tr0ub4dor&3")).await;
    let id = str_of(&created, "id");
    let (status, v) = t
        .call("POST", &format!("/mailboxes/{id}/verify"), None)
        .await;
    assert_eq!(status, 200, "{v}");
    assert_not_verified(&v, "credentials_rejected");
    assert!(str_of(&v, "status_message").contains("password"), "{v}");
    assert_eq!(smtp_stat(&user, "auth_failed").await, 1);
    assert_secrets_not_shown(&t, id, &user, &[&v.to_string()]).await;
}

#[tokio::test]
async fn a_basic_mailbox_never_sends_its_password_without_tls() {
    let t = TestApp::spawn(Backend::Embedded).await;
    let user = test_user("");
    let mailbox = with(
        basic_mailbox(&user, "correct-horse"),
        json!({"smtp_port": port("OM_TEST_SMTP_PLAIN_PORT")}),
    );
    let created = t.create(mailbox).await;
    let id = str_of(&created, "id");
    let (_, v) = t
        .call("POST", &format!("/mailboxes/{id}/verify"), None)
        .await;
    assert_not_verified(&v, "tls_required");
    assert_eq!(smtp_stat(&user, "connections").await, 0, "no AUTH sent");
}

#[tokio::test]
async fn an_admin_login_hint_replaces_the_default_one() {
    let t = TestApp::spawn(Backend::Embedded).await;
    let user = test_user("");
    let created = t
        .create(with(
            oauth_mailbox(&user, "hint"),
            json!({"extra_authorize_params": {"login_hint": "delegate@tenant.test"}}),
        ))
        .await;
    let url = authorization_url(&t, str_of(&created, "id")).await;
    let hints: Vec<String> = url::Url::parse(&url)
        .unwrap()
        .query_pairs()
        .filter(|(k, _)| k == "login_hint")
        .map(|(_, v)| v.into_owned())
        .collect();
    assert_eq!(hints, ["delegate@tenant.test"], "{url}");
}

#[tokio::test]
async fn a_microsoft_mailbox_without_client_secret_cannot_start() {
    let t = TestApp::spawn(Backend::Embedded).await;
    let created = t
        .create(json!({
            "provider": "microsoft", "tenant": "contoso.onmicrosoft.com",
            "username": test_user(""), "client_id": "6731de76-14a6-49ae-97bc-6eba6914391e"
        }))
        .await;
    assert_eq!(created["client_secret_set"], false);
    let id = str_of(&created, "id");
    let (status, v) = t
        .call("POST", &format!("/mailboxes/{id}/authorize"), None)
        .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "client_secret_missing", "{v}");
    assert!(
        str_of(&v["error"], "message").contains("client secret"),
        "{v}"
    );
    assert_eq!(t.get(id).await, created, "nothing changed");
}

#[tokio::test]
async fn a_declined_re_authorization_leaves_a_working_mailbox_verified() {
    let t = TestApp::spawn(Backend::Embedded).await;
    let (m, _, _) = t.verified_mailbox("", "reauth", json!({})).await;
    let id = m["id"].as_str().unwrap();
    let before = t.secret(id).await.unwrap();
    let (status, v) = t
        .call("POST", &format!("/mailboxes/{id}/authorize"), None)
        .await;
    assert_eq!(status, 200);
    let url = url::Url::parse(v["authorization_url"].as_str().unwrap()).unwrap();
    let state = url
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    let (status, html) = t
        .get_page(&format!("{}/oauth/callback?error=access_denied&error_description=AADSTS65004%3A+User+declined&state={state}", t.base))
        .await;
    assert_eq!(status, 200);
    assert!(html.contains("still works"), "{html}");
    let after = t.get(id).await;
    assert_eq!(after["status"], "verified", "{after}");
    assert_eq!(
        t.secret(id).await.unwrap(),
        before,
        "the stored authorization is untouched"
    );
}
