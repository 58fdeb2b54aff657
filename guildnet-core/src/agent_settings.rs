//! What the orchestrator tells each task's agent besides the launch contract: which runner to
//! use, where the forge is, who commits, and the secrets the agent and its runner need (forge
//! token, model provider keys). [`AgentSettingsConfig`] is the orchestrator's configuration;
//! [`AgentSettingsConfig::for_task`] turns it into the [`AgentSettings`] of one launch, split
//! into plain and secret environment so a backend can keep the secret half in a Secret.
//!
//! Choosing the runner, first match wins: the task's `agentHint` when it names a named runner;
//! the org's runner (`--org-runner ORG=NAME`); the default runner (`--runner` or
//! `--runner-preset`). While named runners are configured, an `agentHint` that names none of
//! them is refused when the task is scheduled, so a typo never silently runs the default.
//!
//! This module owns no I/O except reading secret files when the configuration is built.

use crate::agent::forge::{endpoints, ForgeKind};
use crate::agent_env;
use crate::names::OrgName;
use crate::runners;
use crate::seams::AgentSettings;
use crate::token::Secret;
use std::collections::BTreeMap;
use std::path::Path;

/// Why the agent settings are unusable (reported at start, naming the flag's value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("agent settings: {0}")]
pub struct SettingsError(pub String);

fn err(msg: impl Into<String>) -> SettingsError {
    SettingsError(msg.into())
}

/// The forge the agents open pull requests on.
#[derive(Debug, Clone)]
pub struct ForgeAccess {
    /// Which API.
    pub kind: ForgeKind,
    /// The forge's web root or API base (see [`crate::agent::forge::ForgeSettings::url`]).
    pub url: String,
    /// Its token: the agents push and open pull requests with it.
    pub token: Secret,
}

/// The orchestrator's agent configuration.
#[derive(Debug, Clone, Default)]
pub struct AgentSettingsConfig {
    /// Runner template for tasks that choose none.
    pub default_runner: Option<String>,
    /// Named runners: name -> template.
    pub runners: BTreeMap<String, String>,
    /// Each org's runner (a name in [`AgentSettingsConfig::runners`]).
    pub org_runners: BTreeMap<OrgName, String>,
    /// Forge for pushes and pull requests.
    pub forge: Option<ForgeAccess>,
    /// Commit author name.
    pub git_author_name: Option<String>,
    /// Commit author email.
    pub git_author_email: Option<String>,
    /// Extra plain environment for every agent (and its runner).
    pub env: Vec<(String, String)>,
    /// Extra secret environment for every agent and its runner (model provider keys).
    pub secret_env: Vec<(String, Secret)>,
}

/// `NAME` is a usable, non-reserved environment variable name.
pub fn check_env_name(name: &str) -> Result<(), SettingsError> {
    let ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 128;
    if !ok {
        return Err(err(format!(
            "{name:?} is not an environment variable name (letters, digits, _)"
        )));
    }
    if agent_env::RESERVED.contains(&name) {
        return Err(err(format!(
            "{name} is set by GuildNet itself and cannot be configured"
        )));
    }
    Ok(())
}

/// Reads a secret from a file (trailing newline removed). Refuses files other users can read.
pub fn read_secret_file(path: &Path) -> Result<Secret, SettingsError> {
    use std::os::unix::fs::PermissionsExt;
    let meta =
        std::fs::metadata(path).map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(err(format!(
            "{} is readable by other users (mode {:o}); chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
    let v = text.trim_end_matches(['\n', '\r']);
    if v.trim().is_empty() {
        return Err(err(format!("{} is empty", path.display())));
    }
    Ok(Secret::new(v))
}

impl AgentSettingsConfig {
    /// Sets the default runner from a preset name.
    pub fn use_preset(&mut self, name: &str) -> Result<(), SettingsError> {
        let p = runners::preset(name).ok_or_else(|| {
            err(format!(
                "unknown runner preset {name:?}; presets: {}",
                runners::preset_names()
            ))
        })?;
        self.default_runner = Some(p.template.to_owned());
        Ok(())
    }

    /// Adds a named runner from `NAME=TEMPLATE`, `NAME=preset:PRESET`, or `PRESET` alone (the
    /// preset under its own name).
    pub fn add_named_runner(&mut self, spec: &str) -> Result<(), SettingsError> {
        let (name, template) = match spec.split_once('=') {
            None => {
                let p = runners::preset(spec.trim()).ok_or_else(|| {
                    err(format!(
                        "named runner {spec:?}: give NAME=TEMPLATE, NAME=preset:PRESET or a \
                         preset name ({})",
                        runners::preset_names()
                    ))
                })?;
                (p.name.to_owned(), p.template.to_owned())
            }
            Some((n, t)) => {
                let t = t.trim();
                let template = match t.strip_prefix("preset:") {
                    Some(p) => runners::preset(p)
                        .ok_or_else(|| {
                            err(format!(
                                "named runner {n:?}: unknown preset {p:?}; presets: {}",
                                runners::preset_names()
                            ))
                        })?
                        .template
                        .to_owned(),
                    None => t.to_owned(),
                };
                (n.trim().to_owned(), template)
            }
        };
        let name_ok = !name.is_empty()
            && name.len() <= 63
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !name_ok {
            return Err(err(format!(
                "named runner {name:?}: names are 1 to 63 letters, digits, '-', '_' or '.'"
            )));
        }
        check_template(&name, &template)?;
        self.runners.insert(name, template);
        Ok(())
    }

    /// Sets an org's runner from `ORG=NAME`.
    pub fn set_org_runner(&mut self, spec: &str) -> Result<(), SettingsError> {
        let (org, name) = spec
            .split_once('=')
            .ok_or_else(|| err(format!("org runner {spec:?}: give ORG=RUNNER")))?;
        let org = OrgName::new(org.trim()).map_err(|e| err(format!("org runner {spec:?}: {e}")))?;
        self.org_runners.insert(org, name.trim().to_owned());
        Ok(())
    }

    /// Adds a plain variable from `NAME=VALUE`.
    pub fn add_env(&mut self, spec: &str) -> Result<(), SettingsError> {
        let (k, v) = spec
            .split_once('=')
            .ok_or_else(|| err(format!("agent env {spec:?}: give NAME=VALUE")))?;
        check_env_name(k)?;
        self.env.push((k.to_owned(), v.to_owned()));
        Ok(())
    }

    /// Adds a secret variable whose value is read from the file `PATH` (`NAME=PATH`).
    pub fn add_secret_file(&mut self, spec: &str) -> Result<(), SettingsError> {
        let (k, p) = spec
            .split_once('=')
            .ok_or_else(|| err(format!("agent secret file {spec:?}: give NAME=PATH")))?;
        check_env_name(k)?;
        let v = read_secret_file(Path::new(p))?;
        self.secret_env.push((k.to_owned(), v));
        Ok(())
    }

    /// Adds a secret variable whose value is this process's variable of the same name.
    pub fn add_secret_from_env(
        &mut self,
        name: &str,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<(), SettingsError> {
        check_env_name(name)?;
        let v = get(name).filter(|v| !v.is_empty()).ok_or_else(|| {
            err(format!(
                "{name} is not set in the orchestrator's environment"
            ))
        })?;
        self.secret_env.push((name.to_owned(), Secret::new(v)));
        Ok(())
    }

    /// Checks the whole configuration: org runners name named runners, the forge URL parses.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if let Some(t) = &self.default_runner {
            check_template("default", t)?;
        }
        for (org, name) in &self.org_runners {
            if !self.runners.contains_key(name) {
                return Err(err(format!(
                    "org {org}'s runner {name:?} is not a named runner ({})",
                    self.runner_names()
                )));
            }
        }
        if let Some(f) = &self.forge {
            endpoints(f.kind, &f.url).map_err(|e| err(e.to_string()))?;
            if f.token.expose().trim().is_empty() {
                return Err(err("the forge token is empty"));
            }
        }
        for (k, _) in &self.env {
            check_env_name(k)?;
        }
        for (k, _) in &self.secret_env {
            check_env_name(k)?;
        }
        Ok(())
    }

    fn runner_names(&self) -> String {
        if self.runners.is_empty() {
            "none configured".into()
        } else {
            self.runners.keys().cloned().collect::<Vec<_>>().join(", ")
        }
    }

    /// Checks a task's `agentHint`: while named runners are configured, it must name one.
    pub fn check_hint(&self, hint: Option<&str>) -> Result<(), String> {
        match hint {
            Some(h) if !self.runners.is_empty() && !self.runners.contains_key(h) => Err(format!(
                "{h:?} is not one of this orchestrator's runners: {}",
                self.runner_names()
            )),
            _ => Ok(()),
        }
    }

    /// The runner a task gets: `(name, template)`; the name is `default` for the default.
    pub fn runner_for(&self, org: &OrgName, hint: Option<&str>) -> Option<(String, String)> {
        if let Some(h) = hint {
            if let Some(t) = self.runners.get(h) {
                return Some((h.to_owned(), t.clone()));
            }
        }
        if let Some(name) = self.org_runners.get(org) {
            if let Some(t) = self.runners.get(name) {
                return Some((name.clone(), t.clone()));
            }
        }
        self.default_runner
            .as_ref()
            .map(|t| ("default".to_owned(), t.clone()))
    }

    /// The settings of one task's agent.
    pub fn for_task(&self, org: &OrgName, hint: Option<&str>) -> AgentSettings {
        let mut env = Vec::new();
        let mut secret_env: Vec<(String, Secret)> = Vec::new();
        if let Some((name, template)) = self.runner_for(org, hint) {
            env.push((agent_env::RUNNER.to_owned(), template));
            env.push((agent_env::RUNNER_NAME.to_owned(), name));
        }
        if let Some(f) = &self.forge {
            env.push((agent_env::FORGE_KIND.to_owned(), f.kind.as_str().to_owned()));
            env.push((agent_env::FORGE_API.to_owned(), f.url.clone()));
            secret_env.push((agent_env::FORGE_TOKEN.to_owned(), f.token.clone()));
        }
        if let Some(n) = &self.git_author_name {
            env.push((agent_env::GIT_AUTHOR_NAME.to_owned(), n.clone()));
        }
        if let Some(e) = &self.git_author_email {
            env.push((agent_env::GIT_AUTHOR_EMAIL.to_owned(), e.clone()));
        }
        env.extend(self.env.iter().cloned());
        secret_env.extend(self.secret_env.iter().cloned());
        if !secret_env.is_empty() {
            let names: Vec<&str> = secret_env.iter().map(|(k, _)| k.as_str()).collect();
            env.push((agent_env::SECRET_ENV.to_owned(), names.join(",")));
        }
        AgentSettings { env, secret_env }
    }

    /// Warnings about presets whose needed variables no agent gets (e.g. the codex preset
    /// without CODEX_API_KEY or OPENAI_API_KEY), one line each.
    pub fn warnings(&self) -> Vec<String> {
        let has = |n: &str| {
            self.secret_env.iter().any(|(k, _)| k == n) || self.env.iter().any(|(k, _)| k == n)
        };
        let mut out = Vec::new();
        let mut check = |label: &str, template: &str| {
            for p in runners::PRESETS {
                if p.template == template {
                    for m in p.missing(has) {
                        out.push(format!(
                            "runner {label} (preset {}) needs {m}: pass it with \
                             --agent-secret-file NAME=PATH or --agent-secret-env NAME",
                            p.name
                        ));
                    }
                }
            }
        };
        if let Some(t) = &self.default_runner {
            check("default", t);
        }
        for (n, t) in &self.runners {
            check(n, t);
        }
        out
    }
}

fn check_template(name: &str, template: &str) -> Result<(), SettingsError> {
    match shell_words::split(template) {
        Ok(w) if !w.is_empty() => Ok(()),
        Ok(_) => Err(err(format!("runner {name}: empty command"))),
        Err(e) => Err(err(format!("runner {name}: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org(n: &str) -> OrgName {
        OrgName::new(n).unwrap()
    }

    #[test]
    fn runner_choice_hint_then_org_then_default() {
        let mut c = AgentSettingsConfig::default();
        c.use_preset("echo").unwrap();
        c.add_named_runner("aider").unwrap();
        c.add_named_runner("fast=preset:codex").unwrap();
        c.add_named_runner("mine=my-cli --yes").unwrap();
        c.set_org_runner("acme=mine").unwrap();
        c.validate().unwrap();
        let name = |o: &str, h: Option<&str>| c.runner_for(&org(o), h).unwrap();
        assert_eq!(name("acme", Some("fast")).0, "fast");
        assert!(name("acme", Some("fast")).1.starts_with("codex exec"));
        assert_eq!(name("acme", None), ("mine".into(), "my-cli --yes".into()));
        assert_eq!(name("other", None), ("default".into(), "cat".into()));
        assert_eq!(name("other", Some("aider")).0, "aider");
        assert!(c.check_hint(Some("fast")).is_ok());
        let e = c.check_hint(Some("fsat")).unwrap_err();
        assert!(e.contains("aider, fast, mine"), "{e}");
        // Without named runners hints stay free-form.
        assert!(AgentSettingsConfig::default().check_hint(Some("x")).is_ok());
    }

    #[test]
    fn bad_configs_are_refused() {
        let mut c = AgentSettingsConfig::default();
        assert!(c.use_preset("nope").is_err());
        assert!(c.add_named_runner("x=preset:nope").is_err());
        assert!(c.add_named_runner("bad name=cat").is_err());
        assert!(c.add_named_runner("x='unterminated").is_err());
        assert!(c.add_env("GUILDNET_AGENT_TOKEN=x").is_err());
        assert!(c.add_env("1X=y").is_err());
        assert!(c.add_env("NOEQUALS").is_err());
        c.set_org_runner("acme=ghost").unwrap();
        assert!(c.validate().unwrap_err().0.contains("ghost"));
    }

    #[test]
    fn settings_split_plain_and_secret_env() {
        let mut c = AgentSettingsConfig::default();
        c.use_preset("aider").unwrap();
        c.forge = Some(ForgeAccess {
            kind: ForgeKind::Gitea,
            url: "http://127.0.0.1:3000".into(),
            token: Secret::new("forge-secret-1"),
        });
        c.git_author_name = Some("Bot".into());
        c.add_env("OPENAI_API_BASE=http://127.0.0.1:9/v1").unwrap();
        c.add_secret_from_env("OPENAI_API_KEY", |_| Some("sk-test-1".into()))
            .unwrap();
        let s = c.for_task(&org("acme"), None);
        assert!(s.get("GUILDNET_RUNNER").unwrap().starts_with("aider "));
        assert_eq!(s.get("GUILDNET_RUNNER_NAME"), Some("default"));
        assert_eq!(s.get("GUILDNET_FORGE_KIND"), Some("gitea"));
        assert_eq!(s.get("GUILDNET_FORGE_API"), Some("http://127.0.0.1:3000"));
        assert_eq!(s.get("GUILDNET_GIT_AUTHOR_NAME"), Some("Bot"));
        assert_eq!(
            s.get("GUILDNET_SECRET_ENV"),
            Some("GUILDNET_FORGE_TOKEN,OPENAI_API_KEY")
        );
        assert!(s.has_secret("GUILDNET_FORGE_TOKEN") && s.has_secret("OPENAI_API_KEY"));
        // No secret value in the plain half.
        for (_, v) in &s.env {
            assert!(
                !v.contains("forge-secret-1") && !v.contains("sk-test-1"),
                "{v}"
            );
        }
        assert!(c.warnings().is_empty(), "{:?}", c.warnings());
        let mut c2 = AgentSettingsConfig::default();
        c2.use_preset("claude-code").unwrap();
        assert!(c2.warnings()[0].contains("ANTHROPIC_API_KEY"));
    }

    #[test]
    fn secret_files_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("tok");
        std::fs::write(&p, "abc123\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read_secret_file(&p).unwrap_err().0.contains("chmod 600"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_secret_file(&p).unwrap().expose(), "abc123");
        let mut c = AgentSettingsConfig::default();
        c.add_secret_file(&format!("ANTHROPIC_API_KEY={}", p.display()))
            .unwrap();
        assert_eq!(c.secret_env[0].1.expose(), "abc123");
    }
}
