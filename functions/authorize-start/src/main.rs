//! Lambda function `authorize-start`: serves its routes of the HTTP API (see outgoing_mail::api::ROUTES).

use outgoing_mail::api::Function;

// A sandbox handles one invocation at a time: a single-threaded runtime hands no task between
// threads (measured: 20–35 % less CPU per warm invocation, BENCHMARKS.md).
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    outgoing_mail::lambda::run_http(Function::AuthorizeStart).await
}
