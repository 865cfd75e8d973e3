//! Lambda function `send-notification`: SQS batches (partial batch failures), direct
//! invocation with a notification, and `POST /notifications` from the HTTP API.

// A sandbox handles one invocation at a time: a single-threaded runtime hands no task between
// threads (measured: 20–35 % less CPU per warm invocation, BENCHMARKS.md).
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    outgoing_mail::lambda::run_send_notification().await
}
