//! token-refresh: the scheduled job that keeps every mailbox alive, verified and honest.
//!
//! One run reads only the due mailboxes (an index on `next_due_at`), and for each, under a
//! per-mailbox job lease and with bounded concurrency: refreshes the token when it nears
//! expiry or the refresh token has been idle for a day (the token lease makes this one refresh
//! across all processes), verifies over SMTP (AUTH, no mail), checks the client secret's
//! expiry, writes the state with a conditional write, and sends alerts once per change.
//! Transient trouble keeps tokens and status and backs off; only permanent failures change
//! the status.

use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use serde::Serialize;
use serde_json::Value;
use time::{Duration, OffsetDateTime};

use crate::app::App;
use crate::domain::mailbox::{AuthKind, MailboxRecord, MailboxStatus};
use crate::domain::reason::{Permanence, StatusReason};
use crate::domain::{MailboxId, TenantId};

use super::alerts::{self, Alert};
use super::tokens::access_token_with_life;
use super::verify::{Failure, Verification, VerifyMode, apply, check};
use super::{ServiceError, load, modify};

/// How long one mailbox may hold the job lease (a crashed run's lease runs out by itself).
pub const JOB_LEASE: Duration = Duration::minutes(3);
/// Most due mailboxes one run takes on.
pub const MAX_PER_RUN: usize = 20_000;
/// Client-secret expiry warnings, in days before the expiry date.
pub const SECRET_WARNING_DAYS: &[i64] = &[30, 7, 1];

/// What one invocation asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum RefreshRequest {
    /// The schedule: every due mailbox.
    Due,
    /// `{"mailbox_ids": [...]}`: these now, due or not. Ids are `tenant/mbx_…`, or plain
    /// `mbx_…` with a `tenant` field beside the list.
    Chosen(Vec<(TenantId, MailboxId)>),
}

/// Accept the EventBridge Scheduler input (anything, possibly empty), the classic
/// "Scheduled Event" envelope, or a manual `{"mailbox_ids": [...]}`.
pub fn parse_event(event: &Value) -> Result<RefreshRequest, String> {
    let Some(ids) = event.get("mailbox_ids") else {
        return Ok(RefreshRequest::Due);
    };
    let default_tenant = event.get("tenant").and_then(Value::as_str);
    let list = ids.as_array().ok_or("mailbox_ids must be a list")?;
    if list.is_empty() || list.len() > 1000 {
        return Err("mailbox_ids must list 1–1000 mailboxes".into());
    }
    let mut out = Vec::new();
    for item in list {
        let raw = item.as_str().ok_or("mailbox_ids must be strings")?;
        let (tenant, id) = match raw.rsplit_once('/') {
            Some((t, id)) => (t, id),
            None => (
                default_tenant.ok_or(format!(
                    "`{raw}` names no tenant: use tenant/mbx_… or a tenant field"
                ))?,
                raw,
            ),
        };
        let tenant = TenantId::parse(tenant).ok_or(format!("`{tenant}` is not a tenant id"))?;
        let id = MailboxId::parse(id).ok_or(format!("`{id}` is not a mailbox id"))?;
        out.push((tenant, id));
    }
    Ok(RefreshRequest::Chosen(out))
}

/// The run's summary (returned, logged, and published as CloudWatch EMF metrics).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RunSummary {
    pub due: usize,
    pub processed: usize,
    pub refreshed: usize,
    pub verified: usize,
    pub transient_failures: usize,
    pub newly_broken: usize,
    pub recovered: usize,
    pub still_not_verified: usize,
    pub skipped_leased: usize,
    pub skipped_not_due: usize,
    pub not_found: usize,
    pub warnings_set: usize,
    pub alerts_sent: usize,
    pub alerts_pending: usize,
    /// True when the run stopped taking new mailboxes because its time ran out.
    pub cut_short: bool,
    pub duration_ms: u64,
}

#[derive(Default)]
struct Outcome {
    refreshed: bool,
    verified: bool,
    transient: bool,
    newly_broken: bool,
    recovered: bool,
    still_broken: bool,
    skipped_leased: bool,
    skipped_not_due: bool,
    not_found: bool,
    warning_set: bool,
    alerts_sent: usize,
    alerts_pending: usize,
}

/// Run once. `budget`: how long new mailboxes may still be started (the rest is left for the
/// next run, which picks up whatever is still due).
pub async fn run(
    app: &App,
    request: RefreshRequest,
    budget: StdDuration,
    concurrency: usize,
) -> Result<RunSummary, ServiceError> {
    let started = Instant::now();
    let now = app.clock.now();
    let (targets, manual): (Vec<(TenantId, MailboxId)>, bool) = match request {
        RefreshRequest::Due => (
            app.mailboxes
                .due(now, MAX_PER_RUN)
                .await?
                .into_iter()
                .map(|r| (r.tenant, r.id))
                .collect(),
            false,
        ),
        RefreshRequest::Chosen(ids) => (ids, true),
    };
    let mut summary = RunSummary {
        due: targets.len(),
        ..Default::default()
    };
    let semaphore = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (tenant, id) in targets {
        let permit = semaphore
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| ServiceError::Unavailable(e.to_string()))?;
        if started.elapsed() > budget {
            summary.cut_short = true;
            break;
        }
        let app = app.clone();
        tasks.spawn(async move {
            let _permit = permit;
            process(&app, &tenant, &id, manual).await
        });
    }
    while let Some(done) = tasks.join_next().await {
        let Ok(o) = done else { continue };
        summary.processed += usize::from(!(o.skipped_leased || o.skipped_not_due || o.not_found));
        summary.refreshed += usize::from(o.refreshed);
        summary.verified += usize::from(o.verified);
        summary.transient_failures += usize::from(o.transient);
        summary.newly_broken += usize::from(o.newly_broken);
        summary.recovered += usize::from(o.recovered);
        summary.still_not_verified += usize::from(o.still_broken);
        summary.skipped_leased += usize::from(o.skipped_leased);
        summary.skipped_not_due += usize::from(o.skipped_not_due);
        summary.not_found += usize::from(o.not_found);
        summary.warnings_set += usize::from(o.warning_set);
        summary.alerts_sent += o.alerts_sent;
        summary.alerts_pending += o.alerts_pending;
    }
    summary.duration_ms = started.elapsed().as_millis() as u64;
    tracing::info!(summary = %serde_json::to_string(&summary).unwrap_or_default(), "token-refresh run finished");
    Ok(summary)
}

/// The run's counts as one CloudWatch Embedded Metric Format line (namespace `OutgoingMail`,
/// no dimensions), for stdout in Lambda.
pub fn emf_line(s: &RunSummary, at: OffsetDateTime) -> String {
    let metrics = [
        ("Due", s.due),
        ("Refreshed", s.refreshed),
        ("Verified", s.verified),
        ("TransientFailures", s.transient_failures),
        ("NewlyBroken", s.newly_broken),
        ("Recovered", s.recovered),
        (
            "MailboxesNotVerified",
            s.still_not_verified + s.newly_broken,
        ),
        ("SkippedLeased", s.skipped_leased),
        ("AlertsSent", s.alerts_sent),
    ];
    let mut v = serde_json::json!({
        "_aws": {
            "Timestamp": (at.unix_timestamp_nanos() / 1_000_000) as i64,
            "CloudWatchMetrics": [{
                "Namespace": "OutgoingMail",
                "Dimensions": [[]],
                "Metrics": metrics.iter().map(|(n, _)| serde_json::json!({"Name": n, "Unit": "Count"})).collect::<Vec<_>>(),
            }],
        },
        "DurationMs": s.duration_ms,
    });
    for (name, value) in metrics {
        v[name] = Value::from(value);
    }
    v.to_string()
}

fn days_until(date: time::Date, now: OffsetDateTime) -> i64 {
    (date - now.date()).whole_days()
}

/// The warning threshold (30, 7 or 1 days) the secret's expiry has crossed, if any.
fn secret_threshold(m: &MailboxRecord, now: OffsetDateTime) -> Option<(i64, i64)> {
    let expires = m.spec.client_secret_expires_at?.date();
    let left = days_until(expires, now);
    if left < 0 {
        return None;
    }
    SECRET_WARNING_DAYS
        .iter()
        .rev()
        .find(|d| left <= **d)
        .map(|d| (*d, left))
}

async fn process(app: &App, tenant: &TenantId, id: &MailboxId, manual: bool) -> Outcome {
    let mut o = Outcome::default();
    let lease_key = format!("job/{tenant}/{id}");
    let holder = uuid::Uuid::new_v4().simple().to_string();
    match app
        .leases
        .try_acquire(&lease_key, &holder, app.clock.now(), JOB_LEASE)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            o.skipped_leased = true;
            return o;
        }
        Err(e) => {
            tracing::warn!(mailbox = %id, error = %e, "lease store unavailable");
            o.transient = true;
            return o;
        }
    }
    work(app, tenant, id, manual, &mut o).await;
    if let Err(e) = app.leases.release(&lease_key, &holder).await {
        tracing::warn!(mailbox = %id, error = %e, "could not release the job lease (it expires by itself)");
    }
    o
}

async fn work(app: &App, tenant: &TenantId, id: &MailboxId, manual: bool, o: &mut Outcome) {
    // the index may be stale: read the record itself
    let record = match load(app, tenant, id).await {
        Ok(r) => r,
        Err(ServiceError::NotFound) => {
            o.not_found = true;
            return;
        }
        Err(e) => {
            tracing::warn!(mailbox = %id, error = %e, "could not read the mailbox");
            o.transient = true;
            return;
        }
    };
    let now = app.clock.now();
    if !manual && record.state.next_due_at.is_none_or(|d| d > now) {
        o.skipped_not_due = true;
        return;
    }
    let oauth = record.spec.auth == AuthKind::Oauth2;
    if oauth && !record.state.has_refresh_token && !record.state.alerts_pending {
        o.skipped_not_due = true;
        return;
    }
    let before = record.state.status;
    let fingerprint = record.spec.verification_fingerprint();
    let policy = app.due_policy;

    let expired_secret = record
        .spec
        .client_secret_expires_at
        .is_some_and(|d| days_until(d.date(), now) < 0);
    // broken in a way only a person can fix: don't knock on the provider again, just report
    let needs_person = (oauth && !record.state.has_refresh_token)
        || (!manual
            && record.state.status == MailboxStatus::NotVerified
            && record
                .state
                .status_reason
                .is_some_and(StatusReason::needs_person));
    let verification = if needs_person {
        Verification {
            result: Err(Failure {
                reason: record
                    .state
                    .status_reason
                    .unwrap_or(StatusReason::SmtpError),
                detail: record.state.status_detail.clone().unwrap_or_default(),
                permanence: Permanence::Permanent,
            }),
            refreshed: None,
        }
    } else if expired_secret {
        Verification {
            result: Err(Failure {
                reason: StatusReason::ClientSecretExpired,
                detail: "client_secret_expires_at has passed".into(),
                permanence: Permanence::Permanent,
            }),
            refreshed: None,
        }
    } else {
        let mut refreshed = None;
        let mut early: Option<Failure> = None;
        if oauth
            && let Ok(resolved) = record.spec.resolve()
            && let Some(settings) = resolved.oauth
        {
            let s = &record.state;
            let idle = s
                .refresh_token_last_used_at
                .or(s.authorized_at)
                .is_none_or(|t| now - t >= policy.refresh_token_max_idle);
            // an idle refresh token is used even if the access token is fresh
            let min_life = if idle {
                Duration::days(365)
            } else {
                policy.token_margin
            };
            match access_token_with_life(app, &record, &settings, None, min_life).await {
                Ok(t) => refreshed = t.refreshed,
                Err(e) => early = Some(e.into()),
            }
        }
        match early {
            Some(f) => Verification {
                result: Err(f),
                refreshed,
            },
            None => {
                let mut v = check(app, &record).await;
                v.refreshed = v.refreshed.or(refreshed);
                v
            }
        }
    };
    o.refreshed = verification.refreshed.is_some();

    let threshold = secret_threshold(&record, now);
    let saved = modify(app, tenant, id, |r| {
        if r.spec.verification_fingerprint() != fingerprint {
            // an admin changed the authorization meanwhile: this result is about the old one
            return false;
        }
        apply(&mut r.state, &verification, VerifyMode::Scheduled, now);
        r.state.last_checked_at = Some(now);
        for d in SECRET_WARNING_DAYS {
            r.state.clear_warning(&format!("client_secret_expires_{d}d"));
        }
        if let Some((d, left)) = threshold {
            r.state.set_warning(
                &format!("client_secret_expires_{d}d"),
                format!("The client secret expires in {left} day(s). In Entra ID → App registrations → Certificates & secrets, create a new client secret and enter its Value here before it expires."),
            );
        }
        true
    })
    .await;
    let saved = match saved {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(mailbox = %id, error = %e, "could not record the refresh result");
            o.transient = true;
            return;
        }
    };
    if saved.state.last_checked_at != Some(now) {
        // skipped because of a concurrent admin change
        return;
    }
    match &verification.result {
        Ok(()) => o.verified = true,
        Err(f) if f.permanence == Permanence::Transient => o.transient = true,
        Err(_) => {}
    }
    let after = saved.state.status;
    o.newly_broken = before != MailboxStatus::NotVerified && after == MailboxStatus::NotVerified;
    o.recovered = before == MailboxStatus::NotVerified && after == MailboxStatus::Verified;
    o.still_broken = before == MailboxStatus::NotVerified && after == MailboxStatus::NotVerified;
    o.warning_set = threshold.is_some();
    if let Err(f) = &verification.result {
        tracing::warn!(tenant = %tenant, mailbox = %id, reason = f.reason.code(), permanence = ?f.permanence, detail = %f.detail, "scheduled check failed");
    }

    // alerts, once per change
    let changed_at = saved
        .state
        .status_changed_at
        .map(|t| t.unix_timestamp())
        .unwrap_or_default();
    let mut due_alerts: Vec<Alert> = Vec::new();
    if after == MailboxStatus::NotVerified
        && (o.newly_broken || before == MailboxStatus::NotVerified)
    {
        let reason = saved.state.status_reason.unwrap_or(StatusReason::SmtpError);
        due_alerts.push(Alert {
            key: format!("broken:{}:{changed_at}", reason.code()),
            kind: "broken",
            subject: format!("Mailbox {} stopped working: {}", saved.spec.username, reason.code()),
            text: format!(
                "The outgoing mailbox {} ({}) is Not Verified.\n\nReason: {}\nWhat to do: {}\n{}\nUntil it is fixed, notifications are sent from the platform's default sender.",
                saved.spec.username,
                saved.id,
                reason.code(),
                reason.message(),
                saved.state.status_detail.as_deref().map(|d| format!("Details: {d}\n")).unwrap_or_default(),
            ),
        });
    }
    if o.recovered {
        due_alerts.push(Alert {
            key: format!("resolved:{changed_at}"),
            kind: "resolved",
            subject: format!("Mailbox {} works again", saved.spec.username),
            text: format!(
                "The outgoing mailbox {} ({}) is Verified again. Notifications are sent from it.",
                saved.spec.username, saved.id
            ),
        });
    }
    if let (Some((d, left)), Some(date)) = (threshold, saved.spec.client_secret_expires_at) {
        let date: String = date.into();
        due_alerts.push(Alert {
            key: format!("secret-expiry:{date}:{d}"),
            kind: "warning",
            subject: format!("The client secret of mailbox {} expires in {left} day(s)", saved.spec.username),
            text: format!(
                "The client secret of the outgoing mailbox {} ({}) expires on {date}.\n\nIn Entra ID open App registrations → your app → Certificates & secrets, create a new client secret, and enter its Value in the mailbox settings before then. Otherwise the mailbox stops working on that day.",
                saved.spec.username, saved.id
            ),
        });
    }
    let pending: Vec<Alert> = due_alerts
        .into_iter()
        .filter(|a| !saved.state.alerts_sent.contains(&a.key))
        .collect();
    let mut sent_keys = Vec::new();
    for alert in &pending {
        match alerts::send(app, &saved, alert).await {
            Ok(true) => {
                o.alerts_sent += 1;
                sent_keys.push(alert.key.clone());
            }
            // nowhere to send: remember it anyway, there is nothing to retry
            Ok(false) => sent_keys.push(alert.key.clone()),
            Err(e) => {
                o.alerts_pending += 1;
                tracing::warn!(mailbox = %id, key = %alert.key, error = %e, "alert not sent yet; retried next run");
            }
        }
    }
    if !sent_keys.is_empty() || saved.state.alerts_pending {
        let all_done = o.alerts_pending == 0;
        let _ = modify(app, tenant, id, |r| {
            r.state.alerts_pending = !all_done;
            for k in &sent_keys {
                if !r.state.alerts_sent.contains(k) {
                    r.state.alerts_sent.push(k.clone());
                }
            }
            let excess = r.state.alerts_sent.len().saturating_sub(20);
            r.state.alerts_sent.drain(..excess);
            true
        })
        .await;
    }
}
