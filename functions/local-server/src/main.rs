//! `local-server`: the whole HTTP API in one process, for running without AWS.
//! Embedded store by default (`OUTGOING_MAIL_STORE=aws` uses DynamoDB/Secrets Manager,
//! e.g. an emulator via `AWS_ENDPOINT_URL`).

use std::process::ExitCode;

use base64::Engine;
use outgoing_mail::api::{ALL_FUNCTIONS, router};
use outgoing_mail::app::{App, Tenancy, open_stores};
use outgoing_mail::config::{Profile, Settings, StoreKind};
use outgoing_mail::domain::{Sensitive, TenantId};

#[tokio::main]
async fn main() -> ExitCode {
    outgoing_mail::telemetry::init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("local-server: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let settings = Settings::from_env(Profile::LocalServer).map_err(|e| e.to_string())?;
    let (token, generated) = match settings.admin_token.clone() {
        Some(t) => (t, false),
        None => {
            let mut bytes = [0u8; 24];
            getrandom::fill(&mut bytes).map_err(|e| e.to_string())?;
            (
                Sensitive::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)),
                true,
            )
        }
    };
    let tenant = TenantId::parse("local").ok_or("internal: tenant id")?;
    let stores = open_stores(&settings).await.map_err(|e| e.to_string())?;
    if settings.store == StoreKind::Aws && std::env::var_os("AWS_ENDPOINT_URL").is_some() {
        // against an emulator, create the table the template would have created
        let sdk = outgoing_mail::adapters::aws::load_sdk_config(settings.aws_timeout).await;
        let table = settings.table.clone().unwrap_or_default();
        outgoing_mail::adapters::aws::DynamoStore::new(&sdk, table)
            .create_table_if_missing()
            .await
            .map_err(|e| format!("OUTGOING_MAIL_TABLE: cannot create the table: {e}"))?;
    }
    let app = App::with_stores(
        &settings,
        Tenancy::AdminToken {
            token: token.clone(),
            tenant,
        },
        stores,
    )
    .map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| {
            format!(
                "OUTGOING_MAIL_LISTEN: cannot listen on {}: {e}",
                settings.listen
            )
        })?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!(
        "outgoing-mail local server on http://{addr} (store: {:?}, data dir: {})",
        settings.store,
        settings.data_dir.display()
    );
    if let Some(base) = &settings.public_url {
        println!(
            "redirect URI to register with your identity provider: {}",
            App::redirect_uri(base)
        );
    }
    if generated {
        // printed once so the admin can call the API; set OUTGOING_MAIL_ADMIN_TOKEN to choose it
        println!(
            "admin token (generated; send as `Authorization: Bearer <token>`): {}",
            token.expose()
        );
    }
    // the scheduled refresh job, as EventBridge would run it in AWS
    let job_app = app.clone();
    let (every, concurrency) = (settings.refresh_every, settings.refresh_concurrency);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match outgoing_mail::service::refresh::run(
                &job_app,
                outgoing_mail::service::refresh::RefreshRequest::Due,
                every / 2,
                concurrency,
            )
            .await
            {
                Ok(s) if s.due > 0 => tracing::info!(
                    due = s.due,
                    refreshed = s.refreshed,
                    verified = s.verified,
                    newly_broken = s.newly_broken,
                    "refresh job ran"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "refresh job could not run"),
            }
        }
    });
    axum::serve(listener, router(app, ALL_FUNCTIONS))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| e.to_string())
}
