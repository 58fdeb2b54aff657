//! The client's config file: named contexts (an orchestrator URL and its admin token), so one
//! user can talk to several orchestrators without environment variables, like a kubeconfig or
//! coder's session file.
//!
//! The file is `$GUILDNET_CONFIG`, else `$XDG_CONFIG_HOME/guildnet/config.toml`, else
//! `~/.config/guildnet/config.toml`; it is written with mode 0600 (it holds tokens):
//!
//! ```toml
//! current-context = "prod"
//!
//! [contexts.prod]
//! url = "https://guildnet.example.com"
//! token = "gn_admin_..."
//! ```
//!
//! Where the URL and the token come from ([`resolve_with`]), first match wins:
//! 1. flags (`--url`, `--token`, `--context`),
//! 2. environment (`GUILDNET_URL`, `ORCHESTRATOR_TOKEN`, `GUILDNET_CONTEXT`),
//! 3. the context (the one named by a flag or `GUILDNET_CONTEXT`, else `current-context`),
//! 4. the local state dir's token file (written by `guildnet up`) and `http://127.0.0.1:8080`.
//!
//! A context's token is only sent to that context's URL: with `--url` pointing elsewhere, the
//! token comes from a flag, the environment or the state dir.

use crate::token::Secret;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The orchestrator URL when nothing else names one (`guildnet up`'s default listen address).
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// Errors reading, writing or using the config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No env var names the config file and no home directory is known.
    #[error("cannot locate the config file: set GUILDNET_CONFIG, XDG_CONFIG_HOME or HOME")]
    NoHome,
    /// The file could not be read or written.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (never a token: it names keys and positions).
        message: String,
    },
    /// A context name that is not in the file.
    #[error("no context {name:?} in {path} (known: {known}); add it with `guildnet context add` or `guildnet login`")]
    UnknownContext {
        /// The name asked for.
        name: String,
        /// The file.
        path: PathBuf,
        /// The names it has, comma-separated (or "none").
        known: String,
    },
    /// A context name that is not usable.
    #[error("invalid context name {0:?}: 1-63 characters of letters, digits, '.', '_' and '-'")]
    InvalidName(String),
    /// A URL that is not http(s).
    #[error("invalid orchestrator URL {0:?}: it must start with http:// or https://")]
    InvalidUrl(String),
    /// The state dir could not be resolved.
    #[error(transparent)]
    StateDir(#[from] crate::state_dir::StateDirError),
}

/// The whole config file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ClientConfig {
    /// The context used when no flag or env var names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    /// Contexts by name.
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// One orchestrator: its URL and admin token.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Context {
    /// Base URL (`http://host:port`).
    pub url: String,
    /// Admin token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The config file's path from an environment lookup (pure, so it is testable).
pub fn config_path_with(get: impl Fn(&str) -> Option<String>) -> Result<PathBuf, ConfigError> {
    let non_empty = |k: &str| get(k).filter(|v| !v.is_empty());
    if let Some(p) = non_empty("GUILDNET_CONFIG") {
        return Ok(PathBuf::from(p));
    }
    let base = match non_empty("XDG_CONFIG_HOME") {
        Some(x) => PathBuf::from(x),
        None => PathBuf::from(non_empty("HOME").ok_or(ConfigError::NoHome)?).join(".config"),
    };
    Ok(base.join("guildnet").join("config.toml"))
}

/// The config file's path from the process environment.
pub fn config_path() -> Result<PathBuf, ConfigError> {
    config_path_with(|k| std::env::var(k).ok())
}

/// Checks a context name: 1-63 characters of ASCII letters, digits, `.`, `_` and `-`.
pub fn validate_name(name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::InvalidName(name.to_owned()))
    }
}

/// Checks and normalizes an orchestrator URL (http or https; no trailing slash).
pub fn normalize_url(url: &str) -> Result<String, ConfigError> {
    let u = url.trim();
    let rest = u
        .strip_prefix("http://")
        .or_else(|| u.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() && !host.starts_with('/') => {
            Ok(u.trim_end_matches('/').to_owned())
        }
        _ => Err(ConfigError::InvalidUrl(url.to_owned())),
    }
}

/// A context name made from a URL's host and port (`https://gn.example.com:8443/` ->
/// `gn.example.com-8443`).
pub fn name_from_url(url: &str) -> String {
    let rest = url
        .split_once("://")
        .map(|(_, r)| r)
        .unwrap_or(url)
        .split('/')
        .next()
        .unwrap_or_default();
    let rest = rest.rsplit_once('@').map(|(_, h)| h).unwrap_or(rest);
    let name: String = rest
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    let name = name.trim_matches('-').to_owned();
    if name.is_empty() {
        "default".to_owned()
    } else {
        name
    }
}

impl ClientConfig {
    /// Reads the file at `path`; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(ConfigError::Io {
                    op: "read",
                    path: path.to_owned(),
                    source,
                })
            }
        };
        Self::parse(&text, path)
    }

    /// Parses the file's text (`path` names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let cfg: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            // The message alone: toml's Display quotes the offending source line, which can
            // be a token.
            message: e.message().to_owned(),
        })?;
        for name in cfg.contexts.keys() {
            validate_name(name)?;
        }
        Ok(cfg)
    }

    /// Writes the file with mode 0600 (atomically; its directory is created with mode 0700).
    pub fn save(&self, path: &Path) -> Result<(), ConfigError> {
        let text = toml::to_string(self).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        crate::state_dir::write_private_file(path, text.as_bytes())?;
        Ok(())
    }

    /// Adds or replaces context `name` (the URL is normalized).
    pub fn upsert(
        &mut self,
        name: &str,
        url: &str,
        token: Option<String>,
    ) -> Result<(), ConfigError> {
        validate_name(name)?;
        let url = normalize_url(url)?;
        self.contexts
            .insert(name.to_owned(), Context { url, token });
        Ok(())
    }

    /// Makes `name` the current context.
    pub fn use_context(&mut self, name: &str, path: &Path) -> Result<(), ConfigError> {
        self.get(name, path)?;
        self.current_context = Some(name.to_owned());
        Ok(())
    }

    /// Removes context `name` (and clears `current-context` if it was that one).
    pub fn remove(&mut self, name: &str, path: &Path) -> Result<Context, ConfigError> {
        self.get(name, path)?;
        if self.current_context.as_deref() == Some(name) {
            self.current_context = None;
        }
        self.contexts
            .remove(name)
            .ok_or_else(|| self.unknown(name, path))
    }

    /// Context `name`, or an error listing the known ones.
    pub fn get(&self, name: &str, path: &Path) -> Result<&Context, ConfigError> {
        self.contexts
            .get(name)
            .ok_or_else(|| self.unknown(name, path))
    }

    fn unknown(&self, name: &str, path: &Path) -> ConfigError {
        let known = if self.contexts.is_empty() {
            "none".to_owned()
        } else {
            self.contexts.keys().cloned().collect::<Vec<_>>().join(", ")
        };
        ConfigError::UnknownContext {
            name: name.to_owned(),
            path: path.to_owned(),
            known,
        }
    }
}

/// Values given on the command line (each `None` when absent).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--url`.
    pub url: Option<String>,
    /// `--token`.
    pub token: Option<Secret>,
    /// `--context`.
    pub context: Option<String>,
}

/// Where a resolved value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A command-line flag.
    Flag,
    /// An environment variable (named).
    Env(&'static str),
    /// The config file's context (named).
    Context(String),
    /// The local state dir's token file (its path).
    StateDir(PathBuf),
    /// The built-in default URL.
    Default,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Flag => f.write_str("flag"),
            Source::Env(k) => write!(f, "env {k}"),
            Source::Context(n) => write!(f, "context {n}"),
            Source::StateDir(p) => write!(f, "token file {}", p.display()),
            Source::Default => f.write_str("default"),
        }
    }
}

/// The orchestrator to talk to and how to authenticate.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Base URL.
    pub url: String,
    /// Where the URL came from.
    pub url_source: Source,
    /// Admin token, when one was found.
    pub token: Option<Secret>,
    /// Where the token came from (`None` when there is none).
    pub token_source: Option<Source>,
    /// The context in use, if any.
    pub context: Option<String>,
    /// Places looked at for a token, for the "no token" message.
    pub token_file: Option<PathBuf>,
}

/// Resolves the endpoint from flags, an environment lookup, a loaded config (`config_file`
/// names it in errors) and the state dir's token file (see the module docs for the order).
pub fn resolve_with(
    flags: &Overrides,
    get: impl Fn(&str) -> Option<String>,
    config: &ClientConfig,
    config_file: &Path,
) -> Result<Endpoint, ConfigError> {
    let env = |k: &str| get(k).filter(|v| !v.trim().is_empty());
    // The context: named by a flag or env var (then it must exist), else the current one.
    let context_name = flags
        .context
        .clone()
        .filter(|c| !c.is_empty())
        .or_else(|| env("GUILDNET_CONTEXT"))
        .or_else(|| config.current_context.clone());
    let context = match &context_name {
        Some(n) => Some((n.clone(), config.get(n, config_file)?.clone())),
        None => None,
    };

    let (url, url_source) = if let Some(u) = flags.url.clone().filter(|u| !u.is_empty()) {
        (u, Source::Flag)
    } else if let Some(u) = env("GUILDNET_URL") {
        (u, Source::Env("GUILDNET_URL"))
    } else if let Some((n, c)) = &context {
        (c.url.clone(), Source::Context(n.clone()))
    } else {
        (DEFAULT_URL.to_owned(), Source::Default)
    };
    let same_server = |a: &str, b: &str| a.trim_end_matches('/') == b.trim_end_matches('/');

    let state_file = crate::state_dir::resolve_state_dir_with(&get)
        .ok()
        .map(|d| crate::state_dir::StatePaths::new(d).admin_token_file());
    let (token, token_source) =
        if let Some(t) = flags.token.clone().filter(|t| !t.expose().is_empty()) {
            (Some(t), Some(Source::Flag))
        } else if let Some(t) = env("ORCHESTRATOR_TOKEN") {
            (
                Some(Secret::new(t.trim())),
                Some(Source::Env("ORCHESTRATOR_TOKEN")),
            )
        } else if let Some((
            n,
            Context {
                url: cu,
                token: Some(t),
            },
        )) = &context
        {
            if same_server(cu, &url) {
                (
                    Some(Secret::new(t.trim())),
                    Some(Source::Context(n.clone())),
                )
            } else {
                read_token_file(state_file.as_deref())
            }
        } else {
            read_token_file(state_file.as_deref())
        };
    Ok(Endpoint {
        url,
        url_source,
        token,
        token_source,
        context: context.map(|(n, _)| n),
        token_file: state_file,
    })
}

fn read_token_file(path: Option<&Path>) -> (Option<Secret>, Option<Source>) {
    let Some(path) = path else {
        return (None, None);
    };
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => (
            Some(Secret::new(t.trim())),
            Some(Source::StateDir(path.to_owned())),
        ),
        _ => (None, None),
    }
}

/// Resolves the endpoint from the process environment and the config file, with `flags` on
/// top.
pub fn resolve(flags: &Overrides) -> Result<Endpoint, ConfigError> {
    let path = config_path()?;
    let config = ClientConfig::load(&path)?;
    resolve_with(flags, |k| std::env::var(k).ok(), &config, &path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::os::unix::fs::PermissionsExt;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    fn two_contexts() -> ClientConfig {
        let mut c = ClientConfig::default();
        c.upsert("prod", "https://prod.example/", Some("tok-prod".into()))
            .unwrap();
        c.upsert("dev", "http://dev.example:8080", Some("tok-dev".into()))
            .unwrap();
        c.current_context = Some("prod".into());
        c
    }

    #[test]
    fn config_path_order() {
        assert_eq!(
            config_path_with(env(&[("GUILDNET_CONFIG", "/c.toml"), ("HOME", "/h")])).unwrap(),
            PathBuf::from("/c.toml")
        );
        assert_eq!(
            config_path_with(env(&[("XDG_CONFIG_HOME", "/x"), ("HOME", "/h")])).unwrap(),
            PathBuf::from("/x/guildnet/config.toml")
        );
        assert_eq!(
            config_path_with(env(&[("HOME", "/h")])).unwrap(),
            PathBuf::from("/h/.config/guildnet/config.toml")
        );
        assert!(matches!(
            config_path_with(env(&[])),
            Err(ConfigError::NoHome)
        ));
    }

    #[test]
    fn flags_beat_env_beat_context_beat_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().to_str().unwrap().to_owned();
        std::fs::write(dir.path().join("orchestrator.token"), "tok-state\n").unwrap();
        let cfg = two_contexts();
        let file = Path::new("/cfg.toml");
        let base = [("GUILDNET_STATE_DIR", state.as_str())];

        // The current context.
        let e = resolve_with(&Overrides::default(), env(&base), &cfg, file).unwrap();
        assert_eq!(e.url, "https://prod.example");
        assert_eq!(e.token.unwrap().expose(), "tok-prod");
        assert_eq!(e.context.as_deref(), Some("prod"));

        // GUILDNET_CONTEXT picks another one; --context beats it.
        let with_ctx_env = [base[0], ("GUILDNET_CONTEXT", "dev")];
        let e = resolve_with(&Overrides::default(), env(&with_ctx_env), &cfg, file).unwrap();
        assert_eq!(e.url, "http://dev.example:8080");
        let flags = Overrides {
            context: Some("prod".into()),
            ..Default::default()
        };
        let e = resolve_with(&flags, env(&with_ctx_env), &cfg, file).unwrap();
        assert_eq!(e.url, "https://prod.example");

        // The env URL beats the context; the context's token is not sent elsewhere: the
        // state dir's is used.
        let with_url = [base[0], ("GUILDNET_URL", "http://other:1")];
        let e = resolve_with(&Overrides::default(), env(&with_url), &cfg, file).unwrap();
        assert_eq!(e.url, "http://other:1");
        assert_eq!(e.url_source, Source::Env("GUILDNET_URL"));
        assert_eq!(e.token.unwrap().expose(), "tok-state");
        // ... but an env URL equal to the context's keeps the context's token.
        let same = [base[0], ("GUILDNET_URL", "https://prod.example/")];
        let e = resolve_with(&Overrides::default(), env(&same), &cfg, file).unwrap();
        assert_eq!(e.token.unwrap().expose(), "tok-prod");

        // Env token beats the context; the flag beats both.
        let with_tok = [base[0], ("ORCHESTRATOR_TOKEN", "tok-env")];
        let e = resolve_with(&Overrides::default(), env(&with_tok), &cfg, file).unwrap();
        assert_eq!(e.token.unwrap().expose(), "tok-env");
        let flags = Overrides {
            url: Some("http://flag:2".into()),
            token: Some(Secret::new("tok-flag")),
            context: None,
        };
        let e = resolve_with(&flags, env(&with_tok), &cfg, file).unwrap();
        assert_eq!(
            (e.url.as_str(), e.url_source),
            ("http://flag:2", Source::Flag)
        );
        assert_eq!(e.token.unwrap().expose(), "tok-flag");

        // No config: the default URL and the state dir's token.
        let e = resolve_with(
            &Overrides::default(),
            env(&base),
            &ClientConfig::default(),
            file,
        )
        .unwrap();
        assert_eq!(e.url, DEFAULT_URL);
        assert_eq!(e.url_source, Source::Default);
        assert!(matches!(e.token_source, Some(Source::StateDir(_))));

        // An unknown context named explicitly is an error that lists the known ones.
        let flags = Overrides {
            context: Some("nope".into()),
            ..Default::default()
        };
        let err = resolve_with(&flags, env(&base), &cfg, file)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"nope\"") && err.contains("dev, prod"),
            "{err}"
        );
    }

    #[test]
    fn save_is_private_and_round_trips_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/config.toml");
        let cfg = two_contexts();
        cfg.save(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
        assert_eq!(ClientConfig::load(&path).unwrap(), cfg);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("current-context = \"prod\""), "{text}");

        // Missing file: empty config.
        assert_eq!(
            ClientConfig::load(&dir.path().join("none.toml")).unwrap(),
            ClientConfig::default()
        );
        // Unknown key, bad TOML: the error names the file and never echoes the line.
        std::fs::write(
            &path,
            "[contexts.a]\nurl = \"http://a\"\ntoken = \"s3cret\" x\n",
        )
        .unwrap();
        let err = ClientConfig::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("config.toml") && !err.contains("s3cret"),
            "{err}"
        );
        std::fs::write(&path, "[contexts.a]\nurl = \"http://a\"\ntokn = \"s\"\n").unwrap();
        let err = ClientConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("tokn"), "{err}");
        // Debug never shows a token.
        assert!(!format!("{cfg:?}").contains("tok-prod"));
    }

    #[test]
    fn names_and_urls() {
        assert_eq!(
            name_from_url("https://gn.example.com:8443/x"),
            "gn.example.com-8443"
        );
        assert_eq!(name_from_url("http://127.0.0.1:8080"), "127.0.0.1-8080");
        assert_eq!(name_from_url("http://user:pw@h"), "h");
        assert!(validate_name("a_b.c-1").is_ok());
        assert!(validate_name("").is_err() && validate_name("a b").is_err());
        assert_eq!(normalize_url("http://h:1/").unwrap(), "http://h:1");
        assert!(normalize_url("h:1").is_err() && normalize_url("http://").is_err());
        let mut c = two_contexts();
        let p = Path::new("/c");
        c.remove("prod", p).unwrap();
        assert_eq!(c.current_context, None);
        assert!(c.use_context("prod", p).is_err());
        c.use_context("dev", p).unwrap();
    }
}
