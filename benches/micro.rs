//! Micro-benchmarks of the per-request hot paths: the Slack signature check, reading a
//! slash command, and rendering an approval card. `cargo bench --bench micro`.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use jitgate::cards::{render_card, CardModel};
use jitgate::commands;
use jitgate::slack::payloads::SlashCommand;
use jitgate::slack::signature;
use jitgate::store::{DecisionRow, GrantRow, GrantState, RequestKind, RequestRow, RequestState, Verdict};

const SECRET: &[u8] = b"8f742231b10e8888abcd99yyyzzz85a5";

fn command_body() -> String {
    serde_urlencoded::to_string([
        ("token", "legacy-ignored"),
        ("team_id", "T0TEAM"),
        ("team_domain", "acme"),
        ("channel_id", "C0GENERAL"),
        ("channel_name", "general"),
        ("user_id", "U0REQUESTER"),
        ("user_name", "someone"),
        ("command", "/jit"),
        (
            "text",
            "request prod-db:read 2h investigating INC-1234 <@U0OTHER> & friends",
        ),
        ("api_app_id", "A0APP"),
        (
            "response_url",
            "https://hooks.slack.com/commands/T1DC2JH3J/397700885554/96rGlfmibIGlgcZRskXaIFfN",
        ),
        (
            "trigger_id",
            "398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c",
        ),
    ])
    .unwrap()
}

fn config() -> jitgate::config::Config {
    jitgate::config::parse(
        Path::new("bench.toml"),
        r#"
[[resources]]
name = "prod-db"
description = "Production PostgreSQL"
roles = ["read", "write"]
approval_channel = "C0APPROVALS"
approvers = ["U0APPROVER1"]
adapter = "demo"

[[resources]]
name = "payments"
roles = ["admin"]
approval_channel = "C0APPROVALS"
approvers = ["U0APPROVER1"]
adapter = "demo"

[adapters.demo]
type = "noop"
"#,
    )
    .unwrap()
}

fn signature(c: &mut Criterion) {
    let body = command_body();
    let ts = "1531420618";
    let sig = signature::sign(SECRET, ts, body.as_bytes());
    let mut g = c.benchmark_group("signature");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("verify_command_body", |b| {
        b.iter(|| {
            signature::verify(
                black_box(SECRET),
                Some(black_box(ts)),
                Some(black_box(sig.as_str())),
                black_box(body.as_bytes()),
                1_531_420_620,
            )
        })
    });
    g.bench_function("reject_bad_signature", |b| {
        let bad = format!("v0={}", "0".repeat(64));
        b.iter(|| {
            signature::verify(
                black_box(SECRET),
                Some(ts),
                Some(black_box(bad.as_str())),
                black_box(body.as_bytes()),
                1_531_420_620,
            )
        })
    });
    g.finish();
}

fn parsing(c: &mut Criterion) {
    let body = command_body();
    let config = config();
    let mut g = c.benchmark_group("slash_command");
    g.bench_function("form_to_slash_command", |b| {
        b.iter(|| serde_urlencoded::from_bytes::<SlashCommand>(black_box(body.as_bytes())).unwrap())
    });
    let text = "request prod-db:read 2h investigating INC-1234 <@U0OTHER> & friends";
    g.bench_function("text_to_command", |b| {
        b.iter(|| commands::parse(black_box(text), &config).unwrap())
    });
    g.bench_function("form_to_validated_request", |b| {
        b.iter(|| {
            let cmd = serde_urlencoded::from_bytes::<SlashCommand>(black_box(body.as_bytes())).unwrap();
            let text = jitgate::text::unescape(&cmd.text);
            match commands::parse(&text, &config).unwrap() {
                commands::Command::Request(input) => jitgate::requests::validate(&config, &input).unwrap(),
                other => panic!("{other:?}"),
            }
        })
    });
    g.finish();
}

fn request(state: RequestState) -> RequestRow {
    RequestRow {
        id: 123_456,
        requester_id: "U0REQUESTER".into(),
        team_id: "T0TEAM".into(),
        resource: "prod-db".into(),
        role: "read".into(),
        duration_secs: 7200,
        reason: "investigating INC-1234: replica lag on <#C0DB> & rising error rates".into(),
        origin_channel: "C0GENERAL".into(),
        approval_channel: "C0APPROVALS".into(),
        approvals_required: 1,
        state,
        created_at: 1_700_000_000_000,
        decided_at: Some(1_700_000_060_000),
        card_channel: Some("C0APPROVALS".into()),
        card_ts: Some("1700000001.000100".into()),
        kind: RequestKind::Access,
        extends_request_id: None,
    }
}

fn cards(c: &mut Criterion) {
    let mut g = c.benchmark_group("card");
    let pending = request(RequestState::Pending);
    g.bench_function("render_pending_to_json", |b| {
        b.iter(|| {
            let m = CardModel {
                request: black_box(&pending),
                description: "Production PostgreSQL",
                decisions: &[],
                grant: None,
                job: None,
                break_glass: None,
                refused: None,
            };
            serde_json::to_vec(&render_card(&m)).unwrap()
        })
    });
    let approved = request(RequestState::Approved);
    let decisions = [DecisionRow {
        approver_id: "U0APPROVER1".into(),
        verdict: Verdict::Approve,
        decided_at: 1_700_000_060_000,
        reason: None,
    }];
    let grant = GrantRow {
        id: 99,
        request_id: 123_456,
        user_id: "U0REQUESTER".into(),
        resource: "prod-db".into(),
        role: "read".into(),
        adapter: "demo".into(),
        duration_secs: 7200,
        state: GrantState::Active,
        created_at: 1_700_000_060_000,
        granted_at: Some(1_700_000_061_000),
        expires_at: Some(1_700_007_261_000),
        revoked_at: None,
        revoked_by: None,
        revoke_requested_by: None,
        revoke_requested_at: None,
        adapter_state: None,
        last_error: None,
    };
    g.bench_function("render_active_grant_to_json", |b| {
        b.iter(|| {
            let m = CardModel {
                request: black_box(&approved),
                description: "Production PostgreSQL",
                decisions: &decisions,
                grant: Some(&grant),
                job: None,
                break_glass: None,
                refused: None,
            };
            serde_json::to_vec(&render_card(&m)).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, signature, parsing, cards);
criterion_main!(benches);
