//! The mailbox management API through real HTTP (local server wiring) and through API
//! Gateway events (Lambda wiring): CRUD, validation, tenant isolation, no secret in responses.

use outgoing_mail_tests::outgoing_mail::api::Function;
use outgoing_mail_tests::{Backend, TestApp, apigw_request, lambda_router, oneshot};
use serde_json::{Value, json};

fn microsoft(extra: Value) -> Value {
    let mut v = json!({
        "auth": "oauth2", "provider": "microsoft", "tenant": "contoso.onmicrosoft.com",
        "username": "alerts@contoso.com", "from_name": "Contoso Alerts", "reply_to": "helpdesk@contoso.com",
        "signature": "Contoso IT", "client_id": "6731de76-14a6-49ae-97bc-6eba6914391e",
        "client_secret": "Xy8Q~secret.VALUE_that-is~long", "client_secret_expires_at": "2027-06-30"
    });
    v.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    v
}

#[tokio::test]
async fn create_applies_the_microsoft_preset_and_never_returns_the_secret() {
    let t = TestApp::spawn(Backend::Embedded).await;
    let (status, v) = t
        .call("POST", "/mailboxes", Some(microsoft(json!({}))))
        .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["status"], "pending_authorization");
    assert_eq!(
        v["authorization_url"],
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/authorize"
    );
    assert_eq!(
        v["token_url"],
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
    );
    assert_eq!(
        v["scopes"],
        json!([
            "https://outlook.office.com/SMTP.Send",
            "offline_access",
            "openid",
            "email",
            "profile"
        ])
    );
    assert_eq!(
        (
            v["smtp_host"].as_str(),
            v["smtp_port"].as_u64(),
            v["smtp_security"].as_str()
        ),
        (Some("smtp.office365.com"), Some(587), Some("starttls"))
    );
    assert_eq!(v["client_auth"], "request_body");
    assert_eq!(v["from_address"], "alerts@contoso.com");
    assert_eq!(v["redirect_uri"], format!("{}/oauth/callback", t.base));
    assert_eq!(v["client_secret_set"], true);
    assert_eq!(v["client_secret_expires_at"], "2027-06-30");
    assert!(v.get("client_secret").is_none());
    assert!(
        !v.to_string().contains("secret.VALUE"),
        "secret leaked: {v}"
    );
    let (_, list) = t.call("GET", "/mailboxes", None).await;
    assert_eq!(list["mailboxes"].as_array().unwrap().len(), 1);
    assert!(!list.to_string().contains("secret.VALUE"));
    let id = v["id"].as_str().unwrap();
    assert_eq!(t.get(id).await["id"], id);
    // the secret went to the secret store
    assert_eq!(
        t.secret(id).await.unwrap().client_secret.unwrap().expose(),
        "Xy8Q~secret.VALUE_that-is~long"
    );
}

#[tokio::test]
async fn google_preset_and_pasted_microsoft_urls() {
    let t = TestApp::spawn(Backend::Embedded).await;
    let g = t.create(json!({"provider": "google", "username": "ops@gmail.com", "client_id": "123.apps.googleusercontent.com", "client_secret": "GOCSPX-abc"})).await;
    assert_eq!(g["token_url"], "https://oauth2.googleapis.com/token");
    assert_eq!(
        g["extra_authorize_params"],
        json!({"access_type": "offline", "prompt": "consent"})
    );
    assert_eq!(g["smtp_host"], "smtp.gmail.com");
    let m = t.create(json!({"provider": "microsoft", "username": "a@contoso.com", "client_id": "x",
        "authorization_url": "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/oauth2/v2.0/authorize",
        "token_url": "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/oauth2/v2.0/token"})).await;
    assert!(m["token_url"].as_str().unwrap().contains("72f988bf"));
}

#[tokio::test]
async fn every_validation_rule_is_a_400_naming_the_field_and_stores_nothing() {
    let t = TestApp::spawn(Backend::Embedded).await;
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({"token_url": "not a url"}),
            "token_url",
            "invalid_url",
        ),
        (
            json!({"token_url": "http://login.example.com/token"}),
            "token_url",
            "invalid_url",
        ),
        (
            json!({"authorization_url": "ftp://login.example.com/a"}),
            "authorization_url",
            "invalid_url",
        ),
        (
            json!({"tenant": "common"}),
            "tenant",
            "multi_tenant_endpoint",
        ),
        (
            json!({"tenant": null, "authorization_url": "https://login.microsoftonline.com/common/oauth2/v2.0/authorize", "token_url": "https://login.microsoftonline.com/common/oauth2/v2.0/token"}),
            "authorization_url",
            "multi_tenant_endpoint",
        ),
        (
            json!({"tenant": null, "authorization_url": "https://login.microsoftonline.com/aaa/oauth2/v2.0/authorize", "token_url": "https://login.microsoftonline.com/bbb/oauth2/v2.0/token"}),
            "token_url",
            "tenant_mismatch",
        ),
        (
            json!({"username": "not-an-address"}),
            "username",
            "invalid_email",
        ),
        (
            json!({"reply_to": "helpdesk@"}),
            "reply_to",
            "invalid_email",
        ),
        (
            json!({"from_address": "a b@c.com"}),
            "from_address",
            "invalid_email",
        ),
        (
            json!({"from_name": "Contoso\r\nBcc: victim@example.com"}),
            "from_name",
            "header_injection",
        ),
        (
            json!({"reply_to": "a@b.com\nBcc: victim@example.com"}),
            "reply_to",
            "header_injection",
        ),
        (json!({"colour": "blue"}), "colour", "unknown_field"),
        (json!({"status": "verified"}), "status", "read_only"),
        (
            json!({"redirect_uri": "https://evil.example/cb"}),
            "redirect_uri",
            "read_only",
        ),
        (
            json!({"smtp_host": "mail.example.com", "smtp_security": "none"}),
            "smtp_security",
            "insecure_smtp",
        ),
        (json!({"smtp_port": 70000}), "smtp_port", "invalid_value"),
        (json!({"password": "hunter2"}), "password", "not_applicable"),
        (
            json!({"scopes": ["https://graph.microsoft.com/Mail.Send", "offline_access"]}),
            "scopes",
            "wrong_resource",
        ),
        (
            json!({"scopes": ["https://outlook.office.com/SMTP.Send"]}),
            "scopes",
            "offline_access_missing",
        ),
        (
            json!({"extra_authorize_params": {"state": "x"}}),
            "extra_authorize_params",
            "reserved_param",
        ),
        (json!({"provider": "yahoo"}), "provider", "invalid_value"),
        (
            json!({"client_secret_expires_at": "next year"}),
            "client_secret_expires_at",
            "invalid_date",
        ),
        (json!({"client_id": null}), "client_id", "required"),
    ];
    for (extra, field, code) in cases {
        let (status, v) = t
            .call("POST", "/mailboxes", Some(microsoft(extra.clone())))
            .await;
        assert_eq!(status, 400, "{extra} → {v}");
        assert_eq!(v["error"]["field"], field, "{extra} → {v}");
        assert_eq!(v["error"]["code"], code, "{extra} → {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().len() > 20,
            "message should say what to do: {v}"
        );
    }
    // custom SMTP with `none` is fine on loopback
    let (status, _) = t.call("POST", "/mailboxes", Some(json!({"auth": "basic", "provider": "custom", "username": "a@b.com", "smtp_host": "127.0.0.1", "smtp_security": "none", "password": "p"}))).await;
    assert_eq!(status, 201);
    assert_eq!(
        t.mailbox_count().await,
        1,
        "only the valid mailbox was stored"
    );
}

#[tokio::test]
async fn oversized_malformed_and_non_json_bodies_are_refused() {
    let t = TestApp::spawn(Backend::Embedded).await;
    let big = microsoft(json!({"signature": "x".repeat(70_000)}));
    let (status, v) = t.call("POST", "/mailboxes", Some(big)).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (413, Some("body_too_large"))
    );
    let long_sig = microsoft(json!({"signature": "x".repeat(5_000)}));
    let (status, v) = t.call("POST", "/mailboxes", Some(long_sig)).await;
    assert_eq!(
        (status, v["error"]["field"].as_str()),
        (400, Some("signature"))
    );
    let resp = t
        .http
        .post(t.url("/mailboxes"))
        .bearer_auth(&t.token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let resp = t
        .http
        .post(t.url("/mailboxes"))
        .bearer_auth(&t.token)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 415);
    let (status, _) = t
        .call("POST", "/mailboxes", Some(json!(["an", "array"])))
        .await;
    assert_eq!(status, 400);
    assert_eq!(t.mailbox_count().await, 0);
}

#[tokio::test]
async fn a_guid_client_secret_is_accepted_with_a_warning() {
    let t = TestApp::spawn(Backend::Embedded).await;
    let v = t
        .create(microsoft(
            json!({"client_secret": "0b7d4c8e-1f2a-4b3c-9d8e-7f6a5b4c3d2e"}),
        ))
        .await;
    assert_eq!(
        v["status_warnings"][0]["code"],
        "client_secret_looks_like_secret_id"
    );
    assert!(
        v["status_message"].as_str().unwrap().contains("Secret ID"),
        "{v}"
    );
    // entering the real value clears the warning
    let id = v["id"].as_str().unwrap();
    let (status, v) = t
        .call(
            "PATCH",
            &format!("/mailboxes/{id}"),
            Some(json!({"client_secret": "real~Value.123"})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(v["status_warnings"], json!([]));
}

#[tokio::test]
async fn patch_validates_and_changes_nothing_on_error() {
    let t = TestApp::spawn(Backend::Aws).await;
    let v = t.create(microsoft(json!({}))).await;
    let id = v["id"].as_str().unwrap();
    let path = format!("/mailboxes/{id}");
    let (status, e) = t
        .call("PATCH", &path, Some(json!({"reply_to": "broken"})))
        .await;
    assert_eq!(
        (status, e["error"]["field"].as_str()),
        (400, Some("reply_to"))
    );
    let (status, e) = t.call("PATCH", &path, Some(json!({"id": "mbx_x"}))).await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (400, Some("read_only"))
    );
    let after = t.get(id).await;
    assert_eq!(after["reply_to"], "helpdesk@contoso.com");
    assert_eq!(after["updated_at"], v["updated_at"]);
    // a valid patch: null clears an optional field; from_name is not authorization-relevant
    let (status, p) = t
        .call(
            "PATCH",
            &path,
            Some(json!({"from_name": "Contoso NOC", "signature": null})),
        )
        .await;
    assert_eq!(status, 200, "{p}");
    assert_eq!(
        (p["from_name"].as_str(), p["signature"].is_null()),
        (Some("Contoso NOC"), true)
    );
    // tenant change re-derives the endpoints
    let (_, p) = t
        .call("PATCH", &path, Some(json!({"tenant": "fabrikam.com"})))
        .await;
    assert!(p["token_url"].as_str().unwrap().contains("/fabrikam.com/"));
}

#[tokio::test]
async fn delete_removes_the_record_and_its_secret() {
    for backend in [Backend::Embedded, Backend::Aws] {
        let t = TestApp::spawn(backend).await;
        let v = t.create(microsoft(json!({}))).await;
        let id = v["id"].as_str().unwrap();
        assert!(t.secret(id).await.is_some());
        let (status, _) = t.call("DELETE", &format!("/mailboxes/{id}"), None).await;
        assert_eq!(status, 204);
        let (status, _) = t.call("GET", &format!("/mailboxes/{id}"), None).await;
        assert_eq!(status, 404);
        assert!(
            t.secret(id).await.is_none(),
            "{backend:?}: secret must be deleted too"
        );
        let (status, _) = t.call("DELETE", &format!("/mailboxes/{id}"), None).await;
        assert_eq!(status, 404);
    }
}

#[tokio::test]
async fn unknown_malformed_and_unauthenticated_requests() {
    let t = TestApp::spawn(Backend::Embedded).await;
    for path in [
        "/mailboxes/mbx_00000000000000000000000000000000",
        "/mailboxes/../../etc/passwd",
        "/mailboxes/mbx_%2e%2e",
    ] {
        let (status, _) = t.call("GET", path, None).await;
        assert_eq!(status, 404, "{path}");
    }
    let resp = t.http.get(t.url("/mailboxes")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let resp = t
        .http
        .get(t.url("/mailboxes"))
        .bearer_auth("wrong-token-wrong-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let (status, v) = t.call("PUT", "/mailboxes", None).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (405, Some("method_not_allowed"))
    );
    let (status, _) = t.call("GET", "/nope", None).await;
    assert_eq!(status, 404);
    let resp = t.http.get(t.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
}

#[tokio::test]
async fn tenants_never_see_each_other_through_the_lambda_functions() {
    for backend in [Backend::Embedded, Backend::Aws] {
        let t = TestApp::spawn(backend).await;
        let mailboxes = lambda_router(&t.app, &[Function::Mailboxes]);
        let authorize = lambda_router(&t.app, &[Function::AuthorizeStart]);
        let (status, created) = oneshot(
            &mailboxes,
            apigw_request(
                "POST",
                "/mailboxes",
                Some("tenant-a"),
                Some(&microsoft(json!({}))),
            ),
        )
        .await;
        assert_eq!(status, 201, "{created}");
        // redirect URI comes from OUTGOING_MAIL_PUBLIC_URL when set
        assert_eq!(
            created["redirect_uri"],
            format!("{}/oauth/callback", t.base)
        );
        let id = created["id"].as_str().unwrap();
        let p = format!("/mailboxes/{id}");
        for (router, method, path, body) in [
            (&mailboxes, "GET", p.clone(), None),
            (
                &mailboxes,
                "PATCH",
                p.clone(),
                Some(json!({"from_name": "Mallory"})),
            ),
            (&mailboxes, "DELETE", p.clone(), None),
            (&mailboxes, "POST", format!("{p}/verify"), None),
            (&authorize, "POST", format!("{p}/authorize"), None),
        ] {
            let (status, v) = oneshot(
                router,
                apigw_request(method, &path, Some("tenant-b"), body.as_ref()),
            )
            .await;
            assert_eq!(status, 404, "{backend:?} {method} {path} as tenant-b → {v}");
        }
        let (_, list) = oneshot(
            &mailboxes,
            apigw_request("GET", "/mailboxes", Some("tenant-b"), None),
        )
        .await;
        assert_eq!(list["mailboxes"], json!([]));
        let (status, _) = oneshot(&mailboxes, apigw_request("GET", "/mailboxes", None, None)).await;
        assert_eq!(status, 401, "no claim → 401");
        let (_, a) = oneshot(&mailboxes, apigw_request("GET", &p, Some("tenant-a"), None)).await;
        assert_eq!(
            a["from_name"], "Contoso Alerts",
            "tenant-b's PATCH must not have applied"
        );
        // a function answers only its own routes
        let (status, _) = oneshot(
            &authorize,
            apigw_request("GET", "/mailboxes", Some("tenant-a"), None),
        )
        .await;
        assert_eq!(status, 404);
    }
}

#[tokio::test]
async fn lambda_without_public_url_derives_the_redirect_uri_from_the_api_domain() {
    let t = TestApp::spawn(Backend::Embedded).await;
    let mut app = t.app.clone();
    app.public_url = None;
    let r = lambda_router(&app, &[Function::Mailboxes]);
    let (status, v) = oneshot(
        &r,
        apigw_request(
            "POST",
            "/mailboxes",
            Some("tenant-a"),
            Some(&microsoft(json!({}))),
        ),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(
        v["redirect_uri"],
        "https://abc123.execute-api.us-east-1.amazonaws.com/oauth/callback"
    );
}
