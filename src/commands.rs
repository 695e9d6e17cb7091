//! `/jit …`: the text users type, read into a command, and the reply they see.

use slack_morphism::prelude::*;

use crate::app::AppState;
use crate::config::Config;
use crate::duration::HumanDuration;
use crate::ids::{label, parse_label};
use crate::requests::{self, RequestInput, Requester};
use crate::slack::payloads::SlashCommand;
use crate::store::{self, GrantState};
use crate::text::slack_date;
use crate::text::{escape, unescape};

/// What the user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Help,
    /// `/jit` or `/jit request` alone: open the request form.
    OpenForm,
    List,
    Request(RequestInput),
    /// End a grant early.
    Revoke {
        id: i64,
    },
    /// Withdraw a pending request.
    Cancel {
        id: i64,
    },
    /// Ask for more time on an active grant.
    Extend {
        id: i64,
        duration: HumanDuration,
        reason: String,
    },
    /// Emergency access with no approver, reviewed afterwards.
    BreakGlass(RequestInput),
    /// Who may approve `resource[:role]`, would it be auto-approved here, is break-glass
    /// available.
    Explain {
        resource: String,
        role: Option<String>,
    },
}

/// The usage text.
pub fn usage(config: &Config) -> String {
    let cmd = &config.slack.command;
    format!(
        "*jitgate* gives you access for a short time, after an approval, and takes it away on its own.\n\
         • `{cmd} request <resource>[:<role>] [<duration>] <reason>` — ask for access, \
         e.g. `{cmd} request {}:{} {} investigating INC-1234`\n\
         • `{cmd} list` — your pending requests and the access you have now\n\
         • `{cmd} revoke <id>` — end access early (yours, or any as an approver of the resource)\n\
         • `{cmd} extend <id> <duration> [<reason>]` — ask for more time on your access\n\
         • `{cmd} cancel <id>` — withdraw a request nobody has decided on yet\n\
         • `{cmd} explain <resource>[:<role>]` — who approves it, would it be auto-approved here, is break-glass available\n\
         • `{cmd} breakglass <resource>[:<role>] [<duration>] <reason>` — emergency access at once, \
         where the resource allows it; loudly announced and reviewed afterwards\n\
         • `{cmd} help` — this message\n\
         • `{cmd}` alone, or `{cmd} request` alone — a form to fill in instead\n\
         The duration goes right after the resource: `45m`, `90min`, `2h`, `1.5h`, `1h 30m`, `2 hours`, `1d`; \
         without one you get the resource's default. The reason is everything after it.\n\
         *Resources*\n{}",
        config.resources[0].name,
        config.resources[0].default_role(),
        config.resources[0].default_duration,
        requests::resource_list(config),
    )
}

/// Reads the text after the slash command. The error is the reply to show.
pub fn parse(text: &str, config: &Config) -> Result<Command, String> {
    let mut tokens = text.split_whitespace().peekable();
    let Some(first) = tokens.peek().copied() else {
        return Ok(Command::OpenForm);
    };
    let first_lower = first.to_ascii_lowercase();
    match first_lower.as_str() {
        "help" | "-h" | "--help" | "?" => return Ok(Command::Help),
        "list" | "ls" | "status" => return Ok(Command::List),
        "revoke" | "done" | "release" | "cancel" | "extend" => {
            return parse_id_command(&first_lower, tokens, config);
        }
        "request" | "req" => {
            tokens.next();
            if tokens.peek().is_none() {
                return Ok(Command::OpenForm);
            }
        }
        "breakglass" | "break-glass" => {
            tokens.next();
            if tokens.peek().is_none() {
                return Err(format!(
                    "Say which resource, for how long and why, for example \
                     `{} breakglass {}:{} 30m database down, approvers unreachable`.",
                    config.slack.command,
                    config.resources[0].name,
                    config.resources[0].default_role(),
                ));
            }
            return match parse_request("breakglass", tokens, config)? {
                Command::Request(input) => Ok(Command::BreakGlass(input)),
                _ => Err(format!(
                    "Write it like `{} breakglass <resource>[:<role>] [<duration>] <reason>`.",
                    config.slack.command
                )),
            };
        }
        "explain" | "policy" => {
            tokens.next();
            let Some(target) = tokens.next() else {
                return Err(format!(
                    "Say which resource, for example `{} explain {}:{}`.",
                    config.slack.command,
                    config.resources[0].name,
                    config.resources[0].default_role(),
                ));
            };
            let target = target.to_ascii_lowercase();
            let (resource, role) = match target.split_once(':') {
                Some((res, role)) => (res.to_string(), Some(role.to_string()).filter(|r| !r.is_empty())),
                None => (target, None),
            };
            return Ok(Command::Explain { resource, role });
        }
        _ => {
            // `/jit prod-db 1h reason` is read as a request when it names a resource.
            let name = first_lower.split(':').next().unwrap_or_default();
            if config.resource(name).is_none() {
                return Err(format!(
                    "I don't know the command `{}`.\n{}",
                    escape(first),
                    usage(config)
                ));
            }
        }
    }
    parse_request("request", tokens, config)
}

/// `<resource>[:<role>] [<duration>] <reason>`, after `request` or `breakglass` (`verb`).
///
/// The duration is the words right after the resource that form one (see
/// [`crate::duration::read_typed`]); the reason is everything after them. A role typed as
/// a separate word (`prod-db write …`) is refused with the fix, as is a duration that
/// appears only in the reason: neither is ever read as something else.
fn parse_request<'a>(
    verb: &str,
    mut tokens: std::iter::Peekable<impl Iterator<Item = &'a str>>,
    config: &Config,
) -> Result<Command, String> {
    let cmd = &config.slack.command;
    let Some(target) = tokens.next() else {
        return Err(format!(
            "Say which resource you need, for example `{cmd} {verb} {}:{} {} investigating INC-1234`. You can ask for:\n{}",
            config.resources[0].name,
            config.resources[0].default_role(),
            config.resources[0].default_duration,
            requests::resource_list(config)
        ));
    };
    let target = target.to_ascii_lowercase();
    let (resource, role) = match target.split_once(':') {
        Some((res, role)) => (res.to_string(), Some(role.to_string()).filter(|r| !r.is_empty())),
        None => (target, None),
    };
    let rest: Vec<&str> = tokens.collect();
    if role.is_none() {
        let known = config.resource(&resource);
        if let (Some(r), Some(word)) = (known, rest.first()) {
            let word = word.to_ascii_lowercase();
            if r.roles.contains(&word) {
                let after = rest[1..].join(" ");
                let example = if after.is_empty() {
                    format!("{cmd} {verb} {resource}:{word} <reason>")
                } else {
                    format!("{cmd} {verb} {resource}:{word} {after}")
                };
                return Err(format!(
                    "`{word}` is a role of `{resource}`: a role goes after the resource with a colon. \
                     Nothing was done; did you mean `{}`?",
                    escape(&example)
                ));
            }
        }
    }
    let (duration, used) = crate::duration::read_typed(&rest).map_err(|e| {
        format!(
            "{e}. Nothing was done. The duration goes right after the resource, for example \
             `{cmd} {verb} {resource}:{} 1h30m investigating INC-1234`.",
            role.clone().unwrap_or_else(|| {
                config
                    .resource(&resource)
                    .map(|r| r.default_role().to_string())
                    .unwrap_or_else(|| "<role>".into())
            })
        )
    })?;
    let reason_words = &rest[used..];
    if duration.is_none() {
        // `prod-db:read for 2h …`: a duration in the reason would silently become the
        // default; ask for it where it is read.
        let found = (0..reason_words.len()).find_map(|i| {
            // The longest duration starting here (`2 hours`), or its first words alone
            // when what follows spoils it (`1m 0`).
            let tail = reason_words.len() - i;
            [tail, 2, 1].into_iter().filter(|n| *n <= tail).find_map(|n| {
                match crate::duration::read_typed(&reason_words[i..i + n]) {
                    Ok((Some(_), used)) => Some((i, used)),
                    _ => None,
                }
            })
        });
        if let Some((pos, used)) = found {
            let mut without = reason_words.to_vec();
            let found = without.drain(pos..pos + used).collect::<Vec<_>>().join(" ");
            let found = found.as_str();
            let role = role.clone().unwrap_or_else(|| {
                config
                    .resource(&resource)
                    .map(|r| r.default_role().to_string())
                    .unwrap_or_else(|| "<role>".into())
            });
            return Err(format!(
                "I read no duration right after `{}`, but your reason mentions `{}`; nothing was done. \
                 Put the duration right after the resource, like `{}`.",
                escape(&resource),
                escape(found),
                escape(&format!("{cmd} {verb} {resource}:{role} {found} {}", without.join(" "))).trim_end()
            ));
        }
    }
    let reason = reason_words.join(" ");
    Ok(Command::Request(RequestInput {
        resource,
        role,
        duration,
        reason,
    }))
}

/// `revoke <id>`, `cancel <id>` and `extend <id> <duration> [reason]`.
fn parse_id_command<'a>(
    verb: &str,
    mut tokens: std::iter::Peekable<impl Iterator<Item = &'a str>>,
    config: &Config,
) -> Result<Command, String> {
    let cmd = &config.slack.command;
    tokens.next();
    let example = match verb {
        "extend" => format!("`{cmd} extend JIT-42 1h still debugging`"),
        "cancel" => format!("`{cmd} cancel JIT-42`"),
        _ => format!("`{cmd} revoke JIT-42`"),
    };
    let Some(id_text) = tokens.next() else {
        return Err(format!(
            "Say which request, for example {example}. `{cmd} list` shows yours."
        ));
    };
    let Some(id) = parse_label(id_text) else {
        return Err(format!(
            "`{}` is not a request id; write it like {example}.",
            escape(id_text)
        ));
    };
    match verb {
        "extend" => {
            let rest: Vec<&str> = tokens.collect();
            let (duration, used) = crate::duration::read_typed(&rest)
                .map_err(|e| format!("{e}. Nothing was done; for example {example}."))?;
            let Some(duration) = duration else {
                return Err(format!("Say how much longer, for example {example}."));
            };
            let reason = rest[used..].join(" ");
            Ok(Command::Extend { id, duration, reason })
        }
        "cancel" => Ok(Command::Cancel { id }),
        _ => Ok(Command::Revoke { id }),
    }
}

/// An ephemeral reply to the command.
pub fn ephemeral(text: String) -> SlackCommandEventResponse {
    SlackCommandEventResponse::new(SlackMessageContent::new().with_text(text))
        .with_response_type(SlackMessageResponseType::Ephemeral)
}

/// Runs a command and returns what the user sees. Touches only the database.
pub async fn handle(app: &AppState, cmd: &SlashCommand) -> anyhow::Result<String> {
    let per_minute = app.config.requests.commands_per_minute;
    if let Err(wait) = app.command_rate.check(&cmd.user_id, per_minute, app.now_ms()) {
        return Ok(refuse(
            app,
            cmd,
            "rate limited",
            format!(
                "You sent more than {per_minute} `{}` commands in the last minute; nothing was done. \
                 Please try again in {wait} s.",
                app.config.slack.command
            ),
        )
        .await);
    }
    let text = unescape(&cmd.text);
    let command = match parse(&text, &app.config) {
        Ok(c) => c,
        Err(message) => return Ok(message),
    };
    match command {
        Command::Help => Ok(usage(&app.config)),
        Command::OpenForm => {
            let Some(trigger) = cmd.trigger_id.clone().filter(|t| !t.is_empty()) else {
                return Ok(usage(&app.config));
            };
            // The trigger_id is good for 3 s: open the form now, before anything slow.
            let view = crate::forms::request_modal(&app.config, None, crate::forms::Origin::channel(&cmd.channel_id));
            let task_app = app.clone();
            let url = cmd.response_url.clone();
            app.tasks.spawn(async move {
                if let Err(e) = task_app.slack.open_view(&trigger, view).await {
                    tracing::warn!(error = %e, "could not open the request form");
                    reply_later(
                        &task_app,
                        url,
                        format!(
                            "Slack did not open the request form ({e}). Type it instead: {}",
                            usage(&task_app.config)
                        ),
                    )
                    .await;
                }
            });
            Ok(format!(
                "Opening the request form… (`{} help` lists the commands.)",
                app.config.slack.command
            ))
        }
        Command::List => list(app, &cmd.user_id).await,
        Command::Revoke { id } => match crate::approvals::revoke_as(app, id, &cmd.user_id, false).await? {
            Some(reply) => Ok(reply),
            None => {
                // Only a group lookup can tell: answer now, decide in the background.
                let task_app = app.clone();
                let user = cmd.user_id.clone();
                let url = cmd.response_url.clone();
                app.tasks.spawn(async move {
                    let reply = match crate::approvals::revoke_as(&task_app, id, &user, true).await {
                        Ok(r) => r.unwrap_or_default(),
                        Err(e) => {
                            tracing::error!(error = format!("{e:#}"), "revoke failed");
                            "Something went wrong on jitgate's side; nothing changed. Please try again.".into()
                        }
                    };
                    if let Some(url) = url {
                        if let Err(e) = task_app.send_now(crate::store::Outgoing::ephemeral(&url, reply)).await {
                            tracing::error!(error = format!("{e:#}"), "could not queue a reply");
                        }
                    }
                });
                Ok(format!("Checking whether you may revoke {}…", label(id)))
            }
        },
        Command::Cancel { id } => {
            if requests::cancel(app, id, &cmd.user_id).await? {
                Ok(format!("{} is withdrawn.", label(id)))
            } else {
                Ok(format!(
                    "{} is not a pending request of yours, so nothing changed. `{} list` shows yours.",
                    label(id),
                    app.config.slack.command
                ))
            }
        }
        Command::Extend { id, duration, reason } => {
            let Some(_slot) = pending_slot(app, &cmd.user_id).await? else {
                return Ok(too_many_pending(app, cmd).await);
            };
            extend(app, cmd, id, duration, reason).await
        }
        Command::BreakGlass(input) => {
            let who = Requester {
                user_id: cmd.user_id.clone(),
                team_id: cmd.team_id.clone(),
                channel_id: cmd.channel_id.clone(),
                response_url: cmd.response_url.clone(),
                // Guarded by its delivery key in `inputs::command_once` instead.
                delivery_key: None,
            };
            match crate::approvals::breakglass::use_as(app, &who, &input, false).await? {
                Some(reply) => Ok(reply),
                None => {
                    // Only a group lookup can tell: answer now, decide in the background.
                    let task_app = app.clone();
                    let url = cmd.response_url.clone();
                    app.tasks.spawn(async move {
                        let reply = match crate::approvals::breakglass::use_as(&task_app, &who, &input, true).await {
                            Ok(r) => r.unwrap_or_default(),
                            Err(e) => {
                                tracing::error!(error = format!("{e:#}"), "break-glass failed");
                                "Something went wrong on jitgate's side; nothing was granted. Please try again.".into()
                            }
                        };
                        reply_later(&task_app, url, reply).await;
                    });
                    Ok("Checking whether you may use break-glass…".into())
                }
            }
        }
        Command::Explain { resource, role } => {
            let question = crate::approvals::explain::Question {
                user: cmd.user_id.clone(),
                resource,
                role,
                channel: Some(cmd.channel_id.clone()),
                duration: None,
            };
            if app.config.resource(&question.resource).is_none() {
                return Ok(format!(
                    "There is no resource called `{}`. You can ask for:\n{}",
                    escape(&question.resource),
                    requests::resource_list(&app.config)
                ));
            }
            // Group members, the channel and on-call status are asked of Slack and the
            // on-call services: answer now, explain in the background.
            let task_app = app.clone();
            let url = cmd.response_url.clone();
            app.tasks.spawn(async move {
                let lookups = crate::approvals::explain::Lookups {
                    config: &task_app.config,
                    slack: Some(&task_app.slack),
                    slack_or_offline: &task_app.slack,
                    oncall: &task_app.oncall,
                    read: &task_app.db.read,
                    now: task_app.clock.now(),
                };
                let reply = match crate::approvals::explain::explain(&lookups, &question).await {
                    Ok(Ok(e)) => crate::approvals::explain::render(&e, true),
                    Ok(Err(unknown)) => unknown,
                    Err(e) => {
                        tracing::error!(error = format!("{e:#}"), "explain failed");
                        "Something went wrong on jitgate's side. Please try again.".into()
                    }
                };
                reply_later(&task_app, url, reply).await;
            });
            Ok("Working out the policy…".into())
        }
        Command::Request(input) => {
            let who = Requester {
                user_id: cmd.user_id.clone(),
                team_id: cmd.team_id.clone(),
                channel_id: cmd.channel_id.clone(),
                response_url: cmd.response_url.clone(),
                delivery_key: cmd.trigger_id.clone().filter(|t| !t.is_empty()),
            };
            match request_access(app, &who, &input).await? {
                Ok((_, reply)) => Ok(reply),
                Err(refused) => Ok(refuse(app, cmd, refused.why, refused.message).await),
            }
        }
    }
}

/// Why a request was not created: for the audit log (`why`), the person (`message`)
/// and the form field it concerns (`field`, a modal input's block_id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub why: &'static str,
    pub message: String,
    pub field: &'static str,
}

/// Creates a request for `who`: the one path for `/jit request` and the request modal.
/// Validates it against the configuration, holds the sender's pending cap, stores it,
/// and returns its id with the confirmation to show, which repeats what was understood
/// (resource, role, duration, reason). A refusal changes nothing; the caller audits it.
///
/// When `who.delivery_key` (the command's trigger_id) stored a request before — Slack
/// delivering the command again, or a replay — nothing is stored and the first request's
/// confirmation is returned again.
pub async fn request_access(
    app: &AppState,
    who: &Requester,
    input: &RequestInput,
) -> anyhow::Result<Result<(i64, String), Refused>> {
    let valid = match requests::validate(&app.config, input) {
        Ok(v) => v,
        Err(message) => {
            app.metrics.request("refused");
            tracing::info!(
                actor = %who.user_id,
                resource = %input.resource,
                role = input.role.as_deref().unwrap_or_default(),
                "request refused: not valid"
            );
            return Ok(Err(Refused {
                why: "invalid request",
                field: requests::refused_field(&app.config, input),
                message,
            }));
        }
    };
    // Held until the request is stored, so parallel requests cannot pass the cap.
    let Some(_slot) = pending_slot(app, &who.user_id).await? else {
        return Ok(Err(Refused {
            why: "too many pending requests",
            message: too_many_pending_message(app),
            field: "resource",
        }));
    };
    let id = match requests::create(app, who, &valid).await {
        Ok(id) => id,
        Err(e) if store::is_already_received(&e) => {
            let key = who.delivery_key.as_deref().unwrap_or_default();
            return match earlier_request(app, key).await {
                Some(first) => Ok(Ok((first.id, confirmation(&app.config, &Understood::stored(&first))))),
                None => Err(e),
            };
        }
        Err(e) => return Err(e),
    };
    let understood = Understood {
        id,
        resource: &valid.resource,
        role: &valid.role,
        duration: valid.duration,
        reason: &valid.reason,
        approval_channel: &valid.approval_channel,
        origin_channel: &who.channel_id,
    };
    Ok(Ok((id, confirmation(&app.config, &understood))))
}

/// What a confirmation repeats: the request as understood and stored.
pub struct Understood<'a> {
    pub id: i64,
    pub resource: &'a str,
    pub role: &'a str,
    pub duration: HumanDuration,
    pub reason: &'a str,
    pub approval_channel: &'a str,
    /// Where it was asked from (an incident channel may mean on-call auto-approval).
    pub origin_channel: &'a str,
}

impl<'a> Understood<'a> {
    /// A stored request.
    pub fn stored(r: &'a store::RequestRow) -> Self {
        Self {
            id: r.id,
            resource: &r.resource,
            role: &r.role,
            duration: HumanDuration::from_secs(r.duration_secs.max(0) as u64),
            reason: &r.reason,
            approval_channel: &r.approval_channel,
            origin_channel: &r.origin_channel,
        }
    }
}

/// What `/jit request` and the modal confirm: exactly what was understood. A plain
/// function of what was stored, so a re-delivered command gets the same answer.
pub fn confirmation(config: &Config, u: &Understood) -> String {
    let understood = format!(
        "`{}:{}` for {}, reason: \u{201c}{}\u{201d}",
        u.resource,
        u.role,
        u.duration,
        escape(&crate::text::truncate(u.reason, 500)),
    );
    if crate::oncall::could_auto_approve(config, u.resource, u.role, u.duration, u.origin_channel) {
        return format!(
            "Request *{}* for {understood} is being checked against on-call: if this is an incident channel \
             and you are on call now, it is approved automatically; otherwise it goes to the approvers in <#{}>. \
             I'll message you either way.",
            label(u.id),
            u.approval_channel
        );
    }
    let mut reply = format!(
        "Request *{}* for {understood} is waiting for approval in <#{}>. I'll message you when it is decided.",
        label(u.id),
        u.approval_channel
    );
    if let Some(cap) = crate::oncall::cap_exceeded(config, u.resource, u.role, u.duration, u.origin_channel) {
        reply.push_str(&format!(
            " On-call auto-approval covers at most {cap}; ask for {cap} or less to have it approved on call."
        ));
    }
    reply
}

/// The request the command with trigger_id `key` created, if it did.
async fn earlier_request(app: &AppState, key: &str) -> Option<store::RequestRow> {
    let mut conn = app.db.read.acquire().await.ok()?;
    let (_, request_id) = store::earlier_delivery(&mut conn, store::COMMAND_DELIVERY, key)
        .await
        .ok()??;
    store::get_request(&mut conn, request_id?).await.ok().flatten()
}

/// What the first delivery of the command with trigger_id `key` answered: its stored
/// reply, or the confirmation of the request it created. `None` when `key` is new.
pub async fn earlier_reply(app: &AppState, key: &str) -> Option<String> {
    let mut conn = app.db.read.acquire().await.ok()?;
    let (reply, request_id) = store::earlier_delivery(&mut conn, store::COMMAND_DELIVERY, key)
        .await
        .ok()??;
    if let Some(reply) = reply {
        return Some(reply);
    }
    let request = match request_id {
        Some(id) => store::get_request(&mut conn, id).await.ok().flatten(),
        None => None,
    };
    Some(match request {
        Some(r) => confirmation(&app.config, &Understood::stored(&r)),
        None => "Received; jitgate is still working on this command.".into(),
    })
}

/// Sends a reply to a command after its request was answered.
async fn reply_later(app: &AppState, response_url: Option<String>, reply: String) {
    if let Some(url) = response_url {
        if let Err(e) = app.send_now(crate::store::Outgoing::ephemeral(&url, reply)).await {
            tracing::error!(error = format!("{e:#}"), "could not queue a reply");
        }
    }
}

/// Audits a refused command (who sent what, why it was refused) and returns the reply.
async fn refuse(app: &AppState, cmd: &SlashCommand, why: &str, reply: String) -> String {
    app.audit_refusal(
        &cmd.user_id,
        "command.refused",
        None,
        serde_json::json!({ "why": why, "text": crate::text::truncate(&cmd.text, 200) }),
    )
    .await;
    reply
}

/// The right to add one pending request for the sender: `None` when they have
/// `[requests] max_pending_per_user` already. The guard serialises one person's new
/// requests (only theirs) until the caller has stored its request.
pub async fn pending_slot(app: &AppState, user: &str) -> anyhow::Result<Option<tokio::sync::OwnedMutexGuard<()>>> {
    let guard = app.access_locks.lock_key(format!("pending-cap\u{1f}{user}")).await;
    let mut conn = app.db.read.acquire().await?;
    let pending = store::count_pending_of(&mut conn, user).await?;
    Ok((pending < app.config.requests.max_pending_per_user as i64).then_some(guard))
}

async fn too_many_pending(app: &AppState, cmd: &SlashCommand) -> String {
    refuse(app, cmd, "too many pending requests", too_many_pending_message(app)).await
}

/// The reply when the sender has `[requests] max_pending_per_user` pending requests.
pub fn too_many_pending_message(app: &AppState) -> String {
    let max = app.config.requests.max_pending_per_user;
    format!(
        "You have {max} requests waiting for approval already, the most allowed; nothing was done. \
         Withdraw one with `{cmd} cancel <id>` (`{cmd} list` shows them) or wait for a decision.",
        cmd = app.config.slack.command
    )
}

async fn extend(
    app: &AppState,
    cmd: &SlashCommand,
    id: i64,
    add: HumanDuration,
    reason: String,
) -> anyhow::Result<String> {
    let who = Requester {
        user_id: cmd.user_id.clone(),
        team_id: cmd.team_id.clone(),
        channel_id: cmd.channel_id.clone(),
        response_url: cmd.response_url.clone(),
        // Guarded by its delivery key in `inputs::command_once` instead.
        delivery_key: None,
    };
    Ok(match extend_as(app, &who, id, add, reason).await? {
        Ok((_, reply)) => reply,
        Err(refused) => refuse(app, cmd, refused.why, refused.message).await,
    })
}

/// Asks for `add` more time on request `id`'s grant for `who`: the one path for
/// `/jit extend` and the Extend modal. `Ok((Some(extension id), reply))` when an
/// extension was created, `Ok((None, reply))` when nothing could be done (the reply says
/// why), `Err` for a refusal the caller audits. The caller holds the pending cap.
pub async fn extend_as(
    app: &AppState,
    who: &Requester,
    id: i64,
    add: HumanDuration,
    reason: String,
) -> anyhow::Result<Result<(Option<i64>, String), Refused>> {
    let (request, grant) = {
        let mut conn = app.db.read.acquire().await?;
        (
            store::get_request(&mut conn, id).await?,
            store::grant_of(&mut conn, id).await?,
        )
    };
    let nothing = |text: String| Ok(Ok((None, text)));
    let (Some(request), Some(grant)) = (request, grant) else {
        return nothing(format!(
            "{} has no access to extend. `{} list` shows yours.",
            label(id),
            app.config.slack.command
        ));
    };
    if request.requester_id != who.user_id {
        return Ok(Err(Refused {
            why: "not the requester",
            message: format!("Only <@{}> can extend {}.", request.requester_id, label(id)),
            field: "duration",
        }));
    }
    if grant.state != GrantState::Active || grant.revoke_requested_by.is_some() {
        return nothing(format!(
            "{} is not active, so it cannot be extended; ask for new access instead.",
            label(id)
        ));
    }
    let Some(resource) = app.config.resource(&request.resource) else {
        return nothing(format!(
            "`{}` is no longer configured, so {} cannot be extended.",
            request.resource,
            label(id)
        ));
    };
    let so_far = HumanDuration::from_secs(grant.duration_secs as u64);
    let total = HumanDuration::from_secs(grant.duration_secs as u64 + add.as_secs());
    if total > resource.max_total_duration {
        let room = resource
            .max_total_duration
            .as_secs()
            .saturating_sub(grant.duration_secs as u64);
        let hint = if room > 0 {
            format!("you can add up to {}", HumanDuration::from_secs(room))
        } else {
            "ask for new access when it ends".to_string()
        };
        return nothing(format!(
            "{} has {so_far} so far and `{}` allows {} in all, so {add} more is too much; {hint}.",
            label(id),
            resource.name,
            resource.max_total_duration
        ));
    }
    // The command text was decoded once already (in `handle`); the same rule as requests.
    let reason = match crate::text::check_typed("reason", &reason, app.config.requests.max_reason_length) {
        Ok(r) if r.is_empty() => format!("extend {}", label(id)),
        Ok(r) => r,
        Err(message) => {
            return Ok(Err(Refused {
                why: "invalid reason",
                message,
                field: "reason",
            }))
        }
    };
    let ext = requests::create_extension(app, who, &request, resource, add, reason).await?;
    let reply = if resource.self_extend {
        format!(
            "Extending {} by {add} ({}); I'll message you when it is done.",
            label(id),
            label(ext)
        )
    } else {
        format!(
            "Extension request *{}* for {} (+{add}) is waiting for approval in <#{}>.",
            label(ext),
            label(id),
            resource.approval_channel
        )
    };
    Ok(Ok((Some(ext), reply)))
}

/// The caller's pending requests and live grants, as `/jit list` and the Home tab show them.
pub async fn list(app: &AppState, user: &str) -> anyhow::Result<String> {
    let mut conn = app.db.read.acquire().await?;
    let pending = store::pending_requests_of(&mut conn, user).await?;
    let grants = store::live_grants_of(&mut conn, user).await?;
    if pending.is_empty() && grants.is_empty() {
        return Ok(format!(
            "You have no pending requests and no access right now. Ask with `{} request <resource>[:<role>] [<duration>] <reason>`.",
            app.config.slack.command
        ));
    }
    let mut lines = Vec::new();
    if !grants.is_empty() {
        lines.push("*Your access*".to_string());
        for g in &grants {
            let status = match (g.state, g.expires_at) {
                (GrantState::Active, Some(exp)) => format!("active, ends {}", slack_date(exp)),
                _ => "being granted".to_string(),
            };
            lines.push(format!(
                "• {} `{}:{}` — {status}",
                label(g.request_id),
                g.resource,
                g.role
            ));
        }
    }
    if !pending.is_empty() {
        let ids: Vec<i64> = pending.iter().map(|r| r.id).collect();
        let refused = store::cards_refused(&mut conn, &ids).await?;
        lines.push("*Waiting for approval*".to_string());
        for r in &pending {
            let what = format!(
                "• {} `{}:{}` for {}",
                label(r.id),
                r.resource,
                r.role,
                HumanDuration::from_secs(r.duration_secs as u64),
            );
            lines.push(match refused.get(&r.id) {
                // Nobody has seen the card: do not let it look like it is waiting in a channel.
                Some(code) => format!(
                    "{what} — :warning: *not seen by any approver yet*: Slack refused to post its card in <#{}> \
                     (`{code}`); an operator must {}. Asked {}",
                    r.approval_channel,
                    crate::cards::refusal_fix(code, &r.approval_channel),
                    slack_date(r.created_at)
                ),
                None => format!(
                    "{what} — in <#{}> since {}",
                    r.approval_channel,
                    slack_date(r.created_at)
                ),
            });
        }
    }
    Ok(lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::path::Path;

    fn config() -> Config {
        crate::config::parse(
            Path::new("t.toml"),
            r#"
[[resources]]
name = "prod-db"
roles = ["read", "write"]
approval_channel = "C0APPROVALS"
approvers = ["U0APPROVER1"]
adapter = "demo"

[adapters.demo]
type = "noop"
"#,
        )
        .unwrap()
    }

    fn req(text: &str) -> RequestInput {
        match parse(text, &config()).unwrap() {
            Command::Request(r) => r,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn the_documented_request_parses() {
        let r = req("request prod-db:read 2h investigating INC-1234");
        assert_eq!(r.resource, "prod-db");
        assert_eq!(r.role.as_deref(), Some("read"));
        assert_eq!(r.duration.unwrap().as_secs(), 7200);
        assert_eq!(r.reason, "investigating INC-1234");
    }

    #[test]
    fn duration_and_role_are_optional() {
        let r = req("request prod-db 2fa reset for alice");
        assert_eq!(
            (r.role, r.duration, r.reason.as_str()),
            (None, None, "2fa reset for alice")
        );
    }

    #[test]
    fn a_resource_name_alone_starts_a_request() {
        assert_eq!(req("prod-db:write 30m fix").resource, "prod-db");
    }

    #[test]
    fn empty_text_and_help_show_usage() {
        assert_eq!(parse("", &config()).unwrap(), Command::OpenForm);
        assert_eq!(parse("request", &config()).unwrap(), Command::OpenForm);
        assert_eq!(parse("  help ", &config()).unwrap(), Command::Help);
        assert_eq!(parse("list", &config()).unwrap(), Command::List);
    }

    #[test]
    fn a_malformed_duration_says_how_to_write_one() {
        let e = parse("request prod-db 2 fix it", &config()).unwrap_err();
        assert!(e.contains("write it like"), "{e}");
    }

    #[test]
    fn a_role_typed_as_a_separate_word_is_refused_with_the_fix() {
        let e = parse("request prod-db write 2h fixing prod", &config()).unwrap_err();
        assert!(
            e.contains("did you mean `/jit request prod-db:write 2h fixing prod`?"),
            "{e}"
        );
        let e = parse("breakglass prod-db write 30m db down", &config()).unwrap_err();
        assert!(e.contains("`/jit breakglass prod-db:write 30m db down`"), "{e}");
        // Not a role of the resource: the start of the reason.
        assert_eq!(req("request prod-db writes logs").reason, "writes logs");
    }

    #[test]
    fn extend_reads_durations_as_requests_do() {
        let Command::Extend { duration, reason, .. } = parse("extend JIT-3 1h 30m still digging", &config()).unwrap()
        else {
            panic!("not extend")
        };
        assert_eq!((duration.as_secs(), reason.as_str()), (5400, "still digging"));
        let e = parse("extend JIT-3 1.5x more", &config()).unwrap_err();
        assert!(e.contains("`1.5x`"), "{e}");
    }

    #[test]
    fn unknown_commands_show_usage() {
        let e = parse("frobnicate", &config()).unwrap_err();
        assert!(
            e.contains("don't know the command `frobnicate`") && e.contains("/jit request"),
            "{e}"
        );
    }

    proptest! {
        #[test]
        fn parsing_never_panics(text in "\\PC{0,80}") {
            let _ = parse(&text, &config());
        }

        #[test]
        fn a_typed_duration_is_never_silently_dropped(
            n in 1u64..300,
            unit in 0usize..6,
            spaced in proptest::bool::ANY,
            reason in proptest::collection::vec("[a-z0-9.?]{1,6}", 0..4),
            after in proptest::bool::ANY,
        ) {
            let (word, secs) = [("m", 60), ("min", 60), ("h", 3600), ("hours", 3600), ("minutes", 60), ("d", 86_400)][unit];
            let duration = if spaced { format!("{n} {word}") } else { format!("{n}{word}") };
            let reason = reason.join(" ");
            // A reason starting with a number can continue the duration ("1h 1m" is 1h1m,
            // as "1h 30m" is), which this property does not model.
            prop_assume!(!reason.starts_with(|c: char| c.is_ascii_digit()));
            // In the duration position, or (wrongly) inside the reason.
            let text = if after {
                format!("request prod-db:read fixing {duration} {reason}")
            } else {
                format!("request prod-db:read {duration} {reason}")
            };
            match parse(&text, &config()) {
                Ok(Command::Request(r)) => {
                    prop_assert!(!after, "{} was read without its duration: {:?}", text, r);
                    prop_assert_eq!(r.duration.map(HumanDuration::as_secs), Some(n * secs), "{}", text);
                }
                Ok(other) => prop_assert!(false, "{}: {:?}", text, other),
                Err(e) => prop_assert!(e.contains(&n.to_string()), "{}: {}", text, e),
            }
        }

        #[test]
        fn a_request_without_duration_has_none_in_its_reason(text in "[a-z0-9 .:?-]{0,40}") {
            if let Ok(Command::Request(r)) = parse(&format!("request {text}"), &config()) {
                if r.duration.is_none() {
                    let words: Vec<&str> = r.reason.split_whitespace().collect();
                    for i in 0..words.len() {
                        for end in i + 1..=words.len() {
                            let read = crate::duration::read_typed(&words[i..end]);
                            prop_assert!(!matches!(read, Ok((Some(_), _))), "{} kept {} in the reason", text, words[i]);
                        }
                    }
                }
            }
        }

        #[test]
        fn reason_words_survive_parsing(words in proptest::collection::vec("[a-zA-Z][a-zA-Z0-9-]{0,10}", 1..8)) {
            let reason = words.join(" ");
            let r = req(&format!("request prod-db:read 1h {reason}"));
            prop_assert_eq!(r.reason, reason);
        }
    }
}
