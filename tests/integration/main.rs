//! Integration tests: the real app over HTTP, signed as Slack signs, against a fake Slack.

mod support;

mod approvals;
mod commands;
mod crash;
mod delivery;
mod early_end;
mod expiry_wave;
mod group_commit;
mod lifecycle;
mod manifest;
mod module_graph;
mod oncall;
mod reconcile;
mod security;
mod selfcheck;
mod socket_mode;
mod undelivered;
