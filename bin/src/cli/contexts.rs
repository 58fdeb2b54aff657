//! `guildnet login` and `guildnet context ...`: orchestrators saved in the config file
//! (guildnet_core::client_config).

use guildnet_bin::cli_args::{ContextCmd, TokenInput};
use guildnet_core::api::TaskListQuery;
use guildnet_core::client::OrchestratorClient;
use guildnet_core::client_config::{self, ClientConfig};
use guildnet_core::state_dir::StatePaths;
use guildnet_core::token::Secret;
use std::io::Read;

/// Reads the token named by `--token-file` / `--token-stdin`; `None` when neither was given.
fn read_token(input: &TokenInput) -> anyhow::Result<Option<Secret>> {
    let raw = if let Some(path) = &input.token_file {
        std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("--token-file {}: {e}", path.display()))?
    } else if input.token_stdin {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        s
    } else {
        return Ok(None);
    };
    let t = raw.trim();
    if t.is_empty() {
        anyhow::bail!("the admin token read is empty");
    }
    Ok(Some(Secret::new(t)))
}

fn is_loopback(url: &str) -> bool {
    let host = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    ["127.0.0.1", "localhost", "[::1]"].iter().any(|h| {
        host == *h || host.starts_with(&format!("{h}:")) || host.starts_with(&format!("{h}/"))
    })
}

/// `guildnet login URL`: the token from --token-file/--token-stdin, else --token or
/// ORCHESTRATOR_TOKEN, else (for a loopback URL) the local state dir's token file. The token is
/// checked against the orchestrator before anything is saved.
pub async fn login(
    url: &str,
    name: Option<String>,
    input: &TokenInput,
    global_token: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let url = client_config::normalize_url(url)?;
    let name = name.unwrap_or_else(|| client_config::name_from_url(&url));
    client_config::validate_name(&name)?;
    let token = match read_token(input)? {
        Some(t) => t,
        None => match global_token
            .or_else(|| std::env::var("ORCHESTRATOR_TOKEN").ok())
            .filter(|t| !t.trim().is_empty())
        {
            Some(t) => Secret::new(t.trim()),
            None => local_token(&url)?,
        },
    };
    let client = OrchestratorClient::new(&url, token.clone())?;
    // An authenticated call: a wrong token fails here, before the file is touched.
    client
        .tasks(&TaskListQuery {
            limit: Some(1),
            ..Default::default()
        })
        .await
        .map_err(|e| match e.status() {
            Some(401) | Some(403) => {
                anyhow::anyhow!("{url} refused the token ({e}); nothing saved")
            }
            _ => anyhow::Error::new(e),
        })?;
    let path = client_config::config_path()?;
    let mut cfg = ClientConfig::load(&path)?;
    cfg.upsert(&name, &url, Some(token.expose().to_owned()))?;
    cfg.use_context(&name, &path)?;
    cfg.save(&path)?;
    if json {
        crate::print_json(&serde_json::json!({
            "context": name, "url": url, "config": path,
        }))?;
    } else {
        println!(
            "logged in to {url}; context {name} is now current (saved in {})",
            path.display()
        );
    }
    Ok(())
}

fn local_token(url: &str) -> anyhow::Result<Secret> {
    let hint = "pass --token-file PATH or --token-stdin with the orchestrator's admin token";
    if !is_loopback(url) {
        anyhow::bail!("no token given: {hint}");
    }
    let file = StatePaths::resolve()?.admin_token_file();
    match std::fs::read_to_string(&file) {
        Ok(t) if !t.trim().is_empty() => Ok(Secret::new(t.trim())),
        _ => anyhow::bail!(
            "no token given and no token file at {} (written by `guildnet up`): {hint}",
            file.display()
        ),
    }
}

/// `guildnet context ...`.
pub fn context(cmd: ContextCmd, json: bool) -> anyhow::Result<()> {
    let path = client_config::config_path()?;
    let mut cfg = ClientConfig::load(&path)?;
    match cmd {
        ContextCmd::Add {
            name,
            url,
            token,
            make_current,
        } => {
            let token = read_token(&token)?.map(|t| t.expose().to_owned());
            cfg.upsert(&name, &url, token)?;
            if make_current || cfg.current_context.is_none() {
                cfg.use_context(&name, &path)?;
            }
            cfg.save(&path)?;
            if !json {
                println!("context {name} saved in {}", path.display());
            }
        }
        ContextCmd::Use { name } => {
            cfg.use_context(&name, &path)?;
            cfg.save(&path)?;
            if !json {
                println!("current context: {name}");
            }
        }
        ContextCmd::Remove { name } => {
            cfg.remove(&name, &path)?;
            cfg.save(&path)?;
            if !json {
                println!("context {name} removed");
            }
        }
        ContextCmd::List => {
            let current = cfg.current_context.as_deref();
            if json {
                let list: Vec<_> = cfg
                    .contexts
                    .iter()
                    .map(|(n, c)| {
                        serde_json::json!({
                            "name": n,
                            "url": c.url,
                            "current": Some(n.as_str()) == current,
                            "hasToken": c.token.is_some(),
                        })
                    })
                    .collect();
                crate::print_json(&list)?;
            } else {
                println!("{:<7} {:<24} {:<40} TOKEN", "CURRENT", "NAME", "URL");
                for (n, c) in &cfg.contexts {
                    println!(
                        "{:<7} {:<24} {:<40} {}",
                        if Some(n.as_str()) == current { "*" } else { "" },
                        n,
                        c.url,
                        if c.token.is_some() { "yes" } else { "no" }
                    );
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_urls() {
        assert!(super::is_loopback("http://127.0.0.1:8080"));
        assert!(super::is_loopback("http://localhost"));
        assert!(super::is_loopback("http://[::1]:1/x"));
        assert!(!super::is_loopback("http://127.0.0.1.example.com"));
        assert!(!super::is_loopback("https://gn.example.com"));
    }
}
