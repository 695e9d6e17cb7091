//! Everything that speaks Slack: request signatures, inbound payloads, the approval card,
//! the Web API client and the outbox that delivers messages.

pub mod cards;
pub mod client;
pub mod outbox;
pub mod payloads;
pub mod signature;
