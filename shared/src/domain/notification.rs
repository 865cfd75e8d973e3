//! A notification to send, parsed once, and the RFC 5322 message built from it.

use std::collections::BTreeMap;

use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use serde_json::{Map, Value};

use super::{EmailAddress, FieldError, HeaderText, MailboxId, TenantId};

/// Most recipients (to + cc + bcc) one notification may have.
pub const MAX_RECIPIENTS: usize = 100;
/// Largest text or HTML body.
pub const MAX_BODY_BYTES: usize = 512 * 1024;
/// Extra headers a producer may set (everything else would let it forge routing or identity).
pub const ALLOWED_HEADERS: &[&str] = &[
    "X-Entity-Ref-ID",
    "X-Ticket-ID",
    "X-Priority",
    "Importance",
    "X-Auto-Response-Suppress",
    "Auto-Submitted",
    "In-Reply-To",
    "References",
];

/// The idempotency key: 1–128 of `[A-Za-z0-9._:@-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NotificationId(String);

impl NotificationId {
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        let ok = !raw.is_empty()
            && raw.len() <= 128
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._:@-".contains(&b));
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(FieldError::new(
                "id",
                "invalid_id",
                "must be 1–128 characters from A-Z a-z 0-9 . _ : @ - (the idempotency key)",
            ))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An attachment. Not accepted yet; the type is here so adding them changes no signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub filename: String,
    pub content_type: String,
    pub content: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct Notification {
    pub id: NotificationId,
    /// Present on the queue and direct-invoke doors (the producer names the tenant);
    /// the HTTP door takes the tenant from the caller instead.
    pub tenant: Option<TenantId>,
    pub mailbox_id: Option<MailboxId>,
    pub to: Vec<EmailAddress>,
    pub cc: Vec<EmailAddress>,
    pub bcc: Vec<EmailAddress>,
    pub subject: HeaderText,
    pub text: Option<String>,
    pub html: Option<String>,
    pub reply_to: Option<EmailAddress>,
    pub headers: BTreeMap<&'static str, HeaderText>,
    pub attachments: Vec<Attachment>,
}

const FIELDS: &[&str] = &[
    "id",
    "tenant",
    "mailbox_id",
    "to",
    "cc",
    "bcc",
    "subject",
    "text",
    "html",
    "reply_to",
    "headers",
    "attachments",
];

fn addresses(m: &Map<String, Value>, key: &str) -> Result<Vec<EmailAddress>, FieldError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![EmailAddress::parse(key, s)?]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => EmailAddress::parse(key, s),
                _ => Err(FieldError::new(
                    key,
                    "invalid_type",
                    "must be a list of e-mail addresses",
                )),
            })
            .collect(),
        Some(_) => Err(FieldError::new(
            key,
            "invalid_type",
            "must be a list of e-mail addresses",
        )),
    }
}

fn body(m: &Map<String, Value>, key: &str) -> Result<Option<String>, FieldError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() > MAX_BODY_BYTES => Err(FieldError::new(
            key,
            "too_long",
            format!("must be at most {} KiB", MAX_BODY_BYTES / 1024),
        )),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(FieldError::new(key, "invalid_type", "must be a string")),
    }
}

/// Parse and validate a notification. Header-bound values with CR/LF are refused, never sent.
pub fn parse_notification(v: &Value) -> Result<Notification, FieldError> {
    let Value::Object(m) = v else {
        return Err(FieldError::new(
            "body",
            "invalid_json",
            "a notification must be a JSON object",
        ));
    };
    if let Some(k) = m.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(FieldError::new(
            k.as_str(),
            "unknown_field",
            format!("is not a notification field (known: {})", FIELDS.join(", ")),
        ));
    }
    let str_field = |k: &str| -> Result<Option<&str>, FieldError> {
        match m.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(FieldError::new(k, "invalid_type", "must be a string")),
        }
    };
    let id = NotificationId::parse(str_field("id")?.ok_or_else(|| {
        FieldError::new(
            "id",
            "required",
            "is required: a unique id per notification (the idempotency key)",
        )
    })?)?;
    let tenant = str_field("tenant")?
        .map(|t| {
            TenantId::parse(t).ok_or_else(|| {
                FieldError::new("tenant", "invalid_tenant", "is not a valid tenant id")
            })
        })
        .transpose()?;
    let mailbox_id = str_field("mailbox_id")?
        .map(|s| {
            MailboxId::parse(s).ok_or_else(|| {
                FieldError::new(
                    "mailbox_id",
                    "invalid_mailbox_id",
                    "is not a mailbox id (mbx_…)",
                )
            })
        })
        .transpose()?;
    let (to, cc, bcc) = (
        addresses(m, "to")?,
        addresses(m, "cc")?,
        addresses(m, "bcc")?,
    );
    let count = to.len() + cc.len() + bcc.len();
    if count == 0 {
        return Err(FieldError::new(
            "to",
            "required",
            "at least one recipient (to, cc or bcc) is required",
        ));
    }
    if count > MAX_RECIPIENTS {
        return Err(FieldError::new(
            "to",
            "too_many_recipients",
            format!("at most {MAX_RECIPIENTS} recipients in to + cc + bcc"),
        ));
    }
    let subject = HeaderText::parse("subject", str_field("subject")?.unwrap_or_default(), 998)?;
    let (text, html) = (body(m, "text")?, body(m, "html")?);
    if text.is_none() && html.is_none() {
        return Err(FieldError::new(
            "text",
            "required",
            "a text or html body is required",
        ));
    }
    let reply_to = str_field("reply_to")?
        .map(|s| EmailAddress::parse("reply_to", s))
        .transpose()?;
    let mut headers = BTreeMap::new();
    match m.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(h)) => {
            for (name, value) in h {
                let allowed = ALLOWED_HEADERS
                    .iter()
                    .find(|a| a.eq_ignore_ascii_case(name))
                    .ok_or_else(|| {
                        FieldError::new(
                            "headers",
                            "header_not_allowed",
                            format!(
                                "`{}` is not an allowed header (allowed: {})",
                                super::truncate(name, 60),
                                ALLOWED_HEADERS.join(", ")
                            ),
                        )
                    })?;
                let value = value.as_str().ok_or_else(|| {
                    FieldError::new("headers", "invalid_type", "header values must be strings")
                })?;
                headers.insert(*allowed, HeaderText::parse("headers", value, 900)?);
            }
        }
        Some(_) => {
            return Err(FieldError::new(
                "headers",
                "invalid_type",
                "must be an object of header name → value",
            ));
        }
    }
    match m.get("attachments") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) if a.is_empty() => {}
        Some(_) => {
            return Err(FieldError::new(
                "attachments",
                "not_supported",
                "attachments are not supported yet",
            ));
        }
    }
    Ok(Notification {
        id,
        tenant,
        mailbox_id,
        to,
        cc,
        bcc,
        subject,
        text,
        html,
        reply_to,
        headers,
        attachments: Vec::new(),
    })
}

/// Who the message is from, as the sending path decides it.
#[derive(Debug, Clone)]
pub struct SenderIdentity {
    pub from_name: Option<String>,
    pub from_address: EmailAddress,
    pub reply_to: Option<EmailAddress>,
    pub signature: Option<String>,
}

/// A built message: envelope and bytes, ready for SMTP.
#[derive(Debug, Clone)]
pub struct OutgoingMessage {
    pub envelope_from: String,
    pub recipients: Vec<String>,
    pub message_id: String,
    pub bytes: Vec<u8>,
}

fn text_with_signature(text: &str, signature: Option<&str>) -> String {
    match signature {
        Some(sig) if !sig.trim().is_empty() => {
            format!("{}\n\n-- \n{}", text.trim_end(), sig.trim_end())
        }
        _ => text.to_owned(),
    }
}

fn html_with_signature(html: &str, signature: Option<&str>) -> String {
    let Some(sig) = signature.filter(|s| !s.trim().is_empty()) else {
        return html.to_owned();
    };
    let escaped = html_escape::encode_text(sig.trim_end()).replace('\n', "<br>\n");
    let block = format!(
        "<div class=\"signature\" style=\"margin-top:1em;color:#555\">-- <br>\n{escaped}</div>"
    );
    match html.to_ascii_lowercase().rfind("</body>") {
        Some(pos) => format!("{}{}\n{}", &html[..pos], block, &html[pos..]),
        None => format!("{html}\n{block}"),
    }
}

fn mailbox(name: Option<&str>, address: &EmailAddress) -> Result<Mailbox, FieldError> {
    let addr: lettre::Address = address
        .as_str()
        .parse()
        .map_err(|_| FieldError::new("from_address", "invalid_email", "is not a valid address"))?;
    Ok(Mailbox::new(name.map(str::to_owned), addr))
}

/// Build the message: From, Reply-To, To/Cc (Bcc only in the envelope), Subject, Date,
/// Message-ID on the sender's domain, allowed headers, the signature appended, and
/// multipart/alternative when both text and HTML are given.
pub fn build_message(
    n: &Notification,
    sender: &SenderIdentity,
) -> Result<OutgoingMessage, FieldError> {
    let message_id = format!(
        "<{}@{}>",
        uuid::Uuid::new_v4().simple(),
        sender.from_address.domain()
    );
    let mut b = lettre::Message::builder()
        .from(mailbox(sender.from_name.as_deref(), &sender.from_address)?)
        .subject(n.subject.as_str())
        .message_id(Some(message_id.clone()))
        .date_now();
    let reply_to = n.reply_to.as_ref().or(sender.reply_to.as_ref());
    if let Some(r) = reply_to {
        b = b.reply_to(mailbox(None, r)?);
    }
    for a in &n.to {
        b = b.to(mailbox(None, a)?);
    }
    for a in &n.cc {
        b = b.cc(mailbox(None, a)?);
    }
    for a in &n.bcc {
        b = b.bcc(mailbox(None, a)?);
    }
    for (name, value) in &n.headers {
        b = b.raw_header(HeaderValue::new(
            HeaderName::new_from_ascii_str(name),
            value.as_str().to_owned(),
        ));
    }
    let sig = sender.signature.as_deref();
    let message = match (&n.text, &n.html) {
        (Some(t), Some(h)) => b.multipart(MultiPart::alternative_plain_html(
            text_with_signature(t, sig),
            html_with_signature(h, sig),
        )),
        (Some(t), None) => b.singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_PLAIN)
                .body(text_with_signature(t, sig)),
        ),
        (None, Some(h)) => b.singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_HTML)
                .body(html_with_signature(h, sig)),
        ),
        (None, None) => {
            return Err(FieldError::new(
                "text",
                "required",
                "a text or html body is required",
            ));
        }
    }
    .map_err(|e| {
        FieldError::new(
            "body",
            "invalid_message",
            format!("the message cannot be built: {e}"),
        )
    })?;
    let envelope = message.envelope();
    Ok(OutgoingMessage {
        envelope_from: envelope.from().map(|a| a.to_string()).unwrap_or_default(),
        recipients: envelope.to().iter().map(|a| a.to_string()).collect(),
        message_id,
        bytes: message.formatted(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sender() -> SenderIdentity {
        SenderIdentity {
            from_name: Some("Contoso Alerts".into()),
            from_address: EmailAddress::parse("f", "alerts@contoso.com").unwrap(),
            reply_to: Some(EmailAddress::parse("f", "help@contoso.com").unwrap()),
            signature: Some("Contoso IT <it@contoso.com>\nline 2".into()),
        }
    }

    #[test]
    fn builds_multipart_with_signature_and_hidden_bcc() {
        let n = parse_notification(&json!({"id": "n-1", "to": ["a@x.com"], "bcc": ["hidden@x.com"], "subject": "Disk full", "text": "Hello", "html": "<html><body><p>Hello</p></body></html>", "headers": {"x-entity-ref-id": "42"}})).unwrap();
        let m = build_message(&n, &sender()).unwrap();
        let raw = String::from_utf8(m.bytes).unwrap();
        assert!(
            raw.contains("From: \"Contoso Alerts\" <alerts@contoso.com>")
                || raw.contains("From: Contoso Alerts <alerts@contoso.com>"),
            "{raw}"
        );
        assert!(raw.contains("Reply-To: help@contoso.com"));
        assert!(raw.contains("multipart/alternative"));
        assert!(raw.contains("X-Entity-Ref-ID: 42"));
        assert!(raw.contains("-- \r\nContoso IT"));
        assert!(raw.contains("Contoso IT &lt;it@contoso.com&gt;"));
        assert!(
            !raw.contains("hidden@x.com"),
            "Bcc must not be in the headers"
        );
        assert_eq!(m.recipients.len(), 2);
        assert!(m.message_id.ends_with("@contoso.com>"));
    }

    #[test]
    fn header_injection_is_refused() {
        for bad in [
            json!({"id": "n", "to": ["a@x.com"], "subject": "Hi\r\nBcc: victim@x.com", "text": "t"}),
            json!({"id": "n", "to": ["a@x.com\r\nBcc: victim@x.com"], "subject": "s", "text": "t"}),
            json!({"id": "n", "to": ["a@x.com"], "subject": "s", "text": "t", "reply_to": "r@x.com\nBcc: v@x.com"}),
            json!({"id": "n", "to": ["a@x.com"], "subject": "s", "text": "t", "headers": {"X-Entity-Ref-ID": "1\r\nBcc: v@x.com"}}),
            json!({"id": "n", "to": ["a@x.com"], "subject": "s", "text": "t", "headers": {"Bcc": "v@x.com"}}),
        ] {
            assert!(parse_notification(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn limits() {
        let many: Vec<String> = (0..101).map(|i| format!("u{i}@x.com")).collect();
        assert_eq!(
            parse_notification(&json!({"id": "n", "to": many, "subject": "s", "text": "t"}))
                .unwrap_err()
                .code,
            "too_many_recipients"
        );
        assert_eq!(
            parse_notification(&json!({"id": "n", "subject": "s", "text": "t"}))
                .unwrap_err()
                .field,
            "to"
        );
        assert_eq!(
            parse_notification(&json!({"id": "n", "to": ["a@x.com"], "subject": "s"}))
                .unwrap_err()
                .field,
            "text"
        );
        assert_eq!(
            parse_notification(&json!({"to": ["a@x.com"], "subject": "s", "text": "t"}))
                .unwrap_err()
                .field,
            "id"
        );
        assert_eq!(
            parse_notification(
                &json!({"id": "n", "to": ["a@x.com"], "text": "t", "attachments": [{}]})
            )
            .unwrap_err()
            .code,
            "not_supported"
        );
    }
}
