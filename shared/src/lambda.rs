//! Lambda glue: start an HTTP function from the environment.

use crate::api::{Function, router};
use crate::app::{App, Tenancy};
use crate::config::{Profile, Settings};

/// Read settings, wire the app, serve `function`'s routes under lambda_http.
/// A bad setting ends start-up with one line naming the variable.
pub async fn run_http(function: Function) -> Result<(), lambda_http::Error> {
    crate::telemetry::init();
    let settings = match Settings::from_env(Profile::Lambda) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            return Err(e.into());
        }
    };
    let app = App::from_settings(
        &settings,
        Tenancy::JwtClaim {
            claim: settings.tenant_claim.clone(),
        },
    )
    .await
    .inspect_err(|e| tracing::error!("{e}"))?;
    lambda_http::run(router(app, &[function])).await
}
