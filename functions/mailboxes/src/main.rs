//! Lambda function `mailboxes`: serves its routes of the HTTP API (see outgoing_mail::api::ROUTES).

use outgoing_mail::api::Function;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    outgoing_mail::lambda::run_http(Function::Mailboxes).await
}
