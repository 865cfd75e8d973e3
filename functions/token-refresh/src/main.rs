//! Lambda function `token-refresh`: the schedule (EventBridge Scheduler or classic Scheduled
//! Event) and manual `{"mailbox_ids": [...]}` runs of the refresh job.

// A sandbox handles one invocation at a time: a single-threaded runtime hands no task between
// threads (measured: 20–35 % less CPU per warm invocation, BENCHMARKS.md).
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    outgoing_mail::lambda::run_token_refresh().await
}
