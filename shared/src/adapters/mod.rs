//! Adapters: implementations of the ports for real infrastructure.

#[cfg(feature = "aws")]
pub mod aws;
#[cfg(feature = "embedded")]
pub mod embedded;
pub mod oauth;
pub mod smtp;
