//! Logging setup: JSON lines in Lambda (AWS_LAMBDA_LOG_FORMAT=JSON), human lines locally.
//! Levels come from RUST_LOG or AWS_LAMBDA_LOG_LEVEL. Secrets are never logged: they are
//! `Sensitive` values whose Debug and Display print `[redacted]`.

use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// `RUST_LOG`-style directives without regular expressions (`info`,
/// `outgoing_mail=debug,warn`): `Targets` keeps the regex engine of `EnvFilter` out of every
/// Lambda binary. Lambda's `FATAL` is `error` here; anything unreadable is `info`, and targets
/// no directive names log at `info` (a typo never silences the logs).
fn filter(directives: &str) -> Targets {
    let directives = directives
        .trim()
        .to_ascii_lowercase()
        .replace("fatal", "error");
    let targets: Targets = directives.parse().unwrap_or_default();
    match targets.default_level() {
        Some(_) => targets,
        None => targets.with_default(Level::INFO),
    }
}

pub fn init() {
    let level = std::env::var("RUST_LOG")
        .or_else(|_| std::env::var("AWS_LAMBDA_LOG_LEVEL"))
        .unwrap_or_else(|_| "info".to_owned());
    let json = std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"))
        || std::env::var("AWS_LAMBDA_FUNCTION_NAME").is_ok();
    let registry = tracing_subscriber::registry().with(filter(&level));
    let _ = if json {
        registry
            .with(
                fmt::layer()
                    .json()
                    .without_time()
                    .with_current_span(false)
                    .with_target(false),
            )
            .try_init()
    } else {
        registry
            .with(fmt::layer().with_ansi(false).with_target(false))
            .try_init()
    };
}

#[cfg(test)]
mod tests {
    use super::filter;
    use tracing::Level;

    #[test]
    fn levels_and_directives() {
        for (directives, target, level, enabled) in [
            ("DEBUG", "outgoing_mail", Level::DEBUG, true),
            ("DEBUG", "outgoing_mail", Level::TRACE, false),
            (
                "outgoing_mail=debug,warn",
                "outgoing_mail::service",
                Level::DEBUG,
                true,
            ),
            (
                "outgoing_mail=debug,warn",
                "aws_smithy_runtime",
                Level::INFO,
                false,
            ),
            (
                "outgoing_mail=debug,warn",
                "aws_smithy_runtime",
                Level::WARN,
                true,
            ),
            ("FATAL", "x", Level::ERROR, true),
            ("FATAL", "x", Level::WARN, false),
            // a typo never silences the logs
            ("not a level!", "x", Level::INFO, true),
            ("not a level!", "x", Level::DEBUG, false),
            ("outgoing_mail=trace", "aws_config", Level::INFO, true),
        ] {
            assert_eq!(
                filter(directives).would_enable(target, &level),
                enabled,
                "{directives}: {target} at {level}"
            );
        }
    }
}
