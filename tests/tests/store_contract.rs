//! One contract, two backends: the embedded store (temp dir) and the AWS store (moto).

use outgoing_mail_tests::outgoing_mail::domain::mailbox::{
    MailboxRecord, MailboxState, parse_mailbox_input,
};
use outgoing_mail_tests::outgoing_mail::domain::{MailboxId, Sensitive, TenantId};
use outgoing_mail_tests::outgoing_mail::ports::{AuthState, MailboxSecret, StoreError};
use outgoing_mail_tests::{Backend, TestStores};
use serde_json::json;
use time::OffsetDateTime;

fn tenant(name: &str) -> TenantId {
    TenantId::parse(name).unwrap()
}

fn record(t: &TenantId) -> MailboxRecord {
    let spec = parse_mailbox_input(&json!({"provider": "microsoft", "tenant": "contoso.com", "username": "alerts@contoso.com", "client_id": "abc"}), None).unwrap().spec;
    let now = OffsetDateTime::now_utc();
    MailboxRecord {
        id: MailboxId::generate(),
        tenant: t.clone(),
        version: 0,
        state: MailboxState::pending(spec.auth),
        spec,
        created_at: now,
        updated_at: now,
    }
}

fn auth_state(t: &TenantId, expires_in: time::Duration) -> AuthState {
    let now = OffsetDateTime::now_utc();
    AuthState {
        state: Sensitive::new(uuid::Uuid::new_v4().simple().to_string()),
        tenant: t.clone(),
        mailbox_id: MailboxId::generate(),
        token_url: "https://login.example/token".into(),
        client_id: "abc".into(),
        pkce_verifier: Sensitive::new("v".repeat(43)),
        redirect_uri: "http://127.0.0.1/oauth/callback".into(),
        created_at: now,
        expires_at: now + expires_in,
    }
}

async fn mailbox_round_trip(s: TestStores) {
    let t = tenant("t1");
    let r = record(&t);
    let saved = s.mailboxes.insert(&r).await.unwrap();
    assert_eq!(saved.version, 1);
    let got = s.mailboxes.get(&t, &r.id).await.unwrap().unwrap();
    assert_eq!(got, saved);
    assert!(
        matches!(s.mailboxes.insert(&r).await, Err(StoreError::Conflict)),
        "duplicate insert must conflict"
    );
}

async fn missing_is_none(s: TestStores) {
    let t = tenant("t1");
    assert!(
        s.mailboxes
            .get(&t, &MailboxId::generate())
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        !s.mailboxes
            .delete(&t, &MailboxId::generate())
            .await
            .unwrap()
    );
    assert!(s.mailboxes.list(&t).await.unwrap().is_empty());
}

async fn tenants_are_isolated(s: TestStores) {
    let (a, b) = (tenant("tenant-a"), tenant("tenant-b"));
    let ra = s.mailboxes.insert(&record(&a)).await.unwrap();
    s.mailboxes.insert(&record(&b)).await.unwrap();
    s.mailboxes.insert(&record(&b)).await.unwrap();
    assert_eq!(s.mailboxes.list(&a).await.unwrap().len(), 1);
    assert_eq!(s.mailboxes.list(&b).await.unwrap().len(), 2);
    assert!(
        s.mailboxes.get(&b, &ra.id).await.unwrap().is_none(),
        "tenant b must not read tenant a's mailbox"
    );
    assert!(!s.mailboxes.delete(&b, &ra.id).await.unwrap());
    assert!(s.mailboxes.get(&a, &ra.id).await.unwrap().is_some());
}

async fn conditional_update(s: TestStores) {
    let t = tenant("t1");
    let v1 = s.mailboxes.insert(&record(&t)).await.unwrap();
    let mut a = v1.clone();
    a.spec.from_name = None;
    a.state.consecutive_failures = 7;
    let v2 = s.mailboxes.update(&a).await.unwrap();
    assert_eq!(v2.version, 2);
    // a writer still holding version 1 loses, and changes nothing
    let mut stale = v1.clone();
    stale.state.consecutive_failures = 99;
    assert!(matches!(
        s.mailboxes.update(&stale).await,
        Err(StoreError::Conflict)
    ));
    let now = s.mailboxes.get(&t, &v1.id).await.unwrap().unwrap();
    assert_eq!((now.version, now.state.consecutive_failures), (2, 7));
    // updating a deleted record is NotFound
    assert!(s.mailboxes.delete(&t, &v1.id).await.unwrap());
    assert!(matches!(
        s.mailboxes.update(&v2).await,
        Err(StoreError::NotFound)
    ));
}

async fn concurrent_updates_one_wins(s: TestStores) {
    let t = tenant("t1");
    let v1 = s.mailboxes.insert(&record(&t)).await.unwrap();
    let store = s.mailboxes.clone();
    let mut tasks = Vec::new();
    for i in 0..8u32 {
        let (store, mut r) = (store.clone(), v1.clone());
        r.state.consecutive_failures = i;
        tasks.push(tokio::spawn(async move { store.update(&r).await.is_ok() }));
    }
    let mut wins = 0;
    for t in tasks {
        wins += t.await.unwrap() as u32;
    }
    assert_eq!(
        wins, 1,
        "exactly one of the concurrent writers holding the same version may win"
    );
}

async fn states_are_single_use(s: TestStores) {
    let t = tenant("t1");
    let st = auth_state(&t, time::Duration::minutes(10));
    s.states.put_state(&st).await.unwrap();
    let key = st.state.expose().to_owned();
    let (a, b) = tokio::join!(s.states.take_state(&key), s.states.take_state(&key));
    let got: Vec<_> = [a.unwrap(), b.unwrap()].into_iter().flatten().collect();
    assert_eq!(
        got.len(),
        1,
        "two concurrent takes of one state: exactly one succeeds"
    );
    assert_eq!(got[0], st);
    assert!(s.states.take_state(&key).await.unwrap().is_none());
    assert!(s.states.take_state("never-issued").await.unwrap().is_none());
}

async fn expired_states_are_returned_for_the_caller_to_refuse(s: TestStores) {
    let t = tenant("t1");
    let st = auth_state(&t, time::Duration::minutes(-1));
    s.states.put_state(&st).await.unwrap();
    let got = s
        .states
        .take_state(st.state.expose())
        .await
        .unwrap()
        .unwrap();
    assert!(got.expires_at < OffsetDateTime::now_utc());
}

async fn secrets_round_trip(s: TestStores) {
    let t = tenant("t1");
    let id = MailboxId::generate();
    assert!(s.secrets.get(&t, &id).await.unwrap().is_none());
    let mut secret = MailboxSecret {
        client_secret: Some(Sensitive::new("cs~value")),
        refresh_token: Some(Sensitive::new("rt-1")),
        ..Default::default()
    };
    s.secrets.put(&t, &id, &secret).await.unwrap();
    assert_eq!(s.secrets.get(&t, &id).await.unwrap().unwrap(), secret);
    secret.refresh_token = Some(Sensitive::new("rt-2"));
    secret.access_token = Some(Sensitive::new("at"));
    s.secrets.put(&t, &id, &secret).await.unwrap();
    assert_eq!(s.secrets.get(&t, &id).await.unwrap().unwrap(), secret);
    // another tenant's secret with the same mailbox id is a different secret
    assert!(s.secrets.get(&tenant("t2"), &id).await.unwrap().is_none());
    s.secrets.delete(&t, &id).await.unwrap();
    assert!(s.secrets.get(&t, &id).await.unwrap().is_none());
    s.secrets.delete(&t, &id).await.unwrap();
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $( #[tokio::test] async fn $name() { super::$name(outgoing_mail_tests::TestStores::new(outgoing_mail_tests::Backend::Embedded).await).await } )*
        }
        mod aws {
            $( #[tokio::test] async fn $name() { super::$name(outgoing_mail_tests::TestStores::new(outgoing_mail_tests::Backend::Aws).await).await } )*
        }
    };
}

contract!(
    mailbox_round_trip,
    missing_is_none,
    tenants_are_isolated,
    conditional_update,
    concurrent_updates_one_wins,
    states_are_single_use,
    expired_states_are_returned_for_the_caller_to_refuse,
    secrets_round_trip,
);

#[tokio::test]
async fn embedded_secrets_are_sealed_on_disk_with_a_private_key_file() {
    let mut s = TestStores::new(Backend::Embedded).await;
    let guard = s.dir.take().unwrap();
    let dir = guard.path().to_owned();
    let t = tenant("t1");
    let id = MailboxId::generate();
    let secret = MailboxSecret {
        refresh_token: Some(Sensitive::new("PLAINTEXT-REFRESH-TOKEN-MARKER")),
        ..Default::default()
    };
    s.secrets.put(&t, &id, &secret).await.unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(
            !bytes
                .windows(30)
                .any(|w| w == b"PLAINTEXT-REFRESH-TOKEN-MARKER"),
            "plaintext secret on disk"
        );
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("secret.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    // a different key cannot read it
    drop(s);
    std::fs::remove_file(dir.join("secret.key")).unwrap();
    let other =
        outgoing_mail_tests::outgoing_mail::adapters::embedded::EncryptedSecretStore::open(&dir)
            .unwrap();
    use outgoing_mail_tests::outgoing_mail::ports::SecretStore;
    assert!(matches!(
        other.get(&t, &id).await,
        Err(StoreError::Corrupt(_))
    ));
}

#[tokio::test]
async fn embedded_key_file_readable_by_others_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _ = outgoing_mail_tests::outgoing_mail::adapters::embedded::EncryptedSecretStore::open(
        dir.path(),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.path().join("secret.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let err = outgoing_mail_tests::outgoing_mail::adapters::embedded::EncryptedSecretStore::open(
        dir.path(),
    )
    .err()
    .expect("must refuse");
    assert!(err.to_string().contains("chmod 600"), "{err}");
}
