//! Finding the upstream binaries (`headscale`, `tailscaled`, `tailscale`).

use std::path::{Path, PathBuf};

/// A required binary could not be found or is not a file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name} binary not found ({detail}); install it or configure its path")]
pub struct BinaryNotFound {
    /// The binary's name.
    pub name: String,
    /// Where it was looked for.
    pub detail: String,
}

/// Resolves a binary: the configured path when given (it must exist), else the first `name` on
/// `PATH`.
pub fn find_binary(name: &str, configured: Option<&Path>) -> Result<PathBuf, BinaryNotFound> {
    if let Some(p) = configured {
        return if p.is_file() {
            Ok(p.to_owned())
        } else {
            Err(BinaryNotFound {
                name: name.to_owned(),
                detail: format!("configured path {} does not exist", p.display()),
            })
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| BinaryNotFound {
            name: name.to_owned(),
            detail: "not on PATH".to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_path_must_exist() {
        let err = find_binary("headscale", Some(Path::new("/nonexistent/headscale")))
            .expect_err("missing file");
        assert!(err.to_string().contains("/nonexistent/headscale"), "{err}");
        assert!(find_binary("sh", None).is_ok(), "sh is on PATH");
        assert!(find_binary("no-such-binary-guildnet", None).is_err());
    }
}
