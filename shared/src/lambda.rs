//! Lambda glue: start an HTTP function from the environment.

use crate::api::{Function, router};
use crate::app::{App, Tenancy};
use crate::config::{Profile, Settings};

/// Read settings, wire the app, serve `function`'s routes under lambda_http.
/// A bad setting ends start-up with one line naming the variable.
pub async fn run_http(function: Function) -> Result<(), lambda_http::Error> {
    let (app, _) = lambda_app().await?;
    lambda_http::run(router(app, &[function])).await
}

/// Every function's start-up: logging, settings (a bad one is one logged line and a failed
/// init), adapters, tenancy from the API Gateway JWT authorizer's claim.
async fn lambda_app() -> Result<(App, Settings), lambda_runtime::Error> {
    crate::telemetry::init();
    let settings = Settings::from_env(Profile::Lambda).inspect_err(|e| tracing::error!("{e}"))?;
    let tenancy = Tenancy::JwtClaim {
        claim: settings.tenant_claim.clone(),
    };
    let app = App::from_settings(&settings, tenancy)
        .await
        .inspect_err(|e| tracing::error!("{e}"))?;
    Ok((app, settings))
}

/// The send-notification function: one handler, three doors (SQS batch, direct invoke,
/// HTTP API `POST /notifications`).
pub async fn run_send_notification() -> Result<(), lambda_runtime::Error> {
    let (app, _) = lambda_app().await?;
    let http = router(app.clone(), &[Function::SendNotification]);
    lambda_runtime::run(lambda_runtime::service_fn(
        move |event: lambda_runtime::LambdaEvent<serde_json::Value>| {
            let (app, http) = (app.clone(), http.clone());
            async move {
                Ok::<_, lambda_runtime::Error>(
                    send_notification_event(&app, &http, event.payload).await,
                )
            }
        },
    ))
    .await
}

/// Most notifications of one SQS batch sent at the same time.
pub const BATCH_CONCURRENCY: usize = 10;

/// Dispatch one event of any of the three shapes; returns the function's response.
pub async fn send_notification_event(
    app: &App,
    http: &axum::Router,
    event: serde_json::Value,
) -> serde_json::Value {
    use serde_json::json;
    if event.get("Records").is_some() {
        let batch: aws_lambda_events::event::sqs::SqsEvent = match serde_json::from_value(event) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "not an SQS batch");
                return json!({"batchItemFailures": []});
            }
        };
        return serde_json::to_value(handle_sqs_batch(app, batch).await)
            .unwrap_or_else(|_| json!({"batchItemFailures": []}));
    }
    if event.get("requestContext").is_some() && event.get("rawPath").is_some() {
        return handle_http_event(http, &event).await;
    }
    // direct invocation: the notification itself
    match crate::service::send::parse_from_producer(&event) {
        Ok((tenant, n)) => {
            serde_json::to_value(crate::service::send::deliver(app, &tenant, &n).await)
                .unwrap_or_default()
        }
        Err(e) => {
            tracing::warn!(error = %e, "rejected a directly invoked notification");
            let field = match &e {
                crate::service::send::Rejected::Invalid(f) => f.field.clone(),
                crate::service::send::Rejected::NoTenant => "tenant".into(),
            };
            json!({"status": "rejected", "error": {"code": "invalid_notification", "field": field, "message": e.to_string()}})
        }
    }
}

/// Process an SQS batch: each record independently; only records that should be retried are
/// reported in `batchItemFailures` (a poison message never makes the others re-send).
pub async fn handle_sqs_batch(
    app: &App,
    batch: aws_lambda_events::event::sqs::SqsEvent,
) -> aws_lambda_events::event::sqs::SqsBatchResponse {
    use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse};
    let semaphore = std::sync::Arc::new(tokio::sync::Semaphore::new(BATCH_CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for record in batch.records {
        let (app, semaphore) = (app.clone(), semaphore.clone());
        tasks.spawn(async move {
            let _permit = semaphore.acquire_owned().await;
            let message_id = record.message_id.clone().unwrap_or_default();
            let body = record.body.as_deref().unwrap_or_default();
            let parsed = serde_json::from_str::<serde_json::Value>(body)
                .map_err(|e| e.to_string())
                .and_then(|v| crate::service::send::parse_from_producer(&v).map_err(|e| e.to_string()));
            let retry = match parsed {
                Ok((tenant, n)) => crate::service::send::deliver(&app, &tenant, &n).await.should_retry(),
                Err(e) => {
                    // cannot be sent, ever: let SQS move it to the dead-letter queue for a person
                    tracing::error!(message_id = %message_id, error = %e, "poison message: not a valid notification");
                    true
                }
            };
            (message_id, retry)
        });
    }
    let mut failures = Vec::new();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok((id, true)) => failures.push(id),
            Ok((_, false)) => {}
            Err(e) => tracing::error!(error = %e, "a batch task failed"),
        }
    }
    let mut response = SqsBatchResponse::default();
    response.batch_item_failures = failures
        .into_iter()
        .map(|id| {
            let mut f = BatchItemFailure::default();
            f.item_identifier = id;
            f
        })
        .collect();
    response
}

/// An API Gateway HTTP API event through the router, answered in payload format 2.0.
async fn handle_http_event(http: &axum::Router, event: &serde_json::Value) -> serde_json::Value {
    use serde_json::json;
    use tower::ServiceExt;
    let req = match lambda_http::request::from_str(&event.to_string()) {
        Ok(r) => r,
        Err(e) => {
            return json!({"statusCode": 400, "headers": {"content-type": "application/json"}, "body": json!({"error": {"code": "invalid_request", "message": e.to_string()}}).to_string(), "isBase64Encoded": false});
        }
    };
    let resp = match http.clone().oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let status = resp.status().as_u16();
    let headers: serde_json::Map<String, serde_json::Value> = resp
        .headers()
        .iter()
        .filter_map(|(k, v)| {
            v.to_str().ok().map(|v| {
                (
                    k.as_str().to_owned(),
                    serde_json::Value::String(v.to_owned()),
                )
            })
        })
        .collect();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    json!({"statusCode": status, "headers": headers, "body": String::from_utf8_lossy(&body), "isBase64Encoded": false, "cookies": []})
}

/// The token-refresh function: scheduled runs and manual `{"mailbox_ids": [...]}`.
pub async fn run_token_refresh() -> Result<(), lambda_runtime::Error> {
    let (app, settings) = lambda_app().await?;
    let concurrency = settings.refresh_concurrency;
    lambda_runtime::run(lambda_runtime::service_fn(
        move |event: lambda_runtime::LambdaEvent<serde_json::Value>| {
            let app = app.clone();
            async move {
                // stop taking new mailboxes 30 s before the invocation's deadline
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0);
                let budget = run_budget(event.context.deadline, now_ms);
                token_refresh_event(&app, event.payload, budget, concurrency).await
            }
        },
    ))
    .await
}

/// How long a run may start new mailboxes: until 30 s before the invocation's deadline.
/// A deadline that is not a future timestamp (some local emulators send a constant) gets the
/// budget of a 15-minute Lambda.
pub fn run_budget(deadline_ms: u64, now_ms: u64) -> std::time::Duration {
    const LAMBDA_MAX_MS: u64 = 15 * 60 * 1000;
    let left = if deadline_ms > now_ms && deadline_ms - now_ms <= LAMBDA_MAX_MS {
        deadline_ms - now_ms
    } else {
        LAMBDA_MAX_MS
    };
    std::time::Duration::from_millis(left.saturating_sub(30_000))
}

/// Handle one token-refresh event; prints the EMF metrics line; returns the summary.
pub async fn token_refresh_event(
    app: &App,
    event: serde_json::Value,
    budget: std::time::Duration,
    concurrency: usize,
) -> Result<serde_json::Value, lambda_runtime::Error> {
    let request = crate::service::refresh::parse_event(&event).map_err(|e| {
        tracing::error!(error = %e, "invalid token-refresh event");
        lambda_runtime::Error::from(e)
    })?;
    let summary = crate::service::refresh::run(app, request, budget, concurrency)
        .await
        .map_err(|e| lambda_runtime::Error::from(e.to_string()))?;
    // CloudWatch Embedded Metric Format: a JSON line on stdout becomes metrics
    println!(
        "{}",
        crate::service::refresh::emf_line(&summary, app.clock.now())
    );
    Ok(serde_json::to_value(summary)?)
}
