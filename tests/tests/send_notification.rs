//! send-notification against the peers: what the SMTP server received, token refresh and
//! rotation under concurrency, idempotency, partial batch failures, fallback, bad input.

use outgoing_mail_tests::outgoing_mail::api::Function;
use outgoing_mail_tests::outgoing_mail::lambda::send_notification_event;
use outgoing_mail_tests::*;
use serde_json::{Value, json};

fn notification(id: &str, to: &str) -> Value {
    json!({
        "id": id, "to": [to], "subject": "Disk almost full on SRV-01",
        "text": "Disk C: is 95% full.", "html": "<html><body><p>Disk <b>C:</b> is 95% full.</p></body></html>",
        "headers": {"X-Entity-Ref-ID": "ticket-4711"}
    })
}

/// A parsed notification from `mailbox` (an API view) to a fresh recipient, with a unique id.
fn from_mailbox(
    mailbox: &Value,
    prefix: &str,
) -> outgoing_mail_tests::outgoing_mail::domain::notification::Notification {
    let mut n = notification(&unique(prefix), &test_user("rcpt"));
    n["mailbox_id"] = mailbox["id"].clone();
    outgoing_mail_tests::outgoing_mail::domain::notification::parse_notification(&n).unwrap()
}

async fn post(t: &TestApp, body: Value) -> (u16, Value) {
    t.call("POST", "/notifications", Some(body)).await
}

fn parse(raw: &str) -> mail_parser::Message<'_> {
    mail_parser::MessageParser::default()
        .parse(raw.as_bytes())
        .expect("parsable message")
}

#[tokio::test]
async fn delivered_from_the_tenants_mailbox_with_from_reply_to_signature_and_alternative_parts() {
    let t = TestApp::spawn(Backend::Embedded).await;
    let (mailbox, user, _) = t.verified_mailbox("", "send", json!({})).await;
    let to = test_user("rcpt");
    let (cc, bcc) = (test_user("cc"), test_user("bcc"));
    let mut n = notification(&unique("n"), &to);
    n["mailbox_id"] = mailbox["id"].clone();
    n["cc"] = json!([cc]);
    n["bcc"] = json!([bcc]);
    let (status, result) = post(&t, n).await;
    assert_eq!(status, 202, "{result}");
    assert_eq!(result["status"], "delivered");
    assert_eq!(result["record"]["delivered_via"], "mailbox");
    assert_eq!(result["record"]["mailbox_id"], mailbox["id"]);
    assert!(
        result["record"]["smtp_response"]
            .as_str()
            .unwrap()
            .starts_with("250")
    );

    let msgs = messages_for(&to).await;
    assert_eq!(msgs.len(), 1);
    let m = &msgs[0];
    assert_eq!(m["auth_method"], "XOAUTH2");
    assert_eq!(
        m["auth_user"].as_str().unwrap().to_lowercase(),
        user.to_lowercase()
    );
    assert_eq!(
        messages_for(&bcc).await.len(),
        1,
        "the Bcc recipient gets it through the envelope"
    );
    let raw = m["raw"].as_str().unwrap();
    assert!(
        !raw.to_lowercase().contains(&bcc.to_lowercase()),
        "Bcc must not appear in the headers"
    );
    let parsed = parse(raw);
    let from = parsed.from().unwrap().first().unwrap();
    assert_eq!(from.name(), Some("Contoso Alerts"));
    assert_eq!(from.address().unwrap().to_lowercase(), user.to_lowercase());
    assert_eq!(
        parsed.reply_to().unwrap().first().unwrap().address(),
        Some("helpdesk@tenant.test")
    );
    assert_eq!(parsed.subject(), Some("Disk almost full on SRV-01"));
    assert!(parsed.date().is_some());
    assert!(
        parsed.message_id().unwrap().ends_with("@tenant.test"),
        "Message-ID on the mailbox's domain"
    );
    assert_eq!(
        result["record"]["message_id"].as_str().unwrap(),
        format!("<{}>", parsed.message_id().unwrap())
    );
    assert!(raw.contains("X-Entity-Ref-ID: ticket-4711"));
    assert!(raw.to_lowercase().contains("multipart/alternative"));
    let text = parsed.body_text(0).unwrap().replace("\r\n", "\n");
    assert!(
        text.contains("Disk C: is 95% full.\n\n-- \nContoso IT\nhttps://contoso.example"),
        "{text:?}"
    );
    let html = parsed.body_html(0).unwrap();
    assert!(html.contains("<div class=\"signature\""), "{html}");
    assert!(
        html.find("signature").unwrap() < html.find("</body>").unwrap(),
        "signature inside the body"
    );
}

#[tokio::test]
async fn an_expired_access_token_is_refreshed_and_the_rotated_refresh_token_stored_first() {
    let t = TestApp::spawn(Backend::Aws).await;
    let (mailbox, _, client_id) = t
        .verified_mailbox("", "expiring", json!({"default": true}))
        .await;
    let id = mailbox["id"].as_str().unwrap();
    assert_eq!(oauth_stats(&client_id).await["refresh_token"], 0);
    t.expire_access_token(id).await;
    let before = t.secret(id).await.unwrap();
    let to = test_user("rcpt");
    let (status, result) = post(&t, notification(&unique("n"), &to)).await;
    assert_eq!(status, 202, "{result}");
    assert_eq!(
        result["record"]["delivered_via"], "mailbox",
        "no mailbox_id: the tenant's default mailbox"
    );
    let after = t.secret(id).await.unwrap();
    assert_ne!(
        before.refresh_token, after.refresh_token,
        "the rotated refresh token must be stored"
    );
    // (the peer's JWTs can be byte-identical within one second, so compare the expiry)
    assert!(
        after.access_token_expires_at
            > Some(time::OffsetDateTime::now_utc() + time::Duration::minutes(30))
    );
    let stats = oauth_stats(&client_id).await;
    assert_eq!(
        (
            stats["refresh_token"].as_u64(),
            stats["invalid_grant"].as_u64()
        ),
        (Some(1), Some(0)),
        "{stats}"
    );
    assert!(t.get(id).await["last_refreshed_at"].is_string());
    // the next send uses the new token: no second refresh
    let (status, _) = post(&t, notification(&unique("n"), &to)).await;
    assert_eq!(status, 202);
    assert_eq!(oauth_stats(&client_id).await["refresh_token"], 1);
}

#[tokio::test]
async fn fifty_concurrent_sends_with_an_expired_token_refresh_exactly_once() {
    let t = TestApp::spawn(Backend::Aws).await;
    let (mailbox, user, client_id) = t.verified_mailbox("", "burst", json!({})).await;
    t.expire_access_token(mailbox["id"].as_str().unwrap()).await;
    // two warm "containers" on the same storage, 25 sends each, all at once
    let other = t.sibling().await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let app = if i % 2 == 0 {
            t.app.clone()
        } else {
            other.clone()
        };
        let mut n = notification(&format!("burst-{i}-{}", unique("n")), &test_user("rcpt"));
        n["mailbox_id"] = mailbox["id"].clone();
        let tenant = t.tenant.clone();
        tasks.push(tokio::spawn(async move {
            let n =
                outgoing_mail_tests::outgoing_mail::domain::notification::parse_notification(&n)
                    .unwrap();
            outgoing_mail_tests::outgoing_mail::service::send::deliver(&app, &tenant, &n).await
        }));
    }
    for task in tasks {
        let r = task.await.unwrap();
        assert_eq!(r.status, "delivered", "{r:?}");
    }
    let stats = oauth_stats(&client_id).await;
    assert_eq!(
        stats["refresh_token"], 1,
        "one refresh for 50 sends: {stats}"
    );
    assert_eq!(
        stats["invalid_grant"], 0,
        "a reused refresh token would have revoked the grant: {stats}"
    );
    let smtp = smtp_stats(&user).await;
    assert_eq!(smtp["messages"], 50);
    assert!(
        smtp["max_concurrent"].as_u64().unwrap() <= 6,
        "≤ 3 connections per mailbox per container: {smtp}"
    );
    // 1 verification connection at authorization + at most 3 pooled per container
    assert!(
        smtp["connections"].as_u64().unwrap() <= 7,
        "connections are reused, not one per message: {smtp}"
    );
}

#[tokio::test]
async fn a_burst_from_one_container_uses_at_most_three_smtp_sessions_and_keeps_them() {
    let t = TestApp::spawn(Backend::Embedded).await;
    let (mailbox, user, _) = t.verified_mailbox("", "pool", json!({})).await;
    let after_verification = smtp_stats(&user).await["connections"].as_u64().unwrap();
    let burst = |round: usize| {
        let mut tasks = Vec::new();
        for i in 0..20 {
            let n = from_mailbox(&mailbox, &format!("pool-{round}-{i}"));
            let (app, tenant) = (t.app.clone(), t.tenant.clone());
            tasks.push(tokio::spawn(async move {
                outgoing_mail_tests::outgoing_mail::service::send::deliver(&app, &tenant, &n).await
            }));
        }
        tasks
    };
    let mut connections = Vec::new();
    for round in 1..=2 {
        for task in burst(round) {
            let r = task.await.unwrap();
            assert_eq!(r.status, "delivered", "{r:?}");
        }
        let stats = smtp_stats(&user).await;
        assert_eq!(stats["messages"], 20 * round as u64, "{stats}");
        // Exchange Online allows 3 concurrent connections per mailbox
        assert!(
            stats["max_concurrent"].as_u64().unwrap() <= 3,
            "never more than 3 SMTP sessions for one mailbox at once: {stats}"
        );
        connections.push(stats["connections"].as_u64().unwrap() - after_verification);
    }
    assert!(
        (1..=3).contains(&connections[0]),
        "20 messages over at most 3 connections: {connections:?}"
    );
    assert_eq!(
        connections[1], connections[0],
        "the next burst reuses the pooled connections"
    );
}

#[tokio::test]
async fn a_pooled_connection_sends_without_waiting_for_delayed_acks() {
    // lettre writes a message and its final "." in two writes: on a socket with Nagle's
    // algorithm the second write waits for the server's delayed ACK (40 ms on Linux, up to
    // 200 ms against Exchange) on every message. The SMTP adapter's sockets set TCP_NODELAY.
    let t = TestApp::spawn(Backend::Embedded).await;
    let (mailbox, user, _) = t.verified_mailbox("", "nodelay", json!({})).await;
    let send = |i: usize| from_mailbox(&mailbox, &format!("nodelay-{i}"));
    // the first send opens the pooled connection
    let r = outgoing_mail_tests::outgoing_mail::service::send::deliver(&t.app, &t.tenant, &send(0))
        .await;
    assert_eq!(r.status, "delivered", "{r:?}");
    let mut took = Vec::new();
    for i in 1..=15 {
        let n = send(i);
        let started = std::time::Instant::now();
        let r =
            outgoing_mail_tests::outgoing_mail::service::send::deliver(&t.app, &t.tenant, &n).await;
        took.push(started.elapsed());
        assert_eq!(r.status, "delivered", "{r:?}");
    }
    took.sort();
    let fastest = took[0];
    assert_eq!(smtp_stats(&user).await["messages"], 16);
    assert!(
        fastest < std::time::Duration::from_millis(38),
        "every one of 15 sends on a warm connection took ≥ 38 ms (fastest {fastest:?}): \
         the socket waits for delayed ACKs"
    );
}

#[tokio::test]
async fn idle_smtp_connections_of_a_mailbox_that_stopped_sending_are_closed() {
    use outgoing_mail_tests::outgoing_mail::adapters::smtp::LettreTransport;
    use outgoing_mail_tests::outgoing_mail::domain::Hostname;
    use outgoing_mail_tests::outgoing_mail::domain::Sensitive;
    use outgoing_mail_tests::outgoing_mail::domain::mailbox::{SmtpSecurity, SmtpSettings};
    use outgoing_mail_tests::outgoing_mail::domain::notification::OutgoingMessage;
    use outgoing_mail_tests::outgoing_mail::ports::{MailTransport, SmtpCredentials};

    let ca = std::fs::read(peer_env("OM_TEST_CA")).unwrap();
    let transport = LettreTransport::new(Some(&ca), std::time::Duration::from_secs(5))
        .unwrap()
        .with_idle_timeout(std::time::Duration::from_secs(1));
    let smtp = SmtpSettings {
        host: Hostname::parse("smtp_host", &peer_env("OM_TEST_SMTP_HOST")).unwrap(),
        port: peer_env("OM_TEST_SMTP_PORT").parse().unwrap(),
        security: SmtpSecurity::Starttls,
    };
    let send = |user: String| {
        let (transport, smtp) = (transport.clone(), smtp.clone());
        async move {
            let to = test_user("rcpt");
            let message = OutgoingMessage {
                envelope_from: user.clone(),
                recipients: vec![to.clone()],
                message_id: format!("<{}@tenant.test>", unique("idle")),
                bytes: format!("From: {user}\r\nTo: {to}\r\nSubject: idle\r\n\r\nhello\r\n")
                    .into_bytes(),
            };
            let creds = SmtpCredentials::Password {
                user: user.clone(),
                password: Sensitive::new("correct-horse".to_owned()),
            };
            transport
                .send(&user, &smtp, &creds, &message)
                .await
                .unwrap()
        }
    };
    let (quiet, busy) = (test_user("quiet"), test_user("busy"));
    send(quiet.clone()).await;
    assert_eq!(transport.idle_connections(), 1);
    assert_eq!(
        smtp_stats(&quiet).await["active"],
        1,
        "kept for the next message"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    // another mailbox sends: the quiet mailbox's expired connection is closed meanwhile
    send(busy.clone()).await;
    assert_eq!(
        transport.idle_connections(),
        1,
        "only the busy mailbox's connection"
    );
    let mut active = Value::Null;
    for _ in 0..40 {
        active = smtp_stats(&quiet).await["active"].clone();
        if active == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(active, 0, "the SMTP server saw the idle connection closed");
    assert_eq!(smtp_stats(&busy).await["active"], 1);
}

#[tokio::test]
async fn a_pooled_connection_the_server_closed_is_replaced_without_failing_the_send() {
    let t = TestApp::spawn(Backend::Embedded).await;
    let (mailbox, user, _) = t.verified_mailbox("", "dropped", json!({})).await;
    let send = |i: usize| {
        let n = from_mailbox(&mailbox, &format!("dropped-{i}"));
        let (app, tenant) = (t.app.clone(), t.tenant.clone());
        async move {
            outgoing_mail_tests::outgoing_mail::service::send::deliver(&app, &tenant, &n).await
        }
    };
    let first = send(1).await;
    assert_eq!(first.status, "delivered", "{first:?}");
    let before = smtp_stats(&user).await;
    assert_eq!(before["active"], 1, "the connection is pooled: {before}");
    assert_eq!(smtp_drop_sessions(&user).await, 1);
    // the pooled connection is fresh (< 5 s idle): it is used without a NOOP first
    let second = send(2).await;
    assert_eq!(
        (second.status, second.reason.as_deref()),
        ("delivered", None),
        "{second:?}"
    );
    let after = smtp_stats(&user).await;
    assert_eq!(after["messages"], 2, "{after}");
    assert_eq!(
        after["connections"].as_u64().unwrap(),
        before["connections"].as_u64().unwrap() + 1,
        "one new connection replaced the closed one: {after}"
    );
}

#[tokio::test]
async fn an_sqs_batch_with_one_poison_message_fails_only_that_message() {
    let t = TestApp::spawn(Backend::Embedded).await;
    let (mailbox, _, _) = t.verified_mailbox("", "sqs", json!({})).await;
    let http = lambda_router(&t.app, &[Function::SendNotification]);
    let (a, b) = (test_user("rcpt"), test_user("rcpt"));
    let body = |to: &str| {
        let mut n = notification(&unique("n"), to);
        n["mailbox_id"] = mailbox["id"].clone();
        n["tenant"] = json!("local");
        n.to_string()
    };
    let record = |id: &str, body: String| json!({"messageId": id, "receiptHandle": "rh", "body": body, "attributes": {}, "messageAttributes": {}, "md5OfBody": "", "eventSource": "aws:sqs", "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:notifications", "awsRegion": "us-east-1"});
    let event = json!({"Records": [record("m-1", body(&a)), record("m-poison", "{not json".into()), record("m-3", body(&b))]});
    let response = send_notification_event(&t.app, &http, event).await;
    assert_eq!(
        response,
        json!({"batchItemFailures": [{"itemIdentifier": "m-poison"}]})
    );
    assert_eq!(messages_for(&a).await.len(), 1);
    assert_eq!(messages_for(&b).await.len(), 1);
}

#[tokio::test]
async fn the_same_id_is_delivered_once_also_when_the_queue_redelivers_it() {
    let t = TestApp::spawn(Backend::Aws).await;
    let (mailbox, _, _) = t.verified_mailbox("", "dup", json!({})).await;
    let to = test_user("rcpt");
    let mut n = notification(&unique("n"), &to);
    n["mailbox_id"] = mailbox["id"].clone();
    let (s1, r1) = post(&t, n.clone()).await;
    let (s2, r2) = post(&t, n.clone()).await;
    assert_eq!((s1, r1["status"].as_str()), (202, Some("delivered")));
    assert_eq!((s2, r2["status"].as_str()), (202, Some("duplicate")));
    assert_eq!(r2["record"]["message_id"], r1["record"]["message_id"]);
    // the queue door acknowledges the redelivery without sending
    let http = lambda_router(&t.app, &[Function::SendNotification]);
    n["tenant"] = json!("local");
    let event = json!({"Records": [{"messageId": "m-again", "body": n.to_string(), "eventSource": "aws:sqs"}]});
    assert_eq!(
        send_notification_event(&t.app, &http, event).await,
        json!({"batchItemFailures": []})
    );
    assert_eq!(messages_for(&to).await.len(), 1);
}

#[tokio::test]
async fn smtp_432_is_retried_later_and_the_mailbox_stays_verified() {
    let t = TestApp::spawn(Backend::Embedded).await;
    let (mailbox, _, _) = t.verified_mailbox("", "throttle", json!({})).await;
    let id = unique("n");
    let mut n = notification(&id, &test_user("throttled"));
    n["mailbox_id"] = mailbox["id"].clone();
    let (status, r) = post(&t, n.clone()).await;
    assert_eq!(
        (status, r["status"].as_str(), r["reason"].as_str()),
        (503, Some("retry"), Some("throttled")),
        "{r}"
    );
    assert!(r["detail"].as_str().unwrap().contains("4.3.2"));
    assert_eq!(
        t.get(mailbox["id"].as_str().unwrap()).await["status"],
        "verified"
    );
    // through the queue: reported for redelivery
    let http = lambda_router(&t.app, &[Function::SendNotification]);
    n["tenant"] = json!("local");
    let event =
        json!({"Records": [{"messageId": "m-1", "body": n.to_string(), "eventSource": "aws:sqs"}]});
    assert_eq!(
        send_notification_event(&t.app, &http, event).await,
        json!({"batchItemFailures": [{"itemIdentifier": "m-1"}]})
    );
    // the claim was released: a later attempt may send it (it is not "in flight" forever)
    let (status, r) = post(
        &t,
        n.as_object()
            .map(|o| {
                let mut o = o.clone();
                o.remove("tenant");
                Value::Object(o)
            })
            .unwrap(),
    )
    .await;
    assert_eq!((status, r["reason"].as_str()), (503, Some("throttled")));
}

#[tokio::test]
async fn send_as_denied_is_not_retried_the_mailbox_is_flagged_and_the_default_sender_delivers() {
    let (env, platform) = default_sender_env();
    let t = TestApp::spawn_with(Backend::Embedded, &[env]).await;
    let (mailbox, _, _) = t
        .verified_mailbox("", "sendas", json!({"from_address": "ceo@tenant.test"}))
        .await;
    let to = test_user("rcpt");
    let mut n = notification(&unique("n"), &to);
    n["mailbox_id"] = mailbox["id"].clone();
    let (status, r) = post(&t, n).await;
    assert_eq!(
        (status, r["status"].as_str()),
        (202, Some("delivered")),
        "{r}"
    );
    assert_eq!(r["record"]["delivered_via"], "default_sender");
    let after = t.get(mailbox["id"].as_str().unwrap()).await;
    assert_eq!(
        (after["status"].as_str(), after["status_reason"].as_str()),
        (Some("not_verified"), Some("send_as_denied")),
        "{after}"
    );
    let msgs = messages_for(&to).await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["auth_user"], platform.as_str());
    let parsed = parse(msgs[0]["raw"].as_str().unwrap());
    assert_eq!(
        parsed.reply_to().unwrap().first().unwrap().address(),
        Some("helpdesk@tenant.test"),
        "the tenant's Reply-To"
    );
}

#[tokio::test]
async fn an_unknown_recipient_fails_for_good_without_fallback() {
    let (env, _) = default_sender_env();
    let t = TestApp::spawn_with(Backend::Embedded, &[env]).await;
    let (mailbox, _, _) = t.verified_mailbox("", "rcpt", json!({})).await;
    let mut n = notification(&unique("n"), &test_user("nosuchuser"));
    n["mailbox_id"] = mailbox["id"].clone();
    let (status, r) = post(&t, n).await;
    assert_eq!(
        (status, r["status"].as_str(), r["reason"].as_str()),
        (422, Some("failed"), Some("recipient_rejected")),
        "{r}"
    );
    assert_eq!(
        t.get(mailbox["id"].as_str().unwrap()).await["status"],
        "verified",
        "a bad recipient says nothing about the mailbox"
    );
}

#[tokio::test]
async fn a_mailbox_that_is_not_verified_falls_back_to_the_default_sender() {
    let (env, platform) = default_sender_env();
    let t = TestApp::spawn_with(Backend::Aws, &[env]).await;
    let created = t.create(oauth_mailbox(&test_user(""), "pending")).await;
    assert_eq!(created["status"], "pending_authorization");
    let to = test_user("rcpt");
    let mut n = notification(&unique("n"), &to);
    n["mailbox_id"] = created["id"].clone();
    let (status, r) = post(&t, n).await;
    assert_eq!(
        (status, r["record"]["delivered_via"].as_str()),
        (202, Some("default_sender")),
        "{r}"
    );
    let msgs = messages_for(&to).await;
    let parsed = parse(msgs[0]["raw"].as_str().unwrap());
    let from = parsed.from().unwrap().first().unwrap();
    assert_eq!(from.address(), Some(platform.as_str()));
    assert_eq!(
        from.name(),
        Some("Contoso Alerts"),
        "the tenant's name on the platform's address"
    );
    assert_eq!(
        parsed.reply_to().unwrap().first().unwrap().address(),
        Some("helpdesk@tenant.test")
    );
}

#[tokio::test]
async fn without_a_default_sender_an_unusable_mailbox_means_retry_not_loss() {
    let t = TestApp::spawn(Backend::Embedded).await;
    let created = t.create(oauth_mailbox(&test_user(""), "pending")).await;
    let mut n = notification(&unique("n"), &test_user("rcpt"));
    n["mailbox_id"] = created["id"].clone();
    let (status, r) = post(&t, n).await;
    assert_eq!(
        (status, r["status"].as_str(), r["reason"].as_str()),
        (503, Some("retry"), Some("no_default_sender")),
        "{r}"
    );
    assert!(
        r["detail"]
            .as_str()
            .unwrap()
            .contains("OUTGOING_MAIL_DEFAULT_SENDER")
    );
}

#[tokio::test]
async fn a_revoked_grant_at_send_time_flags_the_mailbox_and_falls_back() {
    let (env, _) = default_sender_env();
    let t = TestApp::spawn_with(Backend::Embedded, &[env]).await;
    let (mailbox, _, _) = t.verified_mailbox("", "revoked", json!({})).await;
    t.expire_access_token(mailbox["id"].as_str().unwrap()).await;
    let mut n = notification(&unique("n"), &test_user("rcpt"));
    n["mailbox_id"] = mailbox["id"].clone();
    let (status, r) = post(&t, n).await;
    assert_eq!(
        (status, r["record"]["delivered_via"].as_str()),
        (202, Some("default_sender")),
        "{r}"
    );
    let after = t.get(mailbox["id"].as_str().unwrap()).await;
    assert_eq!(
        (after["status"].as_str(), after["status_reason"].as_str()),
        (Some("not_verified"), Some("grant_revoked")),
        "{after}"
    );
}

#[tokio::test]
async fn header_injection_and_bad_notifications_are_refused_and_nothing_is_sent() {
    let t = TestApp::spawn(Backend::Embedded).await;
    let (mailbox, _, _) = t.verified_mailbox("", "inject", json!({})).await;
    let to = test_user("rcpt");
    let id = unique("n");
    let cases = [
        (
            json!({"subject": "Hello\r\nBcc: victim@evil.test"}),
            "subject",
        ),
        (
            json!({"reply_to": "a@b.test\nBcc: victim@evil.test"}),
            "reply_to",
        ),
        (json!({"to": ["x@y.test\r\nBcc: victim@evil.test"]}), "to"),
        (json!({"headers": {"Bcc": "victim@evil.test"}}), "headers"),
        (
            json!({"headers": {"X-Entity-Ref-ID": "1\r\nBcc: victim@evil.test"}}),
            "headers",
        ),
        (json!({"tenant": "someone-else"}), "tenant"),
        (json!({"to": []}), "to"),
        (json!({"text": null, "html": null}), "text"),
        (json!({"id": "has spaces"}), "id"),
        (json!({"surprise": 1}), "surprise"),
    ];
    for (patch, field) in cases {
        let mut n = notification(&id, &to);
        n["mailbox_id"] = mailbox["id"].clone();
        n.as_object_mut()
            .unwrap()
            .extend(patch.as_object().unwrap().clone());
        let (status, v) = post(&t, n).await;
        assert_eq!(
            (status, v["error"]["field"].as_str()),
            (400, Some(field)),
            "{patch} → {v}"
        );
    }
    assert!(messages_for(&to).await.is_empty());
    assert!(messages_for("victim@evil.test").await.is_empty());
    // the refused attempts claimed nothing: the same id still goes out once it is valid
    let mut n = notification(&id, &to);
    n["mailbox_id"] = mailbox["id"].clone();
    assert_eq!(post(&t, n).await.1["status"], "delivered");
}

#[tokio::test]
async fn direct_invocation_and_api_gateway_events_reach_the_same_handler() {
    let t = TestApp::spawn(Backend::Embedded).await;
    let (mailbox, _, _) = t.verified_mailbox("", "doors", json!({})).await;
    let http = lambda_router(&t.app, &[Function::SendNotification]);
    let to = test_user("rcpt");
    let mut n = notification(&unique("n"), &to);
    n["mailbox_id"] = mailbox["id"].clone();
    n["tenant"] = json!("local");
    let r = send_notification_event(&t.app, &http, n.clone()).await;
    assert_eq!(r["status"], "delivered", "{r}");
    let rejected = send_notification_event(
        &t.app,
        &http,
        json!({"id": "x", "to": ["a@b.test"], "text": "t"}),
    )
    .await;
    assert_eq!(
        (
            rejected["status"].as_str(),
            rejected["error"]["field"].as_str()
        ),
        (Some("rejected"), Some("tenant"))
    );
    // HTTP API payload 2.0 event, tenant from the JWT claim
    n["id"] = json!(unique("n"));
    n.as_object_mut().unwrap().remove("tenant");
    let event = json!({
        "version": "2.0", "routeKey": "POST /notifications", "rawPath": "/notifications", "rawQueryString": "",
        "headers": {"content-type": "application/json"},
        "requestContext": {"accountId": "1", "apiId": "a", "domainName": "a.execute-api.us-east-1.amazonaws.com", "domainPrefix": "a",
            "http": {"method": "POST", "path": "/notifications", "protocol": "HTTP/1.1", "sourceIp": "203.0.113.1", "userAgent": "t"},
            "requestId": "r", "routeKey": "POST /notifications", "stage": "$default", "time": "04/Dec/2026:20:00:00 +0000", "timeEpoch": 0,
            "authorizer": {"jwt": {"claims": {"tenant_id": "local"}, "scopes": null}}},
        "body": n.to_string(), "isBase64Encoded": false
    });
    let r = send_notification_event(&t.app, &http, event).await;
    assert_eq!(r["statusCode"], 202, "{r}");
    assert_eq!(messages_for(&to).await.len(), 2);
}

#[tokio::test]
async fn no_token_secret_or_message_body_reaches_the_logs() {
    let t = TestApp::spawn(Backend::Embedded).await;
    let (mailbox, _, _) = t.verified_mailbox("", "logs", json!({})).await;
    t.expire_access_token(mailbox["id"].as_str().unwrap()).await;
    let mut n = notification(&unique("n"), &test_user("rcpt"));
    n["mailbox_id"] = mailbox["id"].clone();
    n["text"] = json!("BODY-MARKER-7f3a");
    assert_eq!(post(&t, n).await.0, 202);
    let secret = t.secret(mailbox["id"].as_str().unwrap()).await.unwrap();
    let logs = captured_logs();
    assert!(
        logs.contains("notification handled"),
        "one structured line per delivery"
    );
    for s in [
        secret.access_token.unwrap(),
        secret.refresh_token.unwrap(),
        secret.client_secret.unwrap(),
    ] {
        assert!(!logs.contains(s.expose()), "a secret reached the logs");
    }
    assert!(
        !logs.contains("BODY-MARKER-7f3a"),
        "the message body reached the logs"
    );
}

#[tokio::test]
async fn a_duplicate_of_a_failed_notification_is_not_reported_as_accepted() {
    let t = TestApp::spawn(Backend::Embedded).await;
    let (mailbox, _, _) = t.verified_mailbox("", "dupfail", json!({})).await;
    let mut n = notification(&unique("n"), &test_user("nosuchuser"));
    n["mailbox_id"] = mailbox["id"].clone();
    assert_eq!(post(&t, n.clone()).await.0, 422);
    let (status, r) = post(&t, n).await;
    assert_eq!(
        (status, r["status"].as_str(), r["record"]["status"].as_str()),
        (422, Some("duplicate"), Some("failed")),
        "{r}"
    );
}

#[tokio::test]
async fn an_api_gateway_response_carries_cookies_for_the_v2_payload_parser() {
    let t = TestApp::spawn(Backend::Embedded).await;
    let http = lambda_router(&t.app, &[Function::SendNotification]);
    let event = json!({
        "version": "2.0", "routeKey": "POST /notifications", "rawPath": "/notifications", "rawQueryString": "",
        "headers": {"content-type": "application/json"},
        "requestContext": {"accountId": "1", "apiId": "a", "domainName": "a.example", "domainPrefix": "a",
            "http": {"method": "POST", "path": "/notifications", "protocol": "HTTP/1.1", "sourceIp": "203.0.113.1", "userAgent": "t"},
            "requestId": "r", "routeKey": "POST /notifications", "stage": "$default", "time": "04/Dec/2026:20:00:00 +0000", "timeEpoch": 0,
            "authorizer": {"jwt": {"claims": {"tenant_id": "local"}, "scopes": null}}},
        "body": "{}", "isBase64Encoded": false
    });
    let r = send_notification_event(&t.app, &http, event).await;
    assert_eq!(r["statusCode"], 400);
    let parsed: Result<lambda_http::aws_lambda_events::apigw::ApiGatewayV2httpResponse, _> =
        serde_json::from_value(r.clone());
    assert!(parsed.is_ok(), "not a valid payload 2.0 response: {r}");
}

// ------------------------------------------------------------------------ basic-auth mailboxes

/// A verified basic-auth mailbox on the SMTP peer; returns (id, username).
async fn verified_basic_mailbox(t: &TestApp) -> (String, String) {
    let user = test_user("basic");
    let (status, created) = t
        .call(
            "POST",
            "/mailboxes",
            Some(json!({
                "auth": "basic",
                "provider": "custom",
                "username": user,
                "smtp_host": peer_env("OM_TEST_SMTP_HOST"),
                "smtp_port": peer_env("OM_TEST_SMTP_PORT").parse::<u16>().unwrap(),
                "smtp_security": "starttls",
                "password": "correct-horse",
            })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let (status, v) = t
        .call("POST", &format!("/mailboxes/{id}/verify"), None)
        .await;
    assert_eq!((status, &v["status"]), (200, &json!("verified")), "{v}");
    (id, user)
}

/// Overwrite the stored password behind the service's back (as another process would).
async fn store_password(t: &TestApp, id: &str, password: &str) {
    use outgoing_mail_tests::outgoing_mail::domain::{MailboxId, Sensitive};
    let mid = MailboxId::parse(id).unwrap();
    let mut secret = t.secret(id).await.expect("secret");
    secret.password = Some(Sensitive::new(password));
    t.app.secrets.put(&t.tenant, &mid, &secret).await.unwrap();
}

#[tokio::test]
async fn a_warm_process_sends_from_a_basic_mailbox_without_rereading_its_password() {
    let t = TestApp::spawn(Backend::Embedded).await;
    let (id, user) = verified_basic_mailbox(&t).await;
    let send = |i: usize| {
        let mut n = notification(&unique(&format!("basic-{i}")), &test_user("rcpt"));
        n["mailbox_id"] = json!(id);
        n
    };
    let (status, r) = post(&t, send(1)).await;
    assert_eq!((status, &r["status"]), (202, &json!("delivered")), "{r}");
    // the stored password now differs: the warm process still uses the one it read
    store_password(&t, &id, "not-what-the-server-accepts").await;
    let (status, r) = post(&t, send(2)).await;
    assert_eq!((status, &r["status"]), (202, &json!("delivered")), "{r}");
    assert_eq!(smtp_stats(&user).await["messages"], 2);
}

#[tokio::test]
async fn a_changed_basic_password_is_read_again_when_the_server_refuses_the_cached_one() {
    use outgoing_mail_tests::outgoing_mail::domain::{MailboxId, Sensitive};
    let t = TestApp::spawn(Backend::Embedded).await;
    let (id, user) = verified_basic_mailbox(&t).await;
    // this process holds an outdated password; the store has the right one
    let key = (t.tenant.clone(), MailboxId::parse(&id).unwrap());
    t.app
        .warm
        .put_password(&key, Sensitive::new("the-old-password"));
    let mut n = notification(&unique("basic-changed"), &test_user("rcpt"));
    n["mailbox_id"] = json!(id);
    let (status, r) = post(&t, n).await;
    assert_eq!((status, &r["status"]), (202, &json!("delivered")), "{r}");
    let stats = smtp_stats(&user).await;
    assert_eq!(
        (&stats["auth_failed"], &stats["messages"]),
        (&json!(1), &json!(1)),
        "{stats}"
    );
    let (_, m) = t.call("GET", &format!("/mailboxes/{id}"), None).await;
    assert_eq!(
        m["status"], "verified",
        "one refused cached password is no verdict: {m}"
    );

    // both wrong: the send falls back and the mailbox tells the truth
    store_password(&t, &id, "also-wrong").await;
    t.app
        .warm
        .put_password(&key, Sensitive::new("the-old-password"));
    let mut n = notification(&unique("basic-wrong"), &test_user("rcpt"));
    n["mailbox_id"] = json!(id);
    let (_, r) = post(&t, n).await;
    let stats = smtp_stats(&user).await;
    assert_eq!(
        (&stats["auth_failed"], &stats["messages"]),
        (&json!(3), &json!(1)),
        "the cached password and the re-read one were both refused, nothing sent as the mailbox: {stats} {r}"
    );
    let (_, m) = t.call("GET", &format!("/mailboxes/{id}"), None).await;
    assert_eq!(
        (&m["status"], &m["status_reason"]),
        (&json!("not_verified"), &json!("credentials_rejected")),
        "{m}"
    );
}
