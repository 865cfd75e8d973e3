//! Alerts to a tenant's admins when a mailbox breaks, recovers, or its client secret nears
//! expiry: by e-mail through the platform's default sender (a broken mailbox cannot report
//! itself) and optionally as a JSON POST to a webhook. Idempotent per change: each alert has a
//! key, sent at most once (the delivery log) and remembered on the mailbox.

use serde_json::json;

use crate::app::App;
use crate::domain::mailbox::MailboxRecord;
use crate::domain::notification::{Notification, NotificationId};
use crate::domain::{FieldError, HeaderText};

use super::send::{Route, deliver_routed};

/// What happened to the mailbox.
#[derive(Debug, Clone)]
pub struct Alert {
    /// Idempotency key, unique per change (e.g. `broken:smtp_auth_disabled:1796400000`).
    pub key: String,
    /// `broken`, `resolved` or `warning`.
    pub kind: &'static str,
    pub subject: String,
    pub text: String,
}

/// How long to wait for a webhook.
pub const WEBHOOK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn notification(m: &MailboxRecord, alert: &Alert) -> Result<Notification, FieldError> {
    let id = format!("alert:{}:{}", m.id, alert.key);
    let id: String = id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "._:@-".contains(*c))
        .take(128)
        .collect();
    Ok(Notification {
        id: NotificationId::parse(&id)?,
        tenant: Some(m.tenant.clone()),
        mailbox_id: None,
        to: m.alert_recipients(),
        cc: Vec::new(),
        bcc: Vec::new(),
        subject: HeaderText::parse("subject", &alert.subject, 998)?,
        text: Some(alert.text.clone()),
        html: None,
        reply_to: None,
        headers: [(
            "Auto-Submitted",
            HeaderText::parse("headers", "auto-generated", 100)?,
        )]
        .into_iter()
        .collect(),
        attachments: Vec::new(),
    })
}

/// Send one alert (e-mail and webhook). `Ok(true)`: delivered now or earlier; `Ok(false)`:
/// nowhere to send it (no recipients and no webhook); `Err`: try again on the next run.
pub async fn send(app: &App, m: &MailboxRecord, alert: &Alert) -> Result<bool, String> {
    let mut sent_somewhere = false;
    if !m.alert_recipients().is_empty() {
        let n = notification(m, alert).map_err(|e| e.to_string())?;
        let result = deliver_routed(app, &m.tenant, &n, Route::DefaultSender { about: None }).await;
        match result.status {
            "delivered" | "duplicate" => sent_somewhere = true,
            "failed" => {
                tracing::warn!(mailbox = %m.id, key = %alert.key, reason = ?result.reason, "alert e-mail failed for good")
            }
            _ => {
                return Err(format!(
                    "alert e-mail not sent yet: {}",
                    result.reason.unwrap_or_default()
                ));
            }
        }
    }
    if let Some(url) = &app.alert_webhook {
        let body = json!({
            "type": format!("mailbox.{}", alert.kind),
            "key": alert.key,
            "tenant": m.tenant,
            "mailbox_id": m.id,
            "username": m.spec.username,
            "status": m.state.status,
            "status_reason": m.state.status_reason,
            "status_message": m.state.status_reason.map(|r| r.message()),
            "subject": alert.subject,
            "at": time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        });
        let resp = app
            .http
            .post(url)
            .header("Idempotency-Key", format!("{}:{}", m.id, alert.key))
            .timeout(WEBHOOK_TIMEOUT)
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("alert webhook failed: {}", e.without_url()))?;
        if !resp.status().is_success() {
            return Err(format!(
                "alert webhook answered HTTP {}",
                resp.status().as_u16()
            ));
        }
        sent_somewhere = true;
    }
    Ok(sent_somewhere)
}
