//! Lambda function `send-notification` (behaviour arrives with its issue; for now it starts under
//! lambda_runtime and answers every event with a clear "not implemented" error).

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    outgoing_mail::telemetry::init();
    lambda_runtime::run(service_fn(|_event: LambdaEvent<Value>| async {
        Err::<Value, Error>("send-notification is not implemented yet".into())
    }))
    .await
}
