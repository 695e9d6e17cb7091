//! The Slack wire: request signatures, inbound payloads and the Web API client. Nothing
//! here knows about requests or grants; what jitgate shows is in `cards`, and the worker
//! that delivers it in `outbox`.

pub mod client;
pub mod payloads;
pub mod signature;
