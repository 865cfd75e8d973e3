//! outgoing-mail: send a tenant's notifications from its own mailbox over SMTP XOAUTH2.
//!
//! - [`domain`]: parsed types, the mailbox model, reasons. No I/O.
//! - [`ports`]: the traits the services need (stores, secrets, token endpoint, mail, clock).
//! - [`adapters`]: DynamoDB + Secrets Manager, SQLite + sealed secrets, oauth2, lettre.
//! - [`service`]: the use cases (mailboxes, authorization, verification).
//! - [`api`]: the HTTP API (axum router) shared by the Lambda functions and the local server.
//! - [`config`] / [`app`]: settings from the environment and wiring of adapters.

pub mod adapters;
pub mod api;
pub mod app;
pub mod config;
pub mod domain;
#[cfg(feature = "lambda")]
pub mod lambda;
pub mod ports;
pub mod service;
pub mod telemetry;
