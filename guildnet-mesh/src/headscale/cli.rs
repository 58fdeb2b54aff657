//! The headscale CLI, for what needs the local unix socket (the first API key).

use crate::setup::SetupError;
use guildnet_core::token::Secret;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// Creates an API key with `headscale -c CONFIG apikeys create --expiration <hours>h -o json`
/// (the CLI talks to the server over the unix socket named in the config). The key is read from
/// stdout and never quoted in errors.
pub async fn create_api_key_via_cli(
    bin: &Path,
    config: &Path,
    expiration: Duration,
) -> Result<Secret, SetupError> {
    let hours = (expiration.as_secs() / 3600).max(1);
    let exp = format!("{hours}h");
    let args = ["apikeys", "create", "--expiration", &exp, "-o", "json"];
    let command = format!(
        "{} -c {} {}",
        bin.display(),
        config.display(),
        args.join(" ")
    );
    let child = tokio::process::Command::new(bin)
        .arg("-c")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), child)
        .await
        .map_err(|_| SetupError::Command {
            command: command.clone(),
            status: "timed out after 30s".into(),
            output: String::new(),
        })?
        .map_err(|e| SetupError::Io {
            what: format!("run {command}"),
            reason: e.to_string(),
        })?;
    if !out.status.success() {
        // stderr only: stdout would hold the key on success.
        return Err(SetupError::Command {
            command,
            status: out.status.to_string(),
            output: crate::redact::tail(&String::from_utf8_lossy(&out.stderr), 2000),
        });
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let key: String = serde_json::from_str(stdout.trim()).map_err(|_| SetupError::Command {
        command: command.clone(),
        status: "success".into(),
        output: "stdout is not a JSON string (unexpected headscale version?)".into(),
    })?;
    if key.is_empty() || key.contains(char::is_whitespace) {
        return Err(SetupError::Command {
            command,
            status: "success".into(),
            output: "printed no usable key".into(),
        });
    }
    Ok(Secret::new(key))
}
