//! token-refresh against the peers: only due mailboxes, refresh + rotation, no needless secret
//! writes, transient vs permanent, backoff, concurrency, secret-expiry warnings and alerts.

use outgoing_mail_tests::outgoing_mail::domain::mailbox::{
    CalendarDate, MailboxRecord, MailboxStatus,
};
use outgoing_mail_tests::outgoing_mail::domain::reason::StatusReason;
use outgoing_mail_tests::outgoing_mail::domain::{MailboxId, TenantId};
use outgoing_mail_tests::outgoing_mail::lambda::token_refresh_event;
use outgoing_mail_tests::outgoing_mail::ports::MailboxSecret;
use outgoing_mail_tests::outgoing_mail::service::refresh::{RefreshRequest, parse_event};
use outgoing_mail_tests::*;
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};

async fn run(app: &outgoing_mail_tests::outgoing_mail::app::App) -> Value {
    token_refresh_event(app, json!({}), std::time::Duration::from_secs(60), 8)
        .await
        .expect("run")
}

/// Change a stored mailbox the way time or the outside world would (bypassing the API).
async fn edit(t: &TestApp, id: &str, f: impl FnOnce(&mut MailboxRecord)) -> MailboxRecord {
    let mid = MailboxId::parse(id).unwrap();
    let mut r = t.app.mailboxes.get(&t.tenant, &mid).await.unwrap().unwrap();
    f(&mut r);
    r.state.next_due_at = r.compute_due(&t.app.due_policy);
    t.app.mailboxes.update(&r).await.unwrap()
}

async fn edit_secret(t: &TestApp, id: &str, f: impl FnOnce(&mut MailboxSecret)) {
    let mid = MailboxId::parse(id).unwrap();
    let mut s = t.secret(id).await.unwrap();
    f(&mut s);
    t.app.secrets.put(&t.tenant, &mid, &s).await.unwrap();
    t.app.warm.forget(&(t.tenant.clone(), mid));
}

/// Make the access token expire in `minutes` (secret and mailbox agree).
async fn token_expires_in(t: &TestApp, id: &str, minutes: i64) {
    let at = OffsetDateTime::now_utc() + Duration::minutes(minutes);
    edit_secret(t, id, |s| s.access_token_expires_at = Some(at)).await;
    edit(t, id, |r| r.state.access_token_expires_at = Some(at)).await;
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

#[tokio::test]
async fn a_token_near_expiry_is_refreshed_and_the_rotated_refresh_token_stored() {
    for backend in [Backend::Embedded, Backend::Aws] {
        let t = TestApp::spawn(backend).await;
        let (m, _, client) = t.verified_mailbox("", "job", json!({})).await;
        let id = m["id"].as_str().unwrap();
        token_expires_in(&t, id, 10).await;
        let before = t.secret(id).await.unwrap();
        let s = run(&t.app).await;
        assert_eq!(
            (
                s["due"].as_u64(),
                s["refreshed"].as_u64(),
                s["verified"].as_u64()
            ),
            (Some(1), Some(1), Some(1)),
            "{backend:?} {s}"
        );
        let after = t.secret(id).await.unwrap();
        assert_ne!(
            after.refresh_token, before.refresh_token,
            "rotated refresh token stored"
        );
        assert!(after.access_token_expires_at.unwrap() > now() + Duration::minutes(50));
        assert_eq!(oauth_stats(&client).await["refresh_token"], 1);
        let v = t.get(id).await;
        assert_eq!(v["status"], "verified");
        assert!(v["last_refreshed_at"].is_string() && v["refresh_token_last_used_at"].is_string());
        // nothing is due any more: a second run touches nothing
        let s = run(&t.app).await;
        assert_eq!(s["due"], 0, "{s}");
        assert_eq!(oauth_stats(&client).await["refresh_token"], 1);
    }
}

#[tokio::test]
async fn a_fresh_token_is_not_refreshed_only_reverified() {
    let t = TestApp::spawn(Backend::Aws).await;
    let (m, user, client) = t.verified_mailbox("", "fresh", json!({})).await;
    let id = m["id"].as_str().unwrap();
    let old = now() - Duration::hours(25);
    edit(&t, id, |r| {
        r.state.last_verified_at = Some(old);
        r.state.refresh_token_last_used_at = Some(now() - Duration::hours(1));
    })
    .await;
    let before = t.secret(id).await.unwrap();
    let auths = smtp_stats(&user).await["auth_ok"].as_u64().unwrap();
    let s = run(&t.app).await;
    assert_eq!(
        (s["refreshed"].as_u64(), s["verified"].as_u64()),
        (Some(0), Some(1)),
        "{s}"
    );
    assert_eq!(
        oauth_stats(&client).await["refresh_token"],
        0,
        "no provider call"
    );
    assert_eq!(t.secret(id).await.unwrap(), before, "no secret write");
    assert_eq!(
        smtp_stats(&user).await["auth_ok"].as_u64().unwrap(),
        auths + 1,
        "verified over SMTP"
    );
    let v = t.get(id).await;
    assert!(v["last_verified_at"].as_str().unwrap() > "2026", "{v}");
}

#[tokio::test]
async fn an_idle_refresh_token_is_used_at_least_daily() {
    let t = TestApp::spawn(Backend::Embedded).await;
    let (m, _, client) = t.verified_mailbox("", "idle", json!({})).await;
    let id = m["id"].as_str().unwrap();
    edit(&t, id, |r| {
        r.state.refresh_token_last_used_at = Some(now() - Duration::hours(25))
    })
    .await;
    let s = run(&t.app).await;
    assert_eq!(s["refreshed"], 1, "{s}");
    assert_eq!(oauth_stats(&client).await["refresh_token"], 1);
}

#[tokio::test]
async fn a_token_endpoint_that_is_down_changes_nothing_and_backs_off() {
    let dead = peer_env("OM_TEST_DEAD_PORT");
    let oauth = peer_env("OM_TEST_OAUTH_URL");
    for (label, change) in [
        (
            "connection refused",
            json!({"token_url": format!("http://127.0.0.1:{dead}/token")}),
        ),
        (
            "503",
            json!({"client_id": format!("unavailable-{}", uuid::Uuid::new_v4().simple())}),
        ),
        (
            "slow",
            json!({"client_id": format!("slow-{}", uuid::Uuid::new_v4().simple()), "token_url": format!("{oauth}/token")}),
        ),
    ] {
        let t = TestApp::spawn(Backend::Embedded).await;
        let (m, _, _) = t.verified_mailbox("", "down", json!({})).await;
        let id = m["id"].as_str().unwrap();
        edit(&t, id, |r| {
            if let Some(u) = change.get("token_url").and_then(Value::as_str) {
                r.spec.token_url = Some(
                    outgoing_mail_tests::outgoing_mail::domain::HttpsUrl::parse("t", u).unwrap(),
                );
            }
            if let Some(c) = change.get("client_id").and_then(Value::as_str) {
                r.spec.client_id = Some(c.to_owned());
            }
        })
        .await;
        token_expires_in(&t, id, 10).await;
        let secret_before = t.secret(id).await.unwrap();
        let s = run(&t.app).await;
        assert_eq!(s["transient_failures"], 1, "{label}: {s}");
        let v = t.get(id).await;
        assert_eq!(v["status"], "verified", "{label}: status unchanged: {v}");
        assert_eq!(v["consecutive_failures"], 1, "{label}");
        assert!(
            v["last_error"]
                .as_str()
                .unwrap()
                .starts_with("token_endpoint_unavailable"),
            "{label}: {v}"
        );
        assert_eq!(
            t.secret(id).await.unwrap(),
            secret_before,
            "{label}: tokens kept"
        );
        let r = t
            .app
            .mailboxes
            .get(&t.tenant, &MailboxId::parse(id).unwrap())
            .await
            .unwrap()
            .unwrap();
        assert!(
            r.state.next_due_at.unwrap() >= now() + Duration::minutes(4),
            "{label}: backoff before the next try"
        );
        // backoff grows
        assert!(t.app.due_policy.backoff(3) > t.app.due_policy.backoff(1));
        assert!(t.app.due_policy.backoff(30) <= Duration::hours(4));
        // the next run leaves it alone until then
        assert_eq!(run(&t.app).await["due"], 0, "{label}");
    }
}

#[tokio::test]
async fn invalid_grant_is_permanent_not_verified_with_one_alert() {
    let (env, _) = default_sender_env();
    let t = TestApp::spawn_with(Backend::Embedded, &[env]).await;
    let admin = test_user("admin");
    let (m, _, _) = t
        .verified_mailbox("", "grant", json!({"alert_recipients": [admin]}))
        .await;
    let id = m["id"].as_str().unwrap();
    edit(&t, id, |r| {
        r.spec.client_id = Some(format!("revoked-{}", uuid::Uuid::new_v4().simple()))
    })
    .await;
    token_expires_in(&t, id, 10).await;
    let s = run(&t.app).await;
    assert_eq!(
        (s["newly_broken"].as_u64(), s["alerts_sent"].as_u64()),
        (Some(1), Some(1)),
        "{s}"
    );
    let v = t.get(id).await;
    assert_eq!(
        (v["status"].as_str(), v["status_reason"].as_str()),
        (Some("not_verified"), Some("grant_revoked"))
    );
    assert!(v["status_message"].as_str().unwrap().contains("Authorize"));
    let alerts = messages_for(&admin).await;
    assert_eq!(alerts.len(), 1);
    assert!(alerts[0]["raw"].as_str().unwrap().contains("grant_revoked"));
    // nothing more to do until someone re-authorizes: no further runs touch it, no second alert
    assert_eq!(run(&t.app).await["due"], 0);
    assert_eq!(messages_for(&admin).await.len(), 1);
}

#[tokio::test]
async fn verification_failures_are_classified() {
    let t = TestApp::spawn(Backend::Embedded).await;
    let plain = peer_env("OM_TEST_SMTP_PLAIN_PORT").parse::<u16>().unwrap();
    for (label, reason, change) in [
        ("smtp auth disabled", "smtp_auth_disabled", 0u8),
        ("no starttls", "tls_required", 1u8),
    ] {
        let (m, _, _) = t.verified_mailbox("", "classify", json!({})).await;
        let id = m["id"].as_str().unwrap();
        edit(&t, id, |r| {
            match change {
                0 => {
                    r.spec.username =
                        outgoing_mail_tests::outgoing_mail::domain::EmailAddress::parse(
                            "u",
                            &test_user("smtpdisabled"),
                        )
                        .unwrap()
                }
                _ => r.spec.smtp_port = Some(plain),
            }
            r.state.last_verified_at = Some(now() - Duration::hours(25));
        })
        .await;
        run(&t.app).await;
        let v = t.get(id).await;
        assert_eq!(
            (v["status"].as_str(), v["status_reason"].as_str()),
            (Some("not_verified"), Some(reason)),
            "{label}: {v}"
        );
    }
}

#[tokio::test]
async fn two_runs_at_once_refresh_each_mailbox_once() {
    let t = TestApp::spawn(Backend::Aws).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let (m, _, client) = t.verified_mailbox("", "twice", json!({})).await;
        token_expires_in(&t, m["id"].as_str().unwrap(), 10).await;
        clients.push(client);
    }
    let other = t.sibling().await;
    let (a, b) = tokio::join!(run(&t.app), run(&other));
    let refreshed = a["refreshed"].as_u64().unwrap() + b["refreshed"].as_u64().unwrap();
    assert_eq!(refreshed, 3, "{a} {b}");
    for c in clients {
        let s = oauth_stats(&c).await;
        assert_eq!(
            (s["refresh_token"].as_u64(), s["invalid_grant"].as_u64()),
            (Some(1), Some(0)),
            "{s}"
        );
    }
}

#[tokio::test]
async fn a_secret_expiring_in_five_days_warns_and_alerts_once() {
    let (env, _) = default_sender_env();
    let t = TestApp::spawn_with(Backend::Aws, &[env]).await;
    let admin = test_user("admin");
    let (m, _, _) = t
        .verified_mailbox("", "expiry", json!({"alert_recipients": [admin]}))
        .await;
    let id = m["id"].as_str().unwrap();
    let in_five_days = (now() + Duration::days(5)).date();
    let date = CalendarDate::parse("d", &in_five_days.to_string()).unwrap();
    for _ in 0..3 {
        edit(&t, id, |r| {
            r.spec.client_secret_expires_at = Some(date);
            r.state.last_verified_at = Some(now() - Duration::hours(25));
        })
        .await;
        let s = run(&t.app).await;
        assert_eq!(s["verified"], 1, "{s}");
    }
    let v = t.get(id).await;
    assert_eq!(v["status"], "verified");
    assert_eq!(
        v["status_warnings"][0]["code"], "client_secret_expires_7d",
        "{v}"
    );
    assert!(
        v["status_message"]
            .as_str()
            .unwrap()
            .contains("expires in 5 day"),
        "{v}"
    );
    let alerts = messages_for(&admin).await;
    assert_eq!(alerts.len(), 1, "one alert per threshold, not one per run");
    assert!(
        alerts[0]["raw"]
            .as_str()
            .unwrap()
            .contains("Auto-Submitted: auto-generated")
    );
    // an expired secret is not_verified / client_secret_expired without asking the provider
    let yesterday =
        CalendarDate::parse("d", &(now() - Duration::days(1)).date().to_string()).unwrap();
    edit(&t, id, |r| {
        r.spec.client_secret_expires_at = Some(yesterday);
        r.state.last_verified_at = Some(now() - Duration::hours(25));
    })
    .await;
    run(&t.app).await;
    let v = t.get(id).await;
    assert_eq!(
        (v["status"].as_str(), v["status_reason"].as_str()),
        (Some("not_verified"), Some("client_secret_expired"))
    );
    assert_eq!(
        messages_for(&admin).await.len(),
        2,
        "plus one 'stopped working' alert"
    );
}

#[tokio::test]
async fn returning_to_verified_clears_failures_and_sends_one_resolved_alert() {
    let (env, _) = default_sender_env();
    let t = TestApp::spawn_with(Backend::Embedded, &[env]).await;
    let admin = test_user("admin");
    let (m, _, _) = t
        .verified_mailbox("", "recover", json!({"alert_recipients": [admin]}))
        .await;
    let id = m["id"].as_str().unwrap();
    // the tenant had SMTP AUTH off for a while (the job saw it), and has now switched it on
    edit(&t, id, |r| {
        r.state
            .set_not_verified(StatusReason::SmtpAuthDisabled, Some("535 5.7.139".into()));
        r.state.status_changed_at = Some(now() - Duration::hours(2));
        r.state.alerts_sent = vec![format!(
            "broken:smtp_auth_disabled:{}",
            (now() - Duration::hours(2)).unix_timestamp()
        )];
        r.state.last_verified_at = Some(now() - Duration::hours(25));
    })
    .await;
    let s = run(&t.app).await;
    assert_eq!(s["recovered"], 1, "{s}");
    let v = t.get(id).await;
    assert_eq!(
        (v["status"].as_str(), v["consecutive_failures"].as_u64()),
        (Some("verified"), Some(0))
    );
    let alerts = messages_for(&admin).await;
    assert_eq!(alerts.len(), 1);
    assert!(alerts[0]["raw"].as_str().unwrap().contains("works again"));
}

#[tokio::test]
async fn only_due_mailboxes_are_touched() {
    let t = TestApp::spawn(Backend::Aws).await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(t.verified_mailbox("", "quiet", json!({})).await.2);
    }
    let (m, _, due_client) = t.verified_mailbox("", "due", json!({})).await;
    token_expires_in(&t, m["id"].as_str().unwrap(), 5).await;
    let s = run(&t.app).await;
    assert_eq!(
        (s["due"].as_u64(), s["refreshed"].as_u64()),
        (Some(1), Some(1)),
        "{s}"
    );
    assert_eq!(oauth_stats(&due_client).await["refresh_token"], 1);
    for c in clients {
        assert_eq!(
            oauth_stats(&c).await["refresh_token"],
            0,
            "a mailbox that was not due was touched"
        );
    }
}

#[tokio::test]
async fn a_run_cut_short_leaves_the_rest_for_the_next_run() {
    let t = TestApp::spawn(Backend::Embedded).await;
    let (m, _, _) = t.verified_mailbox("", "cut", json!({})).await;
    let id = m["id"].as_str().unwrap();
    token_expires_in(&t, id, 5).await;
    let s = token_refresh_event(&t.app, json!({}), std::time::Duration::ZERO, 1)
        .await
        .unwrap();
    assert_eq!(
        (
            s["due"].as_u64(),
            s["processed"].as_u64(),
            s["cut_short"].as_bool()
        ),
        (Some(1), Some(0), Some(true)),
        "{s}"
    );
    let s = run(&t.app).await;
    assert_eq!(s["refreshed"], 1, "the next run picks it up: {s}");
}

#[tokio::test]
async fn event_shapes() {
    assert_eq!(parse_event(&json!({})).unwrap(), RefreshRequest::Due);
    assert_eq!(parse_event(&Value::Null).unwrap(), RefreshRequest::Due);
    let classic = json!({"version": "0", "id": "x", "detail-type": "Scheduled Event", "source": "aws.events", "account": "1", "time": "2026-12-04T20:00:00Z", "region": "us-east-1", "resources": [], "detail": {}});
    assert_eq!(parse_event(&classic).unwrap(), RefreshRequest::Due);
    let id = MailboxId::generate();
    let manual = parse_event(&json!({"mailbox_ids": [format!("tenant-a/{id}")]})).unwrap();
    assert_eq!(
        manual,
        RefreshRequest::Chosen(vec![(TenantId::parse("tenant-a").unwrap(), id.clone())])
    );
    let manual =
        parse_event(&json!({"tenant": "tenant-a", "mailbox_ids": [id.to_string()]})).unwrap();
    assert!(matches!(manual, RefreshRequest::Chosen(v) if v.len() == 1));
    assert!(parse_event(&json!({"mailbox_ids": ["mbx_nope"]})).is_err());
    assert!(
        parse_event(&json!({"mailbox_ids": [id.to_string()]})).is_err(),
        "no tenant"
    );
    assert!(parse_event(&json!({"mailbox_ids": []})).is_err());
}

#[tokio::test]
async fn a_manual_run_checks_chosen_mailboxes_even_if_not_due() {
    let t = TestApp::spawn(Backend::Embedded).await;
    let (m, user, _) = t.verified_mailbox("", "manual", json!({})).await;
    let auths = smtp_stats(&user).await["auth_ok"].as_u64().unwrap();
    let event = json!({"mailbox_ids": [format!("local/{}", m["id"].as_str().unwrap())]});
    let s = token_refresh_event(&t.app, event, std::time::Duration::from_secs(30), 4)
        .await
        .unwrap();
    assert_eq!(
        (s["due"].as_u64(), s["verified"].as_u64()),
        (Some(1), Some(1)),
        "{s}"
    );
    assert_eq!(
        smtp_stats(&user).await["auth_ok"].as_u64().unwrap(),
        auths + 1
    );
    let _ = MailboxStatus::Verified;
}

#[tokio::test]
async fn changing_smtp_settings_keeps_the_authorization_and_the_job_reverifies() {
    let t = TestApp::spawn(Backend::Embedded).await;
    let (m, _, client) = t.verified_mailbox("", "smtpfix", json!({})).await;
    let id = m["id"].as_str().unwrap();
    let tls_port = peer_env("OM_TEST_SMTP_TLS_PORT").parse::<u16>().unwrap();
    let (status, v) = t
        .call(
            "PATCH",
            &format!("/mailboxes/{id}"),
            Some(json!({"smtp_port": tls_port, "smtp_security": "tls"})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["status"], "pending_verification",
        "the old verdict no longer holds: {v}"
    );
    assert!(
        t.secret(id).await.unwrap().refresh_token.is_some(),
        "no new sign-in needed for an SMTP change"
    );
    let s = run(&t.app).await;
    assert_eq!(s["verified"], 1, "{s}");
    assert_eq!(t.get(id).await["status"], "verified");
    assert_eq!(
        oauth_stats(&client).await["authorize"],
        1,
        "not re-authorized"
    );
}

#[tokio::test]
async fn alerts_also_go_to_the_webhook_once_per_change() {
    // the test's own receiver (it only records what it is sent)
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, Value)>::new()));
    let sink = received.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    let receiver = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, axum::Json(body): axum::Json<Value>| {
                let sink = sink.clone();
                async move {
                    let key = headers
                        .get("idempotency-key")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    sink.lock().unwrap().push((key, body));
                    "ok"
                }
            },
        ),
    );
    tokio::spawn(async move { axum::serve(listener, receiver).await.unwrap() });

    let (env, _) = default_sender_env();
    let t = TestApp::spawn_with(
        Backend::Embedded,
        &[env, ("OUTGOING_MAIL_ALERT_WEBHOOK_URL", hook)],
    )
    .await;
    let (m, _, _) = t
        .verified_mailbox("", "hook", json!({"alert_recipients": []}))
        .await;
    let id = m["id"].as_str().unwrap();
    edit(&t, id, |r| {
        r.spec.client_id = Some(format!("revoked-{}", uuid::Uuid::new_v4().simple()))
    })
    .await;
    token_expires_in(&t, id, 10).await;
    let s = run(&t.app).await;
    assert_eq!(s["alerts_sent"], 1, "{s}");
    // a later manual run of the same broken mailbox does not alert again
    token_refresh_event(
        &t.app,
        json!({"mailbox_ids": [format!("local/{id}")]}),
        std::time::Duration::from_secs(30),
        2,
    )
    .await
    .unwrap();
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    let (key, body) = &got[0];
    assert_eq!(body["type"], "mailbox.broken");
    assert_eq!(body["mailbox_id"], id);
    assert_eq!(body["status_reason"], "grant_revoked");
    assert!(
        body["status_message"]
            .as_str()
            .unwrap()
            .contains("Authorize")
    );
    assert!(
        key.starts_with(id),
        "idempotency key for the receiver: {key}"
    );
}

#[test]
fn a_plain_http_webhook_outside_loopback_is_refused_at_start_up() {
    let e = outgoing_mail_tests::outgoing_mail::config::Settings::from_lookup(
        outgoing_mail_tests::outgoing_mail::config::Profile::LocalServer,
        |k| {
            (k == "OUTGOING_MAIL_ALERT_WEBHOOK_URL")
                .then(|| "http://hooks.example.com/x".to_owned())
        },
    )
    .unwrap_err();
    assert_eq!(e.var, "OUTGOING_MAIL_ALERT_WEBHOOK_URL");
}

#[test]
fn the_run_budget_follows_the_deadline_and_survives_emulators() {
    use outgoing_mail_tests::outgoing_mail::lambda::run_budget;
    let now = 1_796_400_000_000u64;
    assert_eq!(run_budget(now + 900_000, now).as_secs(), 870);
    assert_eq!(
        run_budget(now + 20_000, now).as_secs(),
        0,
        "less than 30 s left: start nothing"
    );
    // cargo lambda sends a constant, not a timestamp: behave like a 15-minute Lambda
    assert_eq!(run_budget(600_000, now).as_secs(), 870);
}
