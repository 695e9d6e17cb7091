//! Integration tests: the real app over HTTP, signed as Slack signs, against a fake Slack.

mod support;

mod approvals;
mod audit_chain;
mod backup;
mod breakglass;
mod commands;
mod crash;
mod delivery;
mod early_end;
mod ending_soon;
mod expiry_wave;
mod explain;
mod floods;
mod forms;
mod fuzz_corpus;
mod group_commit;
mod lifecycle;
mod local_slack;
mod manifest;
mod module_graph;
mod move_database;
mod observe;
mod oncall;
mod packaging;
mod reconcile;
mod replicas;
mod report;
mod secrets_at_rest;
mod security;
mod selfcheck;
mod shared_database;
mod slow_clients;
mod socket_mode;
mod undelivered;
mod user_text;
