//! AWS backend: DynamoDB for records and authorization states, Secrets Manager for secrets.
//!
//! Table layout (one table, see template.yaml):
//! - mailbox: `pk = T#<tenant>`, `sk = M#<mailbox id>`, `version` (N), `data` (S: the record as JSON)
//! - authorization state: `pk = S#<state>`, `sk = S`, `data`, `ttl` (N, epoch seconds; reads
//!   check expiry themselves because DynamoDB deletes expired items late)
//!
//! - lease: `pk = L#<key>`, `sk = L`, `holder`, `until_ms` (N), `ttl`
//! - delivery (idempotency): `pk = D#<tenant>#<notification id>`, `sk = D`, `status`
//!   (`in_flight` | `done`), `lease_until_ms` (N), `ttl`, `data` (the final record)
//!
//! Secrets: one per mailbox, named `<prefix><tenant>/<mailbox id>`, holding the JSON of
//! [`MailboxSecret`].

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
    KeyType, Projection, ProjectionType, ReturnValue, ScalarAttributeType,
};
use aws_sdk_secretsmanager::error::ProvideErrorMetadata;
use time::OffsetDateTime;

use crate::domain::mailbox::MailboxRecord;
use crate::domain::{MailboxId, TenantId};
use crate::ports::{
    AuthState, AuthStateStore, Claim, DeliveryLog, DeliveryRecord, LeaseStore, MailboxSecret,
    MailboxStore, SecretStore, StoreError,
};

/// The name of the due-time index used by the refresh job.
pub const DUE_INDEX: &str = "due";

fn unavailable<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn sdk_error<E, R>(e: aws_sdk_dynamodb::error::SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let code = e.code().unwrap_or("unknown").to_owned();
    let msg = e.message().unwrap_or_default().to_owned();
    StoreError::Unavailable(format!(
        "{code}: {msg} ({})",
        aws_sdk_dynamodb::error::DisplayErrorContext(&e)
    ))
}

pub use aws_config::SdkConfig;

/// The roots AWS service endpoints chain to (Amazon Trust Services: Amazon Root CA 1–4 and
/// the Starfield Services G2 cross-sign), from the ca-certificates package.
const AWS_TRUST_ROOTS: &[u8] = include_bytes!("aws-trust-roots.pem");

/// Load the shared AWS configuration once (region, credentials, `AWS_ENDPOINT_URL`).
///
/// The SDK's default HTTPS client loads and parses the whole system trust store (~140 PEM
/// certificates) when the first client is built: ~78 % of a function's init instructions.
/// AWS endpoints only need the Amazon Trust Services roots, parsed in a fraction of that.
///
/// `attempt_timeout` bounds one attempt of a call (`OUTGOING_MAIL_AWS_TIMEOUT_SECS`); the whole
/// call, retries included, gets three times as long.
pub async fn load_sdk_config(attempt_timeout: std::time::Duration) -> aws_config::SdkConfig {
    use aws_sdk_dynamodb::config::StalledStreamProtectionConfig;
    use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
    use aws_smithy_http_client::tls::{self, TlsContext, TrustStore, rustls_provider::CryptoMode};
    use std::time::Duration;
    let trust = TrustStore::empty()
        .with_native_roots(false)
        .with_pem_certificate(AWS_TRUST_ROOTS);
    let loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        // Every call here is small: a hung one must fail (and be retried) within seconds, not
        // hold the function until Lambda's own timeout. Bounded attempts also make the
        // stalled-stream watchdog (meant for large downloads) redundant.
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3).min(attempt_timeout))
                .operation_attempt_timeout(attempt_timeout)
                .operation_timeout(attempt_timeout * 3)
                .build(),
        )
        .stalled_stream_protection(StalledStreamProtectionConfig::disabled());
    let loader = match TlsContext::builder().with_trust_store(trust).build() {
        Ok(ctx) => loader.http_client(
            aws_smithy_http_client::Builder::new()
                .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
                .tls_context(ctx)
                .build_https(),
        ),
        // cannot happen with the embedded roots; the SDK's default client still works
        Err(_) => loader,
    };
    loader.load().await
}

#[derive(Clone)]
pub struct DynamoStore {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn mailbox_key(tenant: &TenantId, id: &MailboxId) -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("pk".to_owned(), s(format!("T#{tenant}"))),
        ("sk".to_owned(), s(format!("M#{id}"))),
    ])
}

fn state_key(state: &str) -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("pk".to_owned(), s(format!("S#{state}"))),
        ("sk".to_owned(), s("S")),
    ])
}

fn data_of<T: serde::de::DeserializeOwned>(
    item: &HashMap<String, AttributeValue>,
) -> Result<T, StoreError> {
    let data = item
        .get("data")
        .and_then(|v| v.as_s().ok())
        .ok_or_else(|| StoreError::Corrupt("item has no data attribute".into()))?;
    serde_json::from_str(data).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Shards of the due index: spreads a run's queries over several partitions.
pub const DUE_SHARDS: u8 = 8;

fn due_shard(id: &MailboxId) -> String {
    let last = id.as_str().bytes().last().unwrap_or(b'0');
    format!("DUE#{}", last % DUE_SHARDS)
}

fn mailbox_item(r: &MailboxRecord) -> Result<HashMap<String, AttributeValue>, StoreError> {
    let mut item = mailbox_key(&r.tenant, &r.id);
    item.insert("version".into(), AttributeValue::N(r.version.to_string()));
    item.insert(
        "created_at".into(),
        s(r.created_at.unix_timestamp_nanos().to_string()),
    );
    item.insert(
        "data".into(),
        s(serde_json::to_string(r).map_err(|e| StoreError::Corrupt(e.to_string()))?),
    );
    if let Some(due) = r.state.next_due_at {
        item.insert("due_shard".into(), s(due_shard(&r.id)));
        item.insert(
            "due_at".into(),
            AttributeValue::N(due.unix_timestamp().to_string()),
        );
    }
    Ok(item)
}

impl DynamoStore {
    pub fn new(config: &aws_config::SdkConfig, table: impl Into<String>) -> Self {
        Self {
            client: aws_sdk_dynamodb::Client::new(config),
            table: table.into(),
        }
    }

    /// Create the table (as template.yaml declares it) if it does not exist. For the local
    /// server against an emulator and for tests; in AWS the template owns the table.
    pub async fn create_table_if_missing(&self) -> Result<(), StoreError> {
        let attr = |n: &str, t: ScalarAttributeType| {
            AttributeDefinition::builder()
                .attribute_name(n)
                .attribute_type(t)
                .build()
                .map_err(unavailable)
        };
        let key = |n: &str, t: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(n)
                .key_type(t)
                .build()
                .map_err(unavailable)
        };
        let result = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attr("pk", ScalarAttributeType::S)?)
            .attribute_definitions(attr("sk", ScalarAttributeType::S)?)
            .attribute_definitions(attr("due_shard", ScalarAttributeType::S)?)
            .attribute_definitions(attr("due_at", ScalarAttributeType::N)?)
            .key_schema(key("pk", KeyType::Hash)?)
            .key_schema(key("sk", KeyType::Range)?)
            .global_secondary_indexes(
                GlobalSecondaryIndex::builder()
                    .index_name(DUE_INDEX)
                    .key_schema(key("due_shard", KeyType::Hash)?)
                    .key_schema(key("due_at", KeyType::Range)?)
                    .projection(
                        Projection::builder()
                            .projection_type(ProjectionType::All)
                            .build(),
                    )
                    .build()
                    .map_err(unavailable)?,
            )
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_resource_in_use_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(sdk_error(e)),
        }
    }
}

#[async_trait]
impl MailboxStore for DynamoStore {
    async fn insert(&self, record: &MailboxRecord) -> Result<MailboxRecord, StoreError> {
        let mut r = record.clone();
        r.version = 1;
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(mailbox_item(&r)?))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match result {
            Ok(_) => Ok(r),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_conditional_check_failed_exception()) =>
            {
                Err(StoreError::Conflict)
            }
            Err(e) => Err(sdk_error(e)),
        }
    }

    async fn get(
        &self,
        tenant: &TenantId,
        id: &MailboxId,
    ) -> Result<Option<MailboxRecord>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(mailbox_key(tenant, id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk_error)?;
        out.item().map(data_of).transpose()
    }

    async fn list(&self, tenant: &TenantId) -> Result<Vec<MailboxRecord>, StoreError> {
        let items: Vec<HashMap<String, AttributeValue>> = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :m)")
            .expression_attribute_values(":pk", s(format!("T#{tenant}")))
            .expression_attribute_values(":m", s("M#"))
            .consistent_read(true)
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(sdk_error)?;
        let mut out = items
            .iter()
            .map(data_of::<MailboxRecord>)
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_by(|a, b| (a.created_at, a.id.as_str()).cmp(&(b.created_at, b.id.as_str())));
        Ok(out)
    }

    async fn update(&self, record: &MailboxRecord) -> Result<MailboxRecord, StoreError> {
        let mut r = record.clone();
        let expected = r.version;
        r.version = expected + 1;
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(mailbox_item(&r)?))
            .condition_expression("version = :expected")
            .expression_attribute_values(":expected", AttributeValue::N(expected.to_string()))
            .return_values_on_condition_check_failure(
                aws_sdk_dynamodb::types::ReturnValuesOnConditionCheckFailure::AllOld,
            )
            .send()
            .await;
        match result {
            Ok(_) => Ok(r),
            Err(e) => match e.as_service_error() {
                Some(aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(c)) => {
                    // no old item → the mailbox was deleted meanwhile
                    if c.item().is_some_and(|i| !i.is_empty()) { Err(StoreError::Conflict) } else { Err(StoreError::NotFound) }
                }
                _ => Err(sdk_error(e)),
            },
        }
    }

    async fn delete(&self, tenant: &TenantId, id: &MailboxId) -> Result<bool, StoreError> {
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(mailbox_key(tenant, id)))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(out.attributes().is_some_and(|a| !a.is_empty()))
    }

    async fn due(
        &self,
        now: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<MailboxRecord>, StoreError> {
        // The shards are queried at once: an idle run (nothing due, every few minutes) costs
        // one round trip of latency, not DUE_SHARDS of them. Each shard yields its items in
        // due order, so its first `limit` are all it can contribute to the earliest `limit`.
        let mut shards = tokio::task::JoinSet::new();
        for shard in 0..DUE_SHARDS {
            let query = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(DUE_INDEX)
                .key_condition_expression("due_shard = :s AND due_at <= :now")
                .expression_attribute_values(":s", s(format!("DUE#{shard}")))
                .expression_attribute_values(
                    ":now",
                    AttributeValue::N(now.unix_timestamp().to_string()),
                );
            shards.spawn(async move {
                let mut found = Vec::new();
                let mut pages = query.into_paginator().items().send();
                while let Some(item) = pages.next().await {
                    found.push(data_of(&item.map_err(sdk_error)?)?);
                    if found.len() >= limit {
                        break;
                    }
                }
                Ok::<_, StoreError>(found)
            });
        }
        let mut out: Vec<MailboxRecord> = Vec::new();
        while let Some(joined) = shards.join_next().await {
            let found =
                joined.map_err(|e| StoreError::Unavailable(format!("due query: {e}")))??;
            out.extend(found);
        }
        out.sort_by_key(|r| r.state.next_due_at);
        out.truncate(limit);
        Ok(out)
    }
}
#[async_trait]
impl AuthStateStore for DynamoStore {
    async fn put_state(&self, state: &AuthState) -> Result<(), StoreError> {
        let mut item = state_key(state.state.expose());
        item.insert(
            "data".into(),
            s(serde_json::to_string(state).map_err(|e| StoreError::Corrupt(e.to_string()))?),
        );
        item.insert(
            "ttl".into(),
            AttributeValue::N(state.expires_at.unix_timestamp().to_string()),
        );
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_conditional_check_failed_exception()) =>
            {
                Err(StoreError::Conflict)
            }
            Err(e) => Err(sdk_error(e)),
        }
    }

    async fn take_state(&self, state: &str) -> Result<Option<AuthState>, StoreError> {
        // DeleteItem returning the old item is atomic: only one caller gets it.
        let out = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(state_key(state)))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(sdk_error)?;
        match out.attributes() {
            Some(item) if !item.is_empty() => data_of(item).map(Some),
            _ => Ok(None),
        }
    }
}

fn millis(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn is_condition_failed<R>(
    e: &aws_sdk_dynamodb::error::SdkError<aws_sdk_dynamodb::operation::put_item::PutItemError, R>,
) -> bool {
    e.as_service_error()
        .is_some_and(|se| se.is_conditional_check_failed_exception())
}

#[async_trait]
impl LeaseStore for DynamoStore {
    async fn try_acquire(
        &self,
        key: &str,
        holder: &str,
        now: OffsetDateTime,
        ttl: time::Duration,
    ) -> Result<bool, StoreError> {
        let until = now + ttl;
        let item = HashMap::from([
            ("pk".to_owned(), s(format!("L#{key}"))),
            ("sk".to_owned(), s("L")),
            ("holder".to_owned(), s(holder)),
            ("until_ms".to_owned(), n(millis(until))),
            ("ttl".to_owned(), n(until.unix_timestamp() + 3600)),
        ]);
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk) OR until_ms < :now")
            .expression_attribute_values(":now", n(millis(now)))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failed(&e) => Ok(false),
            Err(e) => Err(sdk_error(e)),
        }
    }

    async fn release(&self, key: &str, holder: &str) -> Result<(), StoreError> {
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(format!("L#{key}")))
            .key("sk", s("L"))
            .condition_expression("holder = :h")
            .expression_attribute_values(":h", s(holder))
            .send()
            .await;
        conditional_delete(result)
    }
}

/// A conditional delete whose condition failed deleted nothing that was ours: that's fine.
fn conditional_delete<R: std::fmt::Debug>(
    result: Result<
        aws_sdk_dynamodb::operation::delete_item::DeleteItemOutput,
        aws_sdk_dynamodb::error::SdkError<
            aws_sdk_dynamodb::operation::delete_item::DeleteItemError,
            R,
        >,
    >,
) -> Result<(), StoreError> {
    match result {
        Ok(_) => Ok(()),
        Err(e)
            if e.as_service_error()
                .is_some_and(|se| se.is_conditional_check_failed_exception()) =>
        {
            Ok(())
        }
        Err(e) => Err(sdk_error(e)),
    }
}

fn delivery_key(tenant: &TenantId, id: &str) -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("pk".to_owned(), s(format!("D#{tenant}#{id}"))),
        ("sk".to_owned(), s("D")),
    ])
}

#[async_trait]
impl DeliveryLog for DynamoStore {
    async fn claim(
        &self,
        tenant: &TenantId,
        notification_id: &str,
        now: OffsetDateTime,
        lease: time::Duration,
    ) -> Result<Claim, StoreError> {
        let mut item = delivery_key(tenant, notification_id);
        item.insert("status".into(), s("in_flight"));
        item.insert("lease_until_ms".into(), n(millis(now + lease)));
        item.insert("ttl".into(), n((now + lease).unix_timestamp()));
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            // free, or a crashed sender's claim ran out, or an old record DynamoDB has not reaped yet
            .condition_expression("attribute_not_exists(pk) OR (#st = :inflight AND lease_until_ms < :now) OR #ttl < :nows")
            .expression_attribute_names("#st", "status")
            .expression_attribute_names("#ttl", "ttl")
            .expression_attribute_values(":inflight", s("in_flight"))
            .expression_attribute_values(":now", n(millis(now)))
            .expression_attribute_values(":nows", n(now.unix_timestamp()))
            .return_values_on_condition_check_failure(aws_sdk_dynamodb::types::ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(Claim::Started),
            Err(e) => match e.as_service_error() {
                Some(aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(c)) => {
                    let old = c.item();
                    let done = old.and_then(|i| i.get("status")).and_then(|v| v.as_s().ok()).is_some_and(|v| v == "done");
                    match (done, old) {
                        (true, Some(item)) => Ok(Claim::Done(Box::new(data_of(item)?))),
                        _ => Ok(Claim::InFlight),
                    }
                }
                _ => Err(sdk_error(e)),
            },
        }
    }

    async fn complete(
        &self,
        record: &DeliveryRecord,
        keep: time::Duration,
    ) -> Result<(), StoreError> {
        let mut item = delivery_key(&record.tenant, &record.notification_id);
        item.insert("status".into(), s("done"));
        item.insert("lease_until_ms".into(), n(0));
        item.insert(
            "ttl".into(),
            n((record.completed_at + keep).unix_timestamp()),
        );
        item.insert(
            "data".into(),
            s(serde_json::to_string(record).map_err(|e| StoreError::Corrupt(e.to_string()))?),
        );
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map(|_| ())
            .map_err(sdk_error)
    }

    async fn release(&self, tenant: &TenantId, notification_id: &str) -> Result<(), StoreError> {
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(delivery_key(tenant, notification_id)))
            .condition_expression("#st = :inflight")
            .expression_attribute_names("#st", "status")
            .expression_attribute_values(":inflight", s("in_flight"))
            .send()
            .await;
        conditional_delete(result)
    }
}

#[derive(Clone)]
pub struct SecretsManagerStore {
    client: aws_sdk_secretsmanager::Client,
    prefix: String,
}

impl SecretsManagerStore {
    pub fn new(config: &aws_config::SdkConfig, prefix: impl Into<String>) -> Self {
        Self {
            client: aws_sdk_secretsmanager::Client::new(config),
            prefix: prefix.into(),
        }
    }

    pub fn secret_name(&self, tenant: &TenantId, id: &MailboxId) -> String {
        format!("{}{}/{}", self.prefix, tenant, id)
    }
}

fn sm_error<E, R>(e: aws_sdk_secretsmanager::error::SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    // DisplayErrorContext never includes request bodies, so no secret value can leak here.
    StoreError::Unavailable(format!(
        "{}: {}",
        e.code().unwrap_or("unknown"),
        aws_sdk_secretsmanager::error::DisplayErrorContext(&e)
    ))
}

#[async_trait]
impl SecretStore for SecretsManagerStore {
    async fn get(
        &self,
        tenant: &TenantId,
        id: &MailboxId,
    ) -> Result<Option<MailboxSecret>, StoreError> {
        let result = self
            .client
            .get_secret_value()
            .secret_id(self.secret_name(tenant, id))
            .send()
            .await;
        match result {
            Ok(out) => {
                let text = out
                    .secret_string()
                    .ok_or_else(|| StoreError::Corrupt("secret has no string value".into()))?;
                serde_json::from_str(text).map(Some).map_err(|e| {
                    StoreError::Corrupt(format!("secret is not valid JSON: {}", e.classify() as u8))
                })
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_resource_not_found_exception()) =>
            {
                Ok(None)
            }
            Err(e) => Err(sm_error(e)),
        }
    }

    async fn put(
        &self,
        tenant: &TenantId,
        id: &MailboxId,
        secret: &MailboxSecret,
    ) -> Result<(), StoreError> {
        let name = self.secret_name(tenant, id);
        let body = serde_json::to_string(secret).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let put = self
            .client
            .put_secret_value()
            .secret_id(&name)
            .secret_string(&body)
            .send()
            .await;
        match put {
            Ok(_) => return Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_resource_not_found_exception()) => {}
            Err(e) => return Err(sm_error(e)),
        }
        let create = self
            .client
            .create_secret()
            .name(&name)
            .description("outgoing-mail: OAuth tokens and client secret of one mailbox")
            .secret_string(&body)
            .send()
            .await;
        match create {
            Ok(_) => Ok(()),
            // created concurrently: write our value as the new version
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_resource_exists_exception()) =>
            {
                self.client
                    .put_secret_value()
                    .secret_id(&name)
                    .secret_string(&body)
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(sm_error)
            }
            Err(e) => Err(sm_error(e)),
        }
    }

    async fn delete(&self, tenant: &TenantId, id: &MailboxId) -> Result<(), StoreError> {
        let result = self
            .client
            .delete_secret()
            .secret_id(self.secret_name(tenant, id))
            .force_delete_without_recovery(true)
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_resource_not_found_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(sm_error(e)),
        }
    }
}

/// The platform's default sender, read once from a Secrets Manager secret
/// (`OUTGOING_MAIL_DEFAULT_SENDER_SECRET`) and kept while the process is warm.
pub struct SecretDefaultSender {
    secret_id: String,
    timeout: std::time::Duration,
    cached: tokio::sync::OnceCell<crate::service::send::DefaultSender>,
}

impl SecretDefaultSender {
    pub fn new(secret_id: String, timeout: std::time::Duration) -> Self {
        Self {
            secret_id,
            timeout,
            cached: tokio::sync::OnceCell::new(),
        }
    }
}

#[async_trait]
impl crate::service::send::DefaultSenderSource for SecretDefaultSender {
    async fn load(&self) -> Result<Option<crate::service::send::DefaultSender>, StoreError> {
        let sender = self
            .cached
            .get_or_try_init(|| async {
                let sdk = load_sdk_config(self.timeout).await;
                let client = aws_sdk_secretsmanager::Client::new(&sdk);
                let out = client
                    .get_secret_value()
                    .secret_id(&self.secret_id)
                    .send()
                    .await
                    .map_err(sm_error)?;
                let text = out.secret_string().ok_or_else(|| {
                    StoreError::Corrupt("the default sender secret has no string value".into())
                })?;
                crate::service::send::DefaultSender::parse(text)
                    .map_err(|e| StoreError::Corrupt(format!("default sender secret {}", e)))
            })
            .await?;
        Ok(Some(sender.clone()))
    }
}
