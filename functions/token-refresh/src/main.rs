//! Lambda function `token-refresh`: the schedule (EventBridge Scheduler or classic Scheduled
//! Event) and manual `{"mailbox_ids": [...]}` runs of the refresh job.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    outgoing_mail::lambda::run_token_refresh().await
}
