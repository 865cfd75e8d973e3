//! Logging setup: JSON lines in Lambda (AWS_LAMBDA_LOG_FORMAT=JSON), human lines locally.
//! Levels come from RUST_LOG or AWS_LAMBDA_LOG_LEVEL. Secrets are never logged: they are
//! `Sensitive` values whose Debug and Display print `[redacted]`.

use tracing_subscriber::EnvFilter;

pub fn init() {
    let level = std::env::var("RUST_LOG")
        .or_else(|_| std::env::var("AWS_LAMBDA_LOG_LEVEL").map(|l| l.to_lowercase()))
        .unwrap_or_else(|_| "info".to_owned());
    let filter = EnvFilter::try_new(&level).unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"))
        || std::env::var("AWS_LAMBDA_FUNCTION_NAME").is_ok();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let _ = if json {
        builder
            .json()
            .without_time()
            .with_current_span(false)
            .try_init()
    } else {
        builder.with_ansi(false).try_init()
    };
}
