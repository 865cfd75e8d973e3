//! The documents that describe the service agree with the code, so they cannot drift apart:
//!
//! - `openapi.yaml`: paths and methods = `api::ROUTES`; public routes have no security; the
//!   enums = the domain enums (`status_reason` = `StatusReason::ALL`); the `Mailbox` schema =
//!   the keys of a serialized `MailboxView`; the input schema = the fields the API accepts;
//!   write-only fields never in a response; the error shape = what the API sends.
//! - `template.yaml`: every route except local-only ones is an `HttpApi` event of the function
//!   named by `Function::name()` (the SAM logical id is mapped through `BuildProperties:
//!   Binary`), public routes have `Auth: Authorizer: NONE`, the `OUTGOING_MAIL_*` variables it
//!   sets are the ones `shared/src/config.rs` reads and the Lambda functions start with them.
//! - `infra/env.json`, `events/*.json` and `README.md` name only functions, variables, routes
//!   and reasons that exist.
//!
//! Only the mailbox-schema test starts an app (embedded backend, no peer needed).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use outgoing_mail_tests::outgoing_mail::api::{Function, ROUTES};
use outgoing_mail_tests::outgoing_mail::config::{Profile, Settings, StoreKind};
use outgoing_mail_tests::outgoing_mail::domain::mailbox::{
    AuthKind, ClientAuth, MailboxStatus, Provider, SmtpSecurity,
};
use outgoing_mail_tests::outgoing_mail::domain::reason::StatusReason;
use outgoing_mail_tests::{Backend, TestApp};
use serde_json::{Map, Value, json};

// ---------------------------------------------------------------------------------- helpers

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// YAML → JSON. CloudFormation short-form tags (`!Ref X`, `!Sub s`, `!If [..]`, …), which
/// serde_yaml keeps as `Tagged`, become their long JSON form `{"Ref": X}`, `{"Fn::Sub": s}`.
fn to_json(v: serde_yaml::Value) -> Value {
    use serde_yaml::Value as Y;
    match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => serde_json::to_value(&n).unwrap_or(Value::Null),
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(items.into_iter().map(to_json).collect()),
        Y::Mapping(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| {
                    let key = match k {
                        Y::String(s) => s,
                        other => serde_yaml::to_string(&other)
                            .unwrap_or_default()
                            .trim()
                            .to_owned(),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        Y::Tagged(t) => {
            let tag = t.tag.to_string();
            let name = tag.trim_start_matches('!');
            let key = if name == "Ref" || name == "Condition" {
                name.to_owned()
            } else {
                format!("Fn::{name}")
            };
            let mut m = Map::new();
            m.insert(key, to_json(t.value));
            Value::Object(m)
        }
    }
}

fn yaml_file(rel: &str) -> Value {
    let parsed: serde_yaml::Value =
        serde_yaml::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not valid YAML: {e}"));
    to_json(parsed)
}

fn obj<'a>(v: &'a Value, what: &str) -> &'a Map<String, Value> {
    v.as_object()
        .unwrap_or_else(|| panic!("{what} is not a mapping: {v}"))
}

fn keys(v: &Value, what: &str) -> BTreeSet<String> {
    obj(v, what).keys().cloned().collect()
}

fn strings(v: &Value, what: &str) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("{what} is not a list: {v}"))
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("{what} holds a non-string: {s}"))
                .to_owned()
        })
        .collect()
}

/// `/mailboxes/:id`, `/mailboxes/{id}` and `/mailboxes/{id+}` all become `/mailboxes/{id}`.
fn normalize_path(path: &str) -> String {
    path.split('/')
        .map(|seg| {
            if let Some(name) = seg.strip_prefix(':') {
                format!("{{{name}}}")
            } else if seg.starts_with('{') && seg.ends_with('}') {
                format!("{{{}}}", seg[1..seg.len() - 1].trim_end_matches('+'))
            } else {
                seg.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn route_key(method: &str, path: &str) -> (String, String) {
    (method.to_ascii_uppercase(), normalize_path(path))
}

fn openapi() -> Value {
    let doc = yaml_file("openapi.yaml");
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "openapi.yaml must be OpenAPI 3.1, has {}",
        doc["openapi"]
    );
    doc
}

fn schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
    let s = &doc["components"]["schemas"][name];
    assert!(
        s.is_object(),
        "openapi.yaml has no components.schemas.{name}"
    );
    s
}

const HTTP_METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// (METHOD, path) → the operation, for every operation in openapi.yaml.
fn operations(doc: &Value) -> BTreeMap<(String, String), Value> {
    let mut out = BTreeMap::new();
    for (path, item) in obj(&doc["paths"], "paths") {
        for (method, op) in obj(item, path) {
            if HTTP_METHODS.contains(&method.as_str()) {
                out.insert(route_key(method, path), op.clone());
            }
        }
    }
    out
}

fn serde_names<T: serde::Serialize>(values: &[T]) -> Vec<String> {
    values
        .iter()
        .map(|v| match serde_json::to_value(v) {
            Ok(Value::String(s)) => s,
            other => panic!("not a string enum: {other:?}"),
        })
        .collect()
}

fn enum_of(doc: &Value, name: &str) -> Vec<String> {
    strings(
        &schema(doc, name)["enum"],
        &format!("components.schemas.{name}.enum"),
    )
}

// ---------------------------------------------------------------------------------- openapi

#[test]
fn openapi_paths_and_methods_are_the_routes() {
    let doc = openapi();
    let documented: BTreeSet<(String, String)> = operations(&doc).into_keys().collect();
    let routes: BTreeSet<(String, String)> =
        ROUTES.iter().map(|r| route_key(r.method, r.path)).collect();
    assert_eq!(routes.len(), ROUTES.len(), "ROUTES lists a route twice");
    let missing: Vec<_> = routes.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&routes).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "openapi.yaml and api::ROUTES disagree.\n  in ROUTES, not documented: {missing:?}\n  documented, not in ROUTES: {extra:?}"
    );
}

#[test]
fn openapi_security_matches_public_routes() {
    let doc = openapi();
    assert!(
        doc["security"].as_array().is_some_and(|s| !s.is_empty()),
        "openapi.yaml must require authentication by default (top-level `security`)"
    );
    let schemes = keys(
        &doc["components"]["securitySchemes"],
        "components.securitySchemes",
    );
    for req in doc["security"].as_array().into_iter().flatten() {
        for name in keys(req, "security requirement") {
            assert!(schemes.contains(&name), "unknown security scheme {name}");
        }
    }
    let ops = operations(&doc);
    for r in ROUTES {
        let op = ops
            .get(&route_key(r.method, r.path))
            .unwrap_or_else(|| panic!("{} {} is not documented in openapi.yaml", r.method, r.path));
        let open = op["security"].as_array().is_some_and(|s| s.is_empty());
        assert_eq!(
            open, r.public,
            "{} {}: public in ROUTES = {}, but openapi.yaml says security {}",
            r.method, r.path, r.public, op["security"]
        );
        if !r.public {
            assert!(
                op["responses"]["401"].is_object(),
                "{} {} needs authentication but documents no 401",
                r.method,
                r.path
            );
        }
        // every path parameter is declared
        let path_item = &doc["paths"][r.path];
        let declared: BTreeSet<String> = path_item["parameters"]
            .as_array()
            .into_iter()
            .chain(op["parameters"].as_array())
            .flatten()
            .filter_map(|p| {
                let p = match p["$ref"].as_str() {
                    Some(rf) => {
                        let name = rf.rsplit('/').next().unwrap_or_default();
                        &doc["components"]["parameters"][name]
                    }
                    None => p,
                };
                (p["in"] == "path").then(|| p["name"].as_str().unwrap_or_default().to_owned())
            })
            .collect();
        let in_path: BTreeSet<String> = normalize_path(r.path)
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}').map(str::to_owned))
            .collect();
        assert_eq!(
            declared, in_path,
            "{} {}: path parameters declared in openapi.yaml",
            r.method, r.path
        );
    }
}

#[test]
fn openapi_status_reasons_are_the_code() {
    let doc = openapi();
    let documented = enum_of(&doc, "StatusReason");
    let code: Vec<String> = StatusReason::ALL
        .iter()
        .map(|r| r.code().to_owned())
        .collect();
    let d: BTreeSet<_> = documented.iter().cloned().collect();
    let c: BTreeSet<_> = code.iter().cloned().collect();
    assert_eq!(
        d.len(),
        documented.len(),
        "StatusReason enum has duplicates"
    );
    assert_eq!(
        d,
        c,
        "components.schemas.StatusReason.enum must be exactly StatusReason::ALL.\n  missing: {:?}\n  extra: {:?}",
        c.difference(&d).collect::<Vec<_>>(),
        d.difference(&c).collect::<Vec<_>>()
    );
    // the mailbox's status_reason uses it
    let sr = schema(&doc, "Mailbox")["properties"]["status_reason"].to_string();
    assert!(
        sr.contains("#/components/schemas/StatusReason"),
        "Mailbox.status_reason must reference StatusReason: {sr}"
    );
}

#[test]
fn openapi_enums_are_the_domain_enums() {
    // exhaustive matches: adding a variant fails to compile here until it is listed
    let statuses = [
        MailboxStatus::PendingAuthorization,
        MailboxStatus::PendingVerification,
        MailboxStatus::Verified,
        MailboxStatus::NotVerified,
    ];
    let _ = |s: MailboxStatus| match s {
        MailboxStatus::PendingAuthorization
        | MailboxStatus::PendingVerification
        | MailboxStatus::Verified
        | MailboxStatus::NotVerified => (),
    };
    let auths = [AuthKind::Oauth2, AuthKind::Basic];
    let _ = |a: AuthKind| match a {
        AuthKind::Oauth2 | AuthKind::Basic => (),
    };
    let providers = [Provider::Microsoft, Provider::Google, Provider::Custom];
    let _ = |p: Provider| match p {
        Provider::Microsoft | Provider::Google | Provider::Custom => (),
    };
    let securities = [
        SmtpSecurity::Starttls,
        SmtpSecurity::Tls,
        SmtpSecurity::None,
    ];
    let _ = |s: SmtpSecurity| match s {
        SmtpSecurity::Starttls | SmtpSecurity::Tls | SmtpSecurity::None => (),
    };
    let client_auths = [ClientAuth::RequestBody, ClientAuth::Basic];
    let _ = |c: ClientAuth| match c {
        ClientAuth::RequestBody | ClientAuth::Basic => (),
    };

    let doc = openapi();
    for (name, code) in [
        ("MailboxStatus", serde_names(&statuses)),
        ("AuthKind", serde_names(&auths)),
        ("Provider", serde_names(&providers)),
        ("SmtpSecurity", serde_names(&securities)),
        ("ClientAuth", serde_names(&client_auths)),
    ] {
        let documented: BTreeSet<String> = enum_of(&doc, name).into_iter().collect();
        let code: BTreeSet<String> = code.into_iter().collect();
        assert_eq!(documented, code, "components.schemas.{name}.enum");
    }
}

/// Keys that a JSON value has, recursively flattened one level (top-level only).
fn top_keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn openapi_mailbox_schemas_are_what_the_api_sends_and_accepts() {
    let doc = openapi();
    let t = TestApp::spawn(Backend::Embedded).await;

    // Two mailboxes that between them show every key MailboxView can have: the optional
    // ones are OAuth-only (tenant, URLs, client_*, scopes, …) or basic-only (password_set).
    let oauth = t
        .create(json!({
            "provider": "microsoft", "tenant": "contoso.onmicrosoft.com",
            "username": "alerts@contoso.com", "from_address": "noreply@contoso.com",
            "from_name": "Contoso Alerts", "reply_to": "helpdesk@contoso.com",
            "signature": "Contoso IT", "client_id": "6731de76-14a6-49ae-97bc-6eba6914391e",
            "client_secret": "Xy8Q~secret.VALUE_that-is~long",
            "client_secret_expires_at": "2027-06-30",
            "extra_authorize_params": {"prompt": "select_account"}, "default": true
        }))
        .await;
    let basic = t
        .create(json!({
            "auth": "basic", "provider": "custom", "username": "reports@example.org",
            "smtp_host": "mail.example.org", "smtp_port": 465, "smtp_security": "tls",
            "password": "correct-horse"
        }))
        .await;
    let (status, list) = t.call("GET", "/mailboxes", None).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(
        top_keys(&list),
        keys(
            &doc["paths"]["/mailboxes"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
                ["properties"],
            "list response properties"
        ),
        "GET /mailboxes response keys"
    );

    let (ko, kb) = (top_keys(&oauth), top_keys(&basic));
    let union: BTreeSet<String> = ko.union(&kb).cloned().collect();
    let always: BTreeSet<String> = ko.intersection(&kb).cloned().collect();

    let mailbox = schema(&doc, "Mailbox");
    let properties = keys(&mailbox["properties"], "Mailbox.properties");
    let required: BTreeSet<String> = strings(&mailbox["required"], "Mailbox.required")
        .into_iter()
        .collect();
    assert_eq!(
        properties,
        union,
        "Mailbox.properties must be exactly the keys a serialized MailboxView has.\n  sent, not documented: {:?}\n  documented, never sent: {:?}",
        union.difference(&properties).collect::<Vec<_>>(),
        properties.difference(&union).collect::<Vec<_>>()
    );
    assert_eq!(
        required, always,
        "Mailbox.required must be the keys every MailboxView has (the others are skipped when they do not apply)"
    );

    // write-only: accepted, never in a response schema nor in a response
    let input = schema(&doc, "MailboxInput");
    let input_props = obj(&input["properties"], "MailboxInput.properties");
    let write_only: BTreeSet<String> = input_props
        .iter()
        .filter(|(_, p)| p["writeOnly"] == true)
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(
        write_only,
        BTreeSet::from(["client_secret".to_owned(), "password".to_owned()]),
        "MailboxInput: the write-only fields"
    );
    for secret in &write_only {
        assert!(
            !properties.contains(secret),
            "write-only {secret} is in the Mailbox response schema"
        );
        assert!(!union.contains(secret), "write-only {secret} was returned");
    }
    let body = format!("{oauth}{basic}{list}");
    for value in ["Xy8Q~secret.VALUE_that-is~long", "correct-horse"] {
        assert!(!body.contains(value), "a secret value was returned");
    }
    for (name, p) in obj(&mailbox["properties"], "Mailbox.properties") {
        assert!(
            p["writeOnly"] != true,
            "Mailbox.{name} is marked writeOnly in a response schema"
        );
    }

    // the writable fields are the ones the API accepts: its unknown_field error lists them
    let (status, err) = t
        .call(
            "POST",
            "/mailboxes",
            Some(json!({"provider": "custom", "username": "a@example.org", "zz_not_a_field": 1})),
        )
        .await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"]["code"], "unknown_field", "{err}");
    assert_eq!(err["error"]["field"], "zz_not_a_field", "{err}");
    let message = err["error"]["message"].as_str().unwrap_or_default();
    let accepted: BTreeSet<String> = message
        .split_once("known fields: ")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(list, _)| list.split(", ").map(str::to_owned).collect())
        .unwrap_or_else(|| {
            panic!("the unknown_field message no longer lists the known fields: {message}")
        });
    let documented_input: BTreeSet<String> = input_props.keys().cloned().collect();
    assert_eq!(
        documented_input, accepted,
        "MailboxInput.properties must be the fields POST /mailboxes accepts"
    );
    assert_eq!(
        input["additionalProperties"], false,
        "MailboxInput must refuse unknown fields like the API"
    );
    // what the request needs on create
    let create_required: BTreeSet<String> = schema(&doc, "MailboxCreate")["allOf"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["required"].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    for field in &create_required {
        let mut body = json!({"provider": "custom", "username": "a@example.org"});
        body.as_object_mut().expect("object").remove(field);
        let (status, err) = t.call("POST", "/mailboxes", Some(body)).await;
        assert_eq!(
            (
                status,
                err["error"]["code"].as_str(),
                err["error"]["field"].as_str()
            ),
            (400, Some("required"), Some(field.as_str())),
            "MailboxCreate requires {field}: {err}"
        );
    }

    // every response field that is not writable is read-only, in the schema and in the API
    for name in properties.difference(&documented_input) {
        assert_eq!(
            mailbox["properties"][name]["readOnly"], true,
            "Mailbox.{name} is not writable: mark it readOnly"
        );
        let (status, err) = t
            .call(
                "POST",
                "/mailboxes",
                Some(
                    json!({"provider": "custom", "username": "a@example.org", name.as_str(): null}),
                ),
            )
            .await;
        assert_eq!(
            (status, err["error"]["code"].as_str()),
            (400, Some("read_only")),
            "sending {name}: {err}"
        );
    }
    for (name, p) in obj(&mailbox["properties"], "Mailbox.properties") {
        if p["readOnly"] == true {
            assert!(
                !documented_input.contains(name),
                "Mailbox.{name} is readOnly but writable"
            );
        }
    }

    // the error shape
    let error = schema(&doc, "Error");
    let inner = &error["properties"]["error"];
    assert_eq!(
        top_keys(&err),
        keys(&error["properties"], "Error.properties")
    );
    let sent: BTreeSet<String> = top_keys(&err["error"]);
    let documented_error = keys(&inner["properties"], "Error.error.properties");
    let error_required: BTreeSet<String> = strings(&inner["required"], "Error.error.required")
        .into_iter()
        .collect();
    assert!(
        sent.is_subset(&documented_error) && error_required.is_subset(&sent),
        "error body {err} vs Error schema {documented_error:?} (required {error_required:?})"
    );
}

#[tokio::test]
async fn openapi_notification_schema_is_what_the_api_accepts() {
    let doc = openapi();
    let t = TestApp::spawn(Backend::Embedded).await;
    let (status, err) = t
        .call(
            "POST",
            "/notifications",
            Some(json!({"id": "n-1", "zz_not_a_field": 1})),
        )
        .await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (400, Some("unknown_field")),
        "{err}"
    );
    let message = err["error"]["message"].as_str().unwrap_or_default();
    let accepted: BTreeSet<String> = message
        .split_once("known: ")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(list, _)| list.split(", ").map(str::to_owned).collect())
        .unwrap_or_else(|| {
            panic!("the unknown_field message no longer lists the known fields: {message}")
        });
    // `tenant` is a notification field for the queue and direct invocation; over HTTP the
    // tenant comes from the credentials and the field is refused
    let (status, err) = t
        .call(
            "POST",
            "/notifications",
            Some(json!({"id": "n-1", "tenant": "other"})),
        )
        .await;
    assert_eq!(
        (
            status,
            err["error"]["code"].as_str(),
            err["error"]["field"].as_str()
        ),
        (400, Some("read_only"), Some("tenant")),
        "{err}"
    );
    let over_http: BTreeSet<String> = accepted.into_iter().filter(|f| f != "tenant").collect();
    let notification = schema(&doc, "Notification");
    assert_eq!(
        keys(&notification["properties"], "Notification.properties"),
        over_http,
        "Notification.properties must be the fields POST /notifications accepts"
    );
    assert_eq!(notification["additionalProperties"], false);
}

// ---------------------------------------------------------------------------------- template

struct SamFunction {
    logical_id: String,
    binary: String,
    resource: Value,
}

fn template() -> Value {
    yaml_file("template.yaml")
}

fn sam_functions(tpl: &Value) -> Vec<SamFunction> {
    obj(&tpl["Resources"], "Resources")
        .iter()
        .filter(|(_, r)| r["Type"] == "AWS::Serverless::Function")
        .map(|(id, r)| {
            let binary = r["Metadata"]["BuildProperties"]["Binary"]
                .as_str()
                .map(str::to_owned)
                .or_else(|| {
                    r["Properties"]["CodeUri"]
                        .as_str()
                        .and_then(|c| c.trim_end_matches('/').rsplit('/').next())
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| panic!("{id}: no BuildProperties.Binary nor CodeUri"));
            SamFunction {
                logical_id: id.clone(),
                binary,
                resource: r.clone(),
            }
        })
        .collect()
}

/// Binaries of the workspace: `functions/<dir>` with a package of that name.
fn function_crates() -> BTreeSet<String> {
    std::fs::read_dir(root().join("functions"))
        .expect("functions/")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("Cargo.toml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn template_functions_are_the_workspace_binaries() {
    let tpl = template();
    let functions = sam_functions(&tpl);
    let mut deployed = BTreeSet::new();
    for f in &functions {
        assert!(
            deployed.insert(f.binary.clone()),
            "two SAM functions build binary {}",
            f.binary
        );
        assert_eq!(
            f.resource["Metadata"]["BuildMethod"], "rust-cargolambda",
            "{}: BuildMethod",
            f.logical_id
        );
        let code_uri = f.resource["Properties"]["CodeUri"]
            .as_str()
            .unwrap_or_default();
        assert!(
            code_uri == format!("functions/{}", f.binary) || code_uri == "." || code_uri.is_empty(),
            "{}: CodeUri {code_uri} does not build binary {}",
            f.logical_id,
            f.binary
        );
        let manifest = read(&format!("functions/{}/Cargo.toml", f.binary));
        assert!(
            manifest.contains(&format!("name = \"{}\"", f.binary)),
            "functions/{}/Cargo.toml does not define binary {}",
            f.binary,
            f.binary
        );
    }
    let local_only: BTreeSet<String> = [Function::LocalServer.name().to_owned()].into();
    let crates: BTreeSet<String> = function_crates().difference(&local_only).cloned().collect();
    assert_eq!(
        deployed, crates,
        "every crate in functions/ except the local server is a SAM function"
    );
    for r in ROUTES
        .iter()
        .filter(|r| r.function != Function::LocalServer)
    {
        assert!(
            deployed.contains(r.function.name()),
            "route {} {} belongs to {}, which template.yaml does not deploy",
            r.method,
            r.path,
            r.function.name()
        );
    }
}

#[test]
fn template_http_events_are_the_routes() {
    let tpl = template();
    // (METHOD, path) → (binary, public)
    let mut events: BTreeMap<(String, String), (String, bool)> = BTreeMap::new();
    let mut apis = BTreeSet::new();
    for f in sam_functions(&tpl) {
        for (name, ev) in obj(
            &f.resource["Properties"]["Events"],
            &format!("{}.Events", f.logical_id),
        ) {
            if ev["Type"] != "HttpApi" {
                continue;
            }
            let p = &ev["Properties"];
            let (method, path) = (
                p["Method"].as_str().unwrap_or_default(),
                p["Path"].as_str().unwrap_or_default(),
            );
            assert!(
                !method.is_empty() && !path.is_empty(),
                "{}.{name}: HttpApi event without Method/Path (a catch-all route)",
                f.logical_id
            );
            if let Some(api) = p["ApiId"]["Ref"].as_str() {
                apis.insert(api.to_owned());
            }
            let authorizer = &p["Auth"]["Authorizer"];
            assert!(
                authorizer.is_null() || authorizer == "NONE",
                "{}.{name}: Auth.Authorizer {authorizer}: routes use the API's default authorizer or NONE",
                f.logical_id
            );
            let public = authorizer == "NONE";
            let prev = events.insert(route_key(method, path), (f.binary.clone(), public));
            assert!(prev.is_none(), "{method} {path} is declared twice");
        }
    }
    let expected: BTreeMap<(String, String), (String, bool)> = ROUTES
        .iter()
        .filter(|r| r.function != Function::LocalServer)
        .map(|r| {
            (
                route_key(r.method, r.path),
                (r.function.name().to_owned(), r.public),
            )
        })
        .collect();
    let diff: Vec<String> = expected
        .keys()
        .chain(events.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|k| expected.get(*k) != events.get(*k))
        .map(|k| {
            format!(
                "{} {}: code says {:?}, template says {:?}",
                k.0,
                k.1,
                expected.get(k),
                events.get(k)
            )
        })
        .collect();
    assert!(
        diff.is_empty(),
        "template.yaml HttpApi events (function, public) disagree with api::ROUTES:\n  {}",
        diff.join("\n  ")
    );
    // the routes that are not public are behind the API's JWT authorizer
    for api in &apis {
        let auth = &tpl["Resources"][api]["Properties"]["Auth"];
        let default = auth["DefaultAuthorizer"].as_str().unwrap_or_else(|| {
            panic!("{api}: no DefaultAuthorizer, so non-public routes would be open")
        });
        assert!(
            auth["Authorizers"][default]["JwtConfiguration"].is_object(),
            "{api}: the default authorizer {default} is not a JWT authorizer"
        );
    }
}

/// `OUTGOING_MAIL_*` names in string literals of shared/src/config.rs (tests excluded).
fn variables_the_code_reads() -> BTreeSet<String> {
    let text = read("shared/src/config.rs");
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("\"OUTGOING_MAIL_") {
        let tail = &rest[i + 1..];
        let len = tail
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        if tail[len..].starts_with('"') {
            out.insert(tail[..len].to_owned());
        }
        rest = &tail[len..];
    }
    assert!(
        out.contains("OUTGOING_MAIL_STORE"),
        "found no variables in shared/src/config.rs: {out:?}"
    );
    out
}

/// Read by the code but not set by the template, on purpose: the local server's own, and
/// optional settings whose defaults suit Lambda.
const NOT_IN_TEMPLATE: &[(&str, &str)] = &[
    ("OUTGOING_MAIL_DATA_DIR", "embedded backend only"),
    ("OUTGOING_MAIL_LISTEN", "local server only"),
    (
        "OUTGOING_MAIL_ADMIN_TOKEN",
        "local server only (AWS uses the JWT authorizer)",
    ),
    (
        "OUTGOING_MAIL_EXTRA_CA",
        "private relays and tests; public CAs need none",
    ),
    (
        "OUTGOING_MAIL_DEFAULT_SENDER",
        "inline JSON; the template passes the secret's ARN instead",
    ),
    (
        "OUTGOING_MAIL_REFRESH_EVERY_SECS",
        "local server's refresh timer; Lambda runs on the schedule",
    ),
];

/// Set by the template for behaviour that may not be built yet (issue 5: token-refresh
/// alerts): allowed to be unread. Remove a name once the code reads it.
const SET_BEFORE_READ: &[&str] = &[];

/// The `Environment.Variables` of the Globals, overlaid with a function's own.
fn function_environment(tpl: &Value, f: &SamFunction) -> Map<String, Value> {
    let mut env = tpl["Globals"]["Function"]["Environment"]["Variables"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    if let Some(own) = f.resource["Properties"]["Environment"]["Variables"].as_object() {
        env.extend(own.clone());
    }
    env
}

/// A plausible deployed value of a template expression: parameter defaults for `Ref`s,
/// placeholder names for resources and pseudo parameters, the "else" branch of `If`.
fn resolve(tpl: &Value, v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Object(m) if m.contains_key("Ref") => {
            let name = m["Ref"].as_str()?;
            if name == "AWS::NoValue" {
                return None;
            }
            let param = &tpl["Parameters"][name];
            if param.is_object() {
                return Some(
                    resolve(tpl, &param["Default"]).unwrap_or_else(|| "placeholder".into()),
                );
            }
            Some(format!("outgoing-mail-{name}-1A2B3C"))
        }
        Value::Object(m) if m.contains_key("Fn::If") => resolve(tpl, &m["Fn::If"][2]),
        Value::Object(m) if m.contains_key("Fn::Sub") => {
            let s = m["Fn::Sub"].as_str()?;
            let mut out = String::new();
            let mut rest = s;
            while let Some(i) = rest.find("${") {
                out.push_str(&rest[..i]);
                let end = rest[i..].find('}')? + i;
                out.push_str("x1");
                rest = &rest[end + 1..];
            }
            out.push_str(rest);
            Some(out)
        }
        _ => None,
    }
}

#[test]
fn template_environment_is_what_the_code_reads() {
    let tpl = template();
    let read_by_code = variables_the_code_reads();
    let mut set_by_template = BTreeSet::new();
    let functions = sam_functions(&tpl);
    for f in &functions {
        let env = function_environment(&tpl, f);
        set_by_template.extend(
            env.keys()
                .filter(|k| k.starts_with("OUTGOING_MAIL_"))
                .cloned(),
        );

        // the deployed function starts with these settings
        let vars: BTreeMap<String, String> = env
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), resolve(&tpl, v)?)))
            .collect();
        let settings = Settings::from_lookup(Profile::Lambda, |k| vars.get(k).cloned())
            .unwrap_or_else(|e| {
                panic!(
                    "{} would not start with the template's environment: {e}",
                    f.logical_id
                )
            });
        assert_eq!(settings.store, StoreKind::Aws, "{}", f.logical_id);
        assert!(settings.table.is_some(), "{}: no table", f.logical_id);
    }

    let unknown: Vec<&String> = set_by_template
        .iter()
        .filter(|v| !read_by_code.contains(*v) && !SET_BEFORE_READ.contains(&v.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "template.yaml sets variables shared/src/config.rs never reads: {unknown:?}"
    );
    for v in SET_BEFORE_READ {
        assert!(
            set_by_template.contains(*v),
            "{v} is no longer in template.yaml: remove it from SET_BEFORE_READ"
        );
    }
    let not_in_template: BTreeSet<&str> = NOT_IN_TEMPLATE.iter().map(|(v, _)| *v).collect();
    let stale: Vec<&&str> = not_in_template
        .iter()
        .filter(|v| set_by_template.iter().any(|s| s == **v))
        .collect();
    assert!(
        stale.is_empty(),
        "NOT_IN_TEMPLATE lists {stale:?}, which template.yaml does set: remove them"
    );
    let missing: Vec<&String> = read_by_code
        .iter()
        .filter(|v| !set_by_template.contains(*v) && !not_in_template.contains(v.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "shared/src/config.rs reads {missing:?}, which template.yaml does not set. Set it in the \
         template's Globals, or list it in NOT_IN_TEMPLATE with the reason Lambda does without it"
    );
    // also the Lambda-specific defaults the template relies on
    let globals = &tpl["Globals"]["Function"]["Environment"]["Variables"];
    assert_eq!(
        globals["OUTGOING_MAIL_STORE"], "aws",
        "Lambda functions use the AWS backend"
    );
}

#[test]
fn local_invoke_env_json_names_template_functions_and_declared_variables() {
    let tpl = template();
    let functions = sam_functions(&tpl);
    let env_json: Value = serde_json::from_str(&read("infra/env.json")).expect("infra/env.json");
    let ids: BTreeSet<String> = functions.iter().map(|f| f.logical_id.clone()).collect();
    assert_eq!(
        keys(&env_json, "infra/env.json"),
        ids,
        "infra/env.json: one entry per SAM function"
    );
    for f in &functions {
        let declared = function_environment(&tpl, f);
        for var in keys(&env_json[&f.logical_id], &f.logical_id) {
            // sam local only overrides variables the template declares
            assert!(
                declared.contains_key(&var),
                "infra/env.json sets {var} for {}, but template.yaml does not declare it there (sam local would ignore it)",
                f.logical_id
            );
        }
    }
}

#[test]
fn api_gateway_event_samples_are_deployed_routes() {
    let deployed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .filter(|r| r.function != Function::LocalServer)
        .map(|r| route_key(r.method, r.path))
        .collect();
    let mut seen = 0;
    for entry in std::fs::read_dir(root().join("events")).expect("events/") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let event: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("read"))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let Some(route) = event["routeKey"].as_str() else {
            continue;
        };
        let (method, p) = route.split_once(' ').expect("routeKey is `METHOD /path`");
        let key = route_key(method, p);
        assert!(
            deployed.contains(&key),
            "{}: routeKey {route} is not a deployed route",
            path.display()
        );
        // the concrete path fits the route's template (`{id}` matches one segment)
        let raw = event["rawPath"].as_str().unwrap_or_default();
        let (want, got): (Vec<&str>, Vec<&str>) =
            (key.1.split('/').collect(), raw.split('/').collect());
        assert!(
            want.len() == got.len()
                && want
                    .iter()
                    .zip(&got)
                    .all(|(w, g)| w == g || (w.starts_with('{') && !g.is_empty())),
            "{}: rawPath {raw} does not fit routeKey {route}",
            path.display()
        );
        assert_eq!(
            event["requestContext"]["http"]["method"].as_str(),
            Some(key.0.as_str()),
            "{}: requestContext.http.method",
            path.display()
        );
        seen += 1;
    }
    assert!(seen > 0, "no API Gateway samples in events/");
}

// ---------------------------------------------------------------------------------- README

#[test]
fn readme_documents_every_variable_and_status_reason() {
    let readme = read("README.md");
    let missing_vars: Vec<String> = variables_the_code_reads()
        .into_iter()
        .filter(|v| !readme.contains(&format!("`{v}`")))
        .collect();
    assert!(
        missing_vars.is_empty(),
        "README.md's configuration reference lacks {missing_vars:?}"
    );
    let missing_reasons: Vec<&str> = StatusReason::ALL
        .iter()
        .map(|r| r.code())
        .filter(|c| !readme.contains(&format!("`{c}`")))
        .collect();
    assert!(
        missing_reasons.is_empty(),
        "README.md's status reasons table lacks {missing_reasons:?}"
    );
    // the two set-up commands come first
    let first_block = readme
        .split("```")
        .nth(1)
        .expect("README.md starts with a code block");
    let commands: Vec<&str> = first_block
        .lines()
        .skip(1)
        .map(|l| l.split(" #").next().unwrap_or_default().trim())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(
        commands,
        ["cargo run -p local-server", "infra/test.sh"],
        "README.md's first code block: the run command and the test command"
    );
}
