//! Lambda function `send-notification`: SQS batches (partial batch failures), direct
//! invocation with a notification, and `POST /notifications` from the HTTP API.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    outgoing_mail::lambda::run_send_notification().await
}
