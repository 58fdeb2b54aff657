//! GuildNet's own container images for tests: built by `scripts/images/build.sh` (mmdebstrap,
//! umoci, skopeo; no Docker) from binaries the test already has, and pushed to a testbed
//! [`crate::registry::Registry`], so a real node pulls them as a cluster would.
//!
//! The script caches the Debian bases and the agent's code-server stage under
//! `~/.cache/guildnet/images` (`scripts/testbed/install.sh images` prepares them), so a build
//! here only adds the binary layer and pushes.

use crate::process::TestbedError;
use crate::registry::Registry;
use crate::Result;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One image the script built and pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    /// `agent`, `operator` or `orchestrator`.
    pub kind: String,
    /// The pushed reference, `<registry host>/guildnet-<kind>:<tag>`.
    pub reference: String,
    /// The manifest digest (`sha256:…`).
    pub digest: String,
    /// Sum of the compressed layers: what a node pulls.
    pub compressed_bytes: u64,
    /// Sum of the uncompressed layers.
    pub uncompressed_bytes: u64,
}

/// What [`build_and_push`] did.
#[derive(Debug, Clone)]
pub struct Built {
    /// The images, in the order asked for.
    pub images: Vec<BuiltImage>,
    /// Wall time of the whole script run (bases from the cache, binary layers, pushes).
    pub elapsed: Duration,
}

impl Built {
    /// The image of `kind`, or an error.
    pub fn get(&self, kind: &str) -> Result<&BuiltImage> {
        self.images
            .iter()
            .find(|i| i.kind == kind)
            .ok_or_else(|| TestbedError::Unexpected(format!("no {kind} image was built")))
    }
}

/// `scripts/images/build.sh` of this repository.
pub fn build_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/images/build.sh")
}

/// Builds `kinds` (`agent`, `operator`, `orchestrator`) from the `guildnet-<kind>` binaries at
/// `binaries` (the script strips copies) and pushes them to `registry` as
/// `guildnet-<kind>:<tag>`, over plain HTTP.
pub async fn build_and_push(
    binaries: &[(&str, &Path)],
    registry: &Registry,
    tag: &str,
) -> Result<Built> {
    let dir = tempfile::Builder::new()
        .prefix("gn-image-bins-")
        .tempdir()
        .map_err(TestbedError::io("create temp dir"))?;
    let mut kinds = Vec::new();
    for (kind, path) in binaries {
        let link = dir.path().join(format!("guildnet-{kind}"));
        std::os::unix::fs::symlink(path, &link)
            .map_err(TestbedError::io(format!("symlink {}", link.display())))?;
        kinds.push(*kind);
    }
    let images = kinds.join(",");
    let script = build_script();
    let started = Instant::now();
    let out = crate::process::run(
        Path::new("bash"),
        [
            script.as_os_str(),
            OsStr::new("--images"),
            OsStr::new(&images),
            OsStr::new("--binaries"),
            dir.path().as_os_str(),
            OsStr::new("--push"),
            OsStr::new(registry.host()),
            OsStr::new("--insecure"),
            OsStr::new("--tag"),
            OsStr::new(tag),
            OsStr::new("--no-archive"),
        ],
        &[],
    )
    .await?;
    let elapsed = started.elapsed();
    let images = parse_image_lines(&out)?;
    for k in kinds {
        if !images.iter().any(|i| i.kind == k) {
            return Err(TestbedError::Unexpected(format!(
                "{} printed no IMAGE line for {k}:\n{out}",
                script.display()
            )));
        }
    }
    Ok(Built { images, elapsed })
}

/// Parses the script's `IMAGE <kind> <reference> <digest> <compressed> <uncompressed>` lines.
pub fn parse_image_lines(out: &str) -> Result<Vec<BuiltImage>> {
    out.lines()
        .filter_map(|l| l.strip_prefix("IMAGE "))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let bad = || TestbedError::Unexpected(format!("bad IMAGE line: {l}"));
            let [kind, reference, digest, compressed, uncompressed] = f[..] else {
                return Err(bad());
            };
            Ok(BuiltImage {
                kind: kind.to_owned(),
                reference: reference.to_owned(),
                digest: digest.to_owned(),
                compressed_bytes: compressed.parse().map_err(|_| bad())?,
                uncompressed_bytes: uncompressed.parse().map_err(|_| bad())?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_lines_are_parsed_and_others_ignored() {
        let out = "noise\nIMAGE agent 127.0.0.1:5000/guildnet-agent:t sha256:ab 100 300\n";
        let v = parse_image_lines(out).expect("parse");
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].reference, "127.0.0.1:5000/guildnet-agent:t");
        assert_eq!((v[0].compressed_bytes, v[0].uncompressed_bytes), (100, 300));
        assert!(parse_image_lines("IMAGE agent x").is_err());
    }
}
