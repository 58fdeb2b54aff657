//! The create flow: a local Headscale with an API key, a user and a pre-auth key.

use super::events::{Flow, Reporter};
use super::SetupError;
use crate::binary::find_binary;
use crate::headscale::server_probe_url;
use crate::headscale::{
    create_api_key_via_cli, CreatedPreAuthKey, HeadscaleClient, HeadscaleError, HeadscaleProcess,
    HeadscaleSettings, PreAuthKeyRequest, ServerFiles, User,
};
use guildnet_core::progress::Progress;
use guildnet_core::token::Secret;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc;

/// What pre-auth key the create flow mints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreAuthKeyOptions {
    /// Can register more than one node (default true).
    pub reusable: bool,
    /// Nodes registered with it are ephemeral (default false).
    pub ephemeral: bool,
    /// Validity (default 24 h).
    pub expiration: Duration,
    /// ACL tags (`tag:name`) for nodes registered with it (default none).
    pub acl_tags: Vec<String>,
}

impl Default for PreAuthKeyOptions {
    fn default() -> Self {
        Self {
            reusable: true,
            ephemeral: false,
            expiration: Duration::from_secs(24 * 3600),
            acl_tags: Vec::new(),
        }
    }
}

/// Options of [`create`].
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// The GuildNet state dir; Headscale's files go under `${state}/headscale`.
    pub state_dir: PathBuf,
    /// The `headscale` binary (default: from `PATH`).
    pub headscale_bin: Option<PathBuf>,
    /// Settings for the first run; later runs reuse the stored ones.
    pub settings: HeadscaleSettings,
    /// The Headscale user that owns GuildNet's nodes (default `guildnet`).
    pub user: String,
    /// The pre-auth key to mint.
    pub preauth_key: PreAuthKeyOptions,
    /// Validity of a newly created API key (default 90 days).
    pub api_key_expiration: Duration,
    /// How long Headscale may take to serve (default 30 s).
    pub ready_timeout: Duration,
}

impl CreateOptions {
    /// Defaults for the state dir `state_dir`.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.into(),
            headscale_bin: None,
            settings: HeadscaleSettings::default(),
            user: "guildnet".into(),
            preauth_key: PreAuthKeyOptions::default(),
            api_key_expiration: Duration::from_secs(90 * 24 * 3600),
            ready_timeout: Duration::from_secs(30),
        }
    }
}

/// What [`create`] set up.
#[derive(Debug)]
pub struct CreateOutcome {
    /// The server it started, or `None` when one was already serving (a re-run). Dropping a
    /// started server stops it: keep it, or [detach](HeadscaleProcess::detach) it.
    pub server: Option<HeadscaleProcess>,
    /// The settings in force (the stored ones on a re-run).
    pub settings: HeadscaleSettings,
    /// Where the server keeps its files.
    pub files: ServerFiles,
    /// A REST client with the API key.
    pub client: HeadscaleClient,
    /// Whether the stored API key was reused.
    pub api_key_reused: bool,
    /// The user.
    pub user: User,
    /// Whether the user was created by this run.
    pub user_created: bool,
    /// The new pre-auth key (for `tailscale up --auth-key`).
    pub preauth_key: CreatedPreAuthKey,
}

impl CreateOutcome {
    /// The server URL (`--login-server`).
    pub fn url(&self) -> &str {
        &self.settings.server_url
    }
}

const STEPS: &[(&str, &str)] = &[
    ("config", "Write or reuse the Headscale config"),
    ("start", "Start Headscale"),
    ("apiKey", "Create or reuse the API key"),
    ("user", "Create or reuse the user"),
    ("preauthKey", "Create a pre-auth key"),
];

/// Emits `stepError` and a failed `done`, and returns the error.
async fn fail<T>(rep: &Reporter, step: &str, e: SetupError) -> Result<T, SetupError> {
    rep.step_error(step, &e).await;
    rep.done(false, format!("mesh create failed at {step}"), None)
        .await;
    Err(e)
}

macro_rules! step {
    ($rep:expr, $id:expr, $e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return fail($rep, $id, SetupError::from(e)).await,
        }
    };
}

fn io(what: String) -> impl FnOnce(guildnet_core::state_dir::StateDirError) -> SetupError {
    move |e| SetupError::Io {
        what,
        reason: e.to_string(),
    }
}

/// Runs (or re-runs) a local Headscale and mints an API key, a user and a pre-auth key.
///
/// Idempotent: the first run stores its settings, config, SQLite database and API key (0600)
/// under `${state}/headscale`; a re-run reuses them, reuses a server already serving on the
/// listen address, finds the user again and only mints a new pre-auth key. Progress goes to
/// `events` (begin, a step/stepDone pair per step, hints, done).
pub async fn create(
    opts: &CreateOptions,
    events: Option<mpsc::Sender<Progress>>,
) -> Result<CreateOutcome, SetupError> {
    let rep = Reporter::new(events);
    rep.begin(Flow::Create, STEPS).await;

    // config
    rep.step("config", STEPS[0].1).await;
    step!(&rep, "config", check_user(&opts.user));
    let files = ServerFiles::under(&opts.state_dir);
    step!(
        &rep,
        "config",
        guildnet_core::state_dir::create_private_dir(&files.dir)
            .map_err(io(format!("create {}", files.dir.display())))
    );
    let (settings, reused) = step!(&rep, "config", load_or_init_settings(opts, &files));
    if reused && settings != opts.settings {
        rep.hint(format!(
            "reusing the stored settings in {}; edit or remove it to change ports or the server URL",
            files.settings.display()
        ))
        .await;
    }
    rep.step_done(
        "config",
        format!(
            "{} {}",
            if reused { "reused" } else { "wrote" },
            files.settings.display()
        ),
    )
    .await;

    // start
    rep.step("start", STEPS[1].1).await;
    let probe = server_probe_url(&settings);
    let mut bin = None;
    let server = if local_health(&probe).await {
        rep.log(format!("headscale already serves at {probe}; reusing it"))
            .await;
        rep.step_done("start", format!("already running at {probe}"))
            .await;
        None
    } else {
        let b = step!(
            &rep,
            "start",
            find_binary("headscale", opts.headscale_bin.as_deref())
        );
        let s = step!(
            &rep,
            "start",
            HeadscaleProcess::start(&b, &files, &settings, opts.ready_timeout).await
        );
        bin = Some(b);
        rep.step_done(
            "start",
            format!("pid {} serving at {}", s.pid(), settings.server_url),
        )
        .await;
        Some(s)
    };

    // apiKey
    rep.step("apiKey", STEPS[2].1).await;
    let (client, api_key_reused) = step!(
        &rep,
        "apiKey",
        ensure_api_key(opts, &files, &settings, &probe, bin, &rep).await
    );
    rep.step_done(
        "apiKey",
        format!(
            "{} (stored in {})",
            if api_key_reused { "reused" } else { "created" },
            files.api_key.display()
        ),
    )
    .await;

    // user
    rep.step("user", STEPS[3].1).await;
    let (user, user_created) = step!(&rep, "user", client.ensure_user(&opts.user).await);
    rep.step_done(
        "user",
        format!(
            "{} {} (id {})",
            if user_created { "created" } else { "reused" },
            user.name,
            user.id
        ),
    )
    .await;

    // preauthKey
    rep.step("preauthKey", STEPS[4].1).await;
    let p = &opts.preauth_key;
    let expiration = chrono::Utc::now()
        + chrono::Duration::from_std(p.expiration).unwrap_or(chrono::Duration::hours(24));
    let preauth_key = step!(
        &rep,
        "preauthKey",
        client
            .create_preauth_key(&PreAuthKeyRequest {
                user_id: user.id,
                reusable: p.reusable,
                ephemeral: p.ephemeral,
                expiration,
                acl_tags: p.acl_tags.clone(),
            })
            .await
    );
    rep.step_done(
        "preauthKey",
        format!(
            "{} ({}{}, expires {})",
            preauth_key.info.masked_key,
            if p.reusable { "reusable" } else { "single use" },
            if p.ephemeral { ", ephemeral" } else { "" },
            expiration.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
    )
    .await;
    rep.hint(format!(
        "join a node: tailscale up --login-server {} --auth-key=file:<file holding the key> --hostname <name>",
        settings.server_url
    ))
    .await;
    rep.done(
        true,
        format!("headscale ready; user {}", user.name),
        Some(settings.server_url.clone()),
    )
    .await;
    Ok(CreateOutcome {
        server,
        settings,
        files,
        client,
        api_key_reused,
        user,
        user_created,
        preauth_key,
    })
}

fn check_user(user: &str) -> Result<(), SetupError> {
    guildnet_core::names::validate_dns_label("user", user).map_err(|e| SetupError::Invalid {
        field: "user",
        reason: e.reason,
    })
}

/// The stored settings, or `opts.settings` validated and stored. Returns whether they were reused.
fn load_or_init_settings(
    opts: &CreateOptions,
    files: &ServerFiles,
) -> Result<(HeadscaleSettings, bool), SetupError> {
    match std::fs::read(&files.settings) {
        Ok(bytes) => {
            let s: HeadscaleSettings =
                serde_json::from_slice(&bytes).map_err(|e| SetupError::Invalid {
                    field: "settings.json",
                    reason: format!("{}: {e}", files.settings.display()),
                })?;
            s.validate()?;
            Ok((s, true))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            opts.settings.validate()?;
            let json = serde_json::to_vec_pretty(&opts.settings).map_err(|e| SetupError::Io {
                what: "encode settings".into(),
                reason: e.to_string(),
            })?;
            guildnet_core::state_dir::write_private_file(&files.settings, &json)
                .map_err(io(format!("write {}", files.settings.display())))?;
            Ok((opts.settings.clone(), false))
        }
        Err(e) => Err(SetupError::Io {
            what: format!("read {}", files.settings.display()),
            reason: e.to_string(),
        }),
    }
}

async fn local_health(probe: &str) -> bool {
    let Ok(http) = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .no_proxy()
        .build()
    else {
        return false;
    };
    let Ok(base) = reqwest::Url::parse(probe) else {
        return false;
    };
    crate::headscale::probe(&http, &base).await.is_ok()
}

/// The stored API key if the server accepts it, else a new one from the CLI (stored 0600).
async fn ensure_api_key(
    opts: &CreateOptions,
    files: &ServerFiles,
    settings: &HeadscaleSettings,
    probe: &str,
    bin: Option<PathBuf>,
    rep: &Reporter,
) -> Result<(HeadscaleClient, bool), SetupError> {
    match std::fs::read_to_string(&files.api_key) {
        Ok(stored) if !stored.trim().is_empty() => {
            let client = HeadscaleClient::new(probe, Secret::new(stored.trim()))?;
            match client.list_users().await {
                Ok(_) => return Ok((client, true)),
                Err(HeadscaleError::Auth { .. }) => {
                    rep.hint(format!(
                        "the API key stored in {} was refused (expired or revoked); creating a new one",
                        files.api_key.display()
                    ))
                    .await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(SetupError::Io {
                what: format!("read {}", files.api_key.display()),
                reason: e.to_string(),
            })
        }
    }
    let bin = match bin {
        Some(b) => b,
        None => find_binary("headscale", opts.headscale_bin.as_deref())?,
    };
    // The CLI reads the config for the socket path; make sure it exists (a reused server).
    if !files.config.exists() {
        let yaml = crate::headscale::render_config(settings, files);
        guildnet_core::state_dir::write_private_file(&files.config, yaml.as_bytes())
            .map_err(io(format!("write {}", files.config.display())))?;
    }
    let key = create_api_key_via_cli(&bin, &files.config, opts.api_key_expiration).await?;
    guildnet_core::state_dir::write_private_file(&files.api_key, key.expose().as_bytes())
        .map_err(io(format!("write {}", files.api_key.display())))?;
    let client = HeadscaleClient::new(probe, key)?;
    Ok((client, false))
}
