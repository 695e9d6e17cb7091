//! `jitgate dev`: the whole product on one machine, with no Slack account — jitgate
//! itself, a SQLite file in a local data directory, and the local Slack (a fake Slack's
//! Web API plus a web page people use like Slack, [`crate::fakeslack::page`]).
//!
//! Everything listens on 127.0.0.1 only: the page on the port asked for, the bot on a
//! free port of its own. No `SLACK_*` variable is read: the signing secret is made anew
//! at every start, the bot token is the fake's, and the audit key is kept in the data
//! directory (a convenience for a demonstration, never for production). The database is
//! `jitgate-dev.db`, never `serve`'s. With a user's configuration (`--config`) every
//! adapter is replaced by the record adapter unless `--real-adapters` is given, since
//! anyone at the page can act as any approver.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{self, AdapterConfig, Config, RecordAdapterConfig};
use crate::duration::HumanDuration;
use crate::fakeslack::page::{self, Directory, Group, Person, Room, Shortcut};
use crate::fakeslack::{self, FakeSlack};

/// The demo configuration run when no `--config` is given.
pub const DEMO_CONFIG: &str = include_str!("demo.toml");
/// The database `dev` keeps in its data directory.
pub const DATABASE_FILE: &str = "jitgate-dev.db";
/// Where the record adapter writes grants and revokes, in the data directory.
pub const RECORD_FILE: &str = "jitgate-dev-grants.jsonl";
/// The audit key `dev` makes and keeps in its data directory.
pub const AUDIT_KEY_FILE: &str = "jitgate-dev-audit.key";
/// The workspace and app the local Slack's commands and clicks come from.
pub const TEAM_ID: &str = "T0TEAM";
pub const API_APP_ID: &str = "A0JITGATE";
/// The app manifest: the local Slack offers the global shortcuts it declares.
const MANIFEST: &str = include_str!("../../manifest/slack-app.yaml");

fn shortcuts() -> Vec<Shortcut> {
    page::manifest_shortcuts(MANIFEST)
}

/// How long shutdown waits for open clients and running adapter calls, at most.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// What `jitgate dev` was asked for.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// The local Slack's port on 127.0.0.1 (0: any free port).
    pub port: u16,
    /// Where the database, the record file and the audit key live.
    pub data_dir: PathBuf,
    /// A configuration of one's own instead of the demo's.
    pub config: Option<PathBuf>,
    /// Keep the configuration's adapters instead of the record adapter.
    pub real_adapters: bool,
}

/// A running `jitgate dev`.
pub struct Dev {
    /// The local Slack's page.
    pub url: String,
    /// The bot.
    pub running: crate::Running,
    /// The fake Slack behind the page (tests inspect its calls).
    pub fake: FakeSlack,
    /// The data directory, absolute.
    pub data_dir: PathBuf,
    page: tokio::task::JoinHandle<std::io::Result<()>>,
    page_stop: CancellationToken,
}

impl Dev {
    /// Stops the page, then the bot (bounded: see [`crate::Running::shutdown`]).
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.page_stop.cancel();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.page).await.is_err() {
            tracing::warn!("the local Slack page did not stop in time");
        }
        self.running.shutdown().await
    }
}

/// Runs `jitgate dev` until `stop` is cancelled (a signal) or the bot stops, printing
/// the page's URL.
pub async fn run(options: DevOptions, stop: CancellationToken) -> anyhow::Result<()> {
    let dev = start(options).await?;
    {
        // One write, and no panic if nobody reads standard output any more.
        use std::io::Write;
        let _ = write!(
            std::io::stdout().lock(),
            "jitgate dev: the local Slack is at {}\n  data: {} (database {DATABASE_FILE}, grants and revokes in \
             {RECORD_FILE})\n  anyone who can open this page can act as anyone: it listens on 127.0.0.1 only. \
             Ctrl-C stops it.\n",
            dev.url,
            dev.data_dir.display()
        );
    }
    let bot_stopped = dev.running.state.shutdown.clone();
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = bot_stopped.cancelled() => {}
    }
    tracing::info!("shutting down");
    dev.shutdown().await
}

/// Starts the local Slack and the bot behind it.
pub async fn start(options: DevOptions) -> anyhow::Result<Dev> {
    std::fs::create_dir_all(&options.data_dir)
        .with_context(|| format!("cannot create the data directory {}", options.data_dir.display()))?;
    let data_dir = std::path::absolute(&options.data_dir)
        .with_context(|| format!("data directory {}", options.data_dir.display()))?;
    // The page's port first: a busy port fails before anything else starts.
    let page_listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, options.port)))
        .await
        .with_context(|| {
            format!(
                "cannot listen on 127.0.0.1:{}; free the port or choose another with --port",
                options.port
            )
        })?;
    let page_addr = page_listener.local_addr()?;

    let (config, directory) = match &options.config {
        None => {
            let config = config::parse(&data_dir.join("jitgate-dev.toml"), DEMO_CONFIG)
                .map_err(|e| anyhow::anyhow!("the embedded demo configuration: {e}"))?;
            (config, demo_directory())
        }
        Some(path) => {
            let config = config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
            let directory = directory_for(&config);
            (config, directory)
        }
    };
    let fake = FakeSlack::start().await;
    // Before the bot starts: its self-check asks the fake about every channel.
    directory.install(&fake);
    let audit_key = audit_key(&data_dir)?;
    let config = localize(
        config,
        &data_dir,
        &fake,
        options.real_adapters || options.config.is_none(),
    );

    let signing_secret = hex::encode(rand::random::<[u8; 32]>());
    let secrets = crate::Secrets {
        bot_token: fakeslack::BOT_TOKEN.to_string(),
        signing_secret: Some(signing_secret.clone()),
        app_token: None,
    };
    let mut env_overrides = BTreeMap::new();
    env_overrides.insert("JITGATE_AUDIT_KEY".to_string(), audit_key);
    let options = crate::Options {
        shutdown_grace: SHUTDOWN_GRACE.min(config.server.shutdown_grace.to_std()),
        env_overrides,
        ..crate::Options::default()
    };
    let bot_listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .context("cannot listen on a free loopback port for the bot")?;
    let running = crate::start(config, secrets, options, bot_listener).await?;
    let bot_url = format!("http://{}", running.addr);

    let page_stop = CancellationToken::new();
    let stop = page_stop.clone();
    let page_fake = fake.clone();
    let page = tokio::spawn(async move {
        let served = page::serve(
            page_listener,
            page_fake,
            directory,
            &bot_url,
            signing_secret.as_bytes(),
            stop,
        )
        .await;
        tracing::info!("local Slack page stopped");
        served
    });
    let url = format!("http://{page_addr}/");
    tracing::info!(%url, bot = %running.addr, "jitgate dev: local Slack and bot listening on loopback");
    Ok(Dev {
        url,
        running,
        fake,
        data_dir,
        page,
        page_stop,
    })
}

/// Points the configuration at this machine: loopback listener, the local Slack's Web
/// API and response URLs, the data directory's database, and (unless `keep_adapters`)
/// the record adapter in place of every adapter.
fn localize(mut config: Config, data_dir: &Path, fake: &FakeSlack, keep_adapters: bool) -> Config {
    config.server.listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    config.server.shutdown_grace = HumanDuration::from_secs(SHUTDOWN_GRACE.as_secs());
    // Operations endpoints stay on the bot's own loopback listener.
    config.metrics.listen = None;
    config.database.url = config::resolve_database_url(DATABASE_FILE, data_dir);
    config.slack.api_url = fake.api_url();
    config.slack.response_url_hosts = vec!["127.0.0.1".to_string()];
    config.slack.team_id = Some(TEAM_ID.to_string());
    config.slack.api_app_id = Some(API_APP_ID.to_string());
    config.audit.key_file = None;
    if config.audit.anchor_file.is_some() {
        config.audit.anchor_file = Some(data_dir.join("jitgate-dev-anchor.jsonl"));
    }
    if !keep_adapters {
        let record = RecordAdapterConfig {
            file: data_dir.join(RECORD_FILE),
        };
        for adapter in config.adapters.values_mut() {
            *adapter = AdapterConfig::Record(record.clone());
        }
    }
    config
}

/// The audit key kept in the data directory, made at the first start (0600).
fn audit_key(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join(AUDIT_KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(key) if !key.trim().is_empty() => return Ok(key.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let key = hex::encode(rand::random::<[u8; 32]>());
    write_private(&path, &key).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(key)
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(text.as_bytes())
}

fn person(id: &str, name: &str, title: &str) -> Person {
    Person {
        id: id.into(),
        name: name.into(),
        title: title.into(),
    }
}

fn room(id: &str, name: &str) -> Room {
    Room {
        id: id.into(),
        name: name.into(),
    }
}

/// The people, channels and groups the demo configuration names.
pub fn demo_directory() -> Directory {
    Directory {
        team_id: TEAM_ID.into(),
        api_app_id: API_APP_ID.into(),
        command: "/jit".into(),
        people: vec![
            person("U0ALICE", "Alice", "developer"),
            person("U0BOB", "Bob", "approves prod-db, staging-db, k8s-prod"),
            person("U0CAROL", "Carol", "DBA (@dbas), on-call rota"),
            person("U0DAVE", "Dave", "SRE, on-call rota, break-glass"),
            person("U0ERIN", "Erin", "approves k8s-prod"),
        ],
        channels: vec![
            room("C0GENERAL", "general"),
            room("C0DBAPPROVE", "db-approvals"),
            room("C0INFRAAPPROVE", "infra-approvals"),
            room("C0INC1234", "inc-1234-db-latency"),
            room("C0SECURITY", "security"),
        ],
        groups: vec![Group {
            id: "S0DBAS".into(),
            handle: "dbas".into(),
            members: vec!["U0CAROL".into()],
        }],
        shortcuts: shortcuts(),
    }
}

/// A directory for a configuration of one's own: a requester, everyone the file names
/// (shown by ID), a member for each user group, and every channel it names.
pub fn directory_for(config: &Config) -> Directory {
    let mut people = vec![person("U0YOU", "You", "a requester")];
    let mut add_person = |id: &str, title: &str| {
        if !people.iter().any(|p| p.id == id) {
            people.push(person(id, id, title));
        }
    };
    let mut groups: Vec<Group> = Vec::new();
    let mut channels = vec![room("C0GENERAL", "general")];
    let mut add_channel = |id: &str, name: String| {
        if !channels.iter().any(|c| c.id == id) {
            channels.push(room(id, &name));
        }
    };
    for r in &config.resources {
        for a in &r.approvers {
            add_person(a, &format!("approves {}", r.name));
        }
        let (bg_users, bg_groups) = match &r.break_glass {
            Some(b) => (b.users.as_slice(), b.groups.as_slice()),
            None => (&[][..], &[][..]),
        };
        for u in bg_users {
            add_person(u, "break-glass");
        }
        for g in r.approver_groups.iter().chain(bg_groups) {
            if !groups.iter().any(|x| &x.id == g) {
                let member = format!("U{}M", g.get(1..).unwrap_or_default());
                add_person(&member, &format!("member of {g}"));
                groups.push(Group {
                    id: g.clone(),
                    handle: g.to_ascii_lowercase(),
                    members: vec![member],
                });
            }
        }
        add_channel(&r.approval_channel, format!("{}-approvals", r.name));
    }
    if let Some(c) = &config.break_glass.security_channel {
        add_channel(c, "security".into());
    }
    if let Some(c) = &config.reconcile.channel {
        add_channel(c, "reconcile".into());
    }
    if let Some(c) = &config.audit.channel {
        add_channel(c, "audit".into());
    }
    if let Some(oncall) = &config.oncall {
        for (i, c) in oncall.incident_channels.iter().enumerate() {
            add_channel(c, format!("incident-{}", i + 1));
        }
        if let Some(prefix) = oncall.incident_channel_prefixes.first() {
            add_channel("C0INCIDENT", format!("{prefix}demo"));
        }
    }
    Directory {
        team_id: TEAM_ID.into(),
        api_app_id: API_APP_ID.into(),
        command: config.slack.command.clone(),
        people,
        channels,
        groups,
        shortcuts: shortcuts(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_configuration_is_valid_and_names_only_directory_people_and_channels() {
        let config = config::parse(Path::new("/tmp/jitgate-dev.toml"), DEMO_CONFIG).unwrap();
        let dir = demo_directory();
        let people: Vec<&str> = dir.people.iter().map(|p| p.id.as_str()).collect();
        let channels: Vec<&str> = dir.channels.iter().map(|c| c.id.as_str()).collect();
        for r in &config.resources {
            assert!(
                channels.contains(&r.approval_channel.as_str()),
                "{}",
                r.approval_channel
            );
            let bg = r.break_glass.as_ref().map(|b| b.users.clone()).unwrap_or_default();
            for a in r.approvers.iter().chain(&bg) {
                assert!(people.contains(&a.as_str()), "{a}");
            }
            for g in &r.approver_groups {
                assert!(dir.groups.iter().any(|x| &x.id == g), "{g}");
            }
        }
        assert!(config.resources.iter().any(|r| r.approvals_required == 2));
        assert!(matches!(config.adapters["demo"], AdapterConfig::Record(_)));
        let oncall = config.oncall.unwrap();
        let incident = dir.channels.iter().find(|c| c.id == "C0INC1234").unwrap();
        assert!(oncall
            .incident_channel_prefixes
            .iter()
            .any(|p| incident.name.starts_with(p.as_str())));
    }

    #[tokio::test]
    async fn a_configuration_of_ones_own_gets_loopback_the_local_slack_and_the_record_adapter() {
        let dir = tempfile::tempdir().unwrap();
        let text = DEMO_CONFIG.replace(
            "type = \"record\"\nfile = \"jitgate-dev-grants.jsonl\"",
            "type = \"webhook\"\nurl = \"https://grants.example.com/hook\"\nsecret_env = \"HOOK_SECRET\"",
        );
        let config = config::parse(&dir.path().join("mine.toml"), &text).unwrap();
        let fake = FakeSlack::start().await;
        let local = localize(config.clone(), dir.path(), &fake, false);
        assert!(local.server.listen.ip().is_loopback());
        assert_eq!(local.slack.api_url, fake.api_url());
        assert!(
            local.database.url.ends_with("/jitgate-dev.db"),
            "{}",
            local.database.url
        );
        assert!(matches!(local.adapters["demo"], AdapterConfig::Record(_)));
        let kept = localize(config, dir.path(), &fake, true);
        assert!(matches!(kept.adapters["demo"], AdapterConfig::Webhook(_)));
    }

    #[test]
    fn a_directory_for_ones_own_configuration_names_everyone_it_needs() {
        let config = config::parse(Path::new("/tmp/mine.toml"), DEMO_CONFIG).unwrap();
        let dir = directory_for(&config);
        assert_eq!(dir.people[0].id, "U0YOU");
        assert!(dir.people.iter().any(|p| p.id == "U0BOB"));
        assert!(dir.people.iter().any(|p| p.id == "U0DBASM"), "a member of S0DBAS");
        assert!(dir.channels.iter().any(|c| c.id == "C0DBAPPROVE"));
        assert!(dir.channels.iter().any(|c| c.name.starts_with("inc-")));
        assert!(
            dir.shortcuts.iter().any(|s| s.callback_id == "request_access"),
            "the manifest's shortcut"
        );
    }

    #[test]
    fn the_audit_key_is_made_once_and_kept_private() {
        let dir = tempfile::tempdir().unwrap();
        let first = audit_key(dir.path()).unwrap();
        assert_eq!(first.len(), 64);
        assert_eq!(audit_key(dir.path()).unwrap(), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(AUDIT_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{mode:o}");
        }
    }
}
