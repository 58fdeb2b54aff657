//! A real OCI registry on loopback: distribution's `registry` (the server most registries run),
//! plain HTTP on 127.0.0.1 with a free port and a temp storage dir, and a helper that pushes an
//! OCI archive to it with skopeo. A [`crate::node::RealNode`] that trusts the registry
//! (`NodeOptions::insecure_registries`) pulls from it the way a cluster node pulls.
//!
//! This module owns the registry process and its storage; it never touches the node.

use crate::process::{Proc, TestbedError};
use crate::{bin, free_port, probe_client, wait_for, Result};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A running registry. Dropping it stops the server and removes its storage.
#[derive(Debug)]
pub struct Registry {
    proc: Option<Proc>,
    host: String,
    dir: tempfile::TempDir,
}

impl Registry {
    /// Starts the registry on `127.0.0.1:<free port>` and waits until `GET /v2/` answers 200.
    pub async fn start() -> Result<Registry> {
        let registry_bin = bin("registry")?;
        let dir = tempfile::Builder::new()
            .prefix("gn-registry-")
            .tempdir()
            .map_err(TestbedError::io("create temp dir"))?;
        let port = free_port()?;
        let host = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        // Plain HTTP on loopback; deletes allowed so tests can remove tags.
        let yaml = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n",
            dir.path().join("data").display()
        );
        std::fs::write(&config, yaml)
            .map_err(TestbedError::io(format!("write {}", config.display())))?;
        let proc = Proc::spawn(
            "registry",
            &registry_bin,
            [OsStr::new("serve"), config.as_os_str()],
            &[],
            &dir.path().join("registry.log"),
        )?
        .with_stop_timeout(Duration::from_secs(5))
        .listening_on(port);
        let mut registry = Registry {
            proc: Some(proc),
            host,
            dir,
        };
        let http = probe_client();
        let url = format!("http://{}/v2/", registry.host);
        wait_for(
            "registry GET /v2/",
            Duration::from_secs(30),
            registry.proc.as_mut(),
            || async {
                let r = http.get(&url).send().await.ok()?;
                r.status().is_success().then_some(())
            },
        )
        .await?;
        Ok(registry)
    }

    /// `127.0.0.1:<port>`: the registry part of image references (`<host>/<repo>:<tag>`).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The registry's temp dir (its log is `registry.log` in it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Pushes the single image of an OCI archive (a tar of an OCI layout, as
    /// `scripts/testbed/install.sh` writes under `share/images/`) as `<repo>:<tag>`, with
    /// `skopeo copy --dest-tls-verify=false`. Returns the full reference `<host>/<repo>:<tag>`.
    pub async fn push_oci_archive(&self, archive: &Path, repo: &str, tag: &str) -> Result<String> {
        let skopeo = bin("skopeo")?;
        let reference = format!("{}/{repo}:{tag}", self.host);
        let src = format!("oci-archive:{}", archive.display());
        let dest = format!("docker://{reference}");
        // skopeo unpacks the archive into TMPDIR: keep that inside the registry's dir.
        let tmp = self.dir.path().join("skopeo-tmp");
        std::fs::create_dir_all(&tmp)
            .map_err(TestbedError::io(format!("create {}", tmp.display())))?;
        crate::process::run(
            &skopeo,
            [
                // No signature policy applies to a test image (and /etc/containers/policy.json
                // may be missing).
                "--insecure-policy",
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                src.as_str(),
                dest.as_str(),
            ],
            &[("TMPDIR", tmp.as_os_str())],
        )
        .await?;
        Ok(reference)
    }

    /// The manifest digest (`sha256:…`) the registry serves for `<repo>:<tag>`, or an error if
    /// it has no such tag.
    pub async fn manifest_digest(&self, repo: &str, tag: &str) -> Result<String> {
        let url = format!("http://{}/v2/{repo}/manifests/{tag}", self.host);
        let r = probe_client()
            .head(&url)
            .header(
                reqwest::header::ACCEPT,
                "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json",
            )
            .send()
            .await?;
        if !r.status().is_success() {
            return Err(TestbedError::Unexpected(format!(
                "registry HEAD {url}: {}",
                r.status()
            )));
        }
        r.headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| {
                TestbedError::Unexpected(format!("registry HEAD {url}: no Docker-Content-Digest"))
            })
    }
}

/// Path of an OCI archive that `scripts/testbed/install.sh` built (`pause`, `busybox`), or an
/// error naming the install item.
pub fn testbed_image(name: &str) -> Result<PathBuf> {
    let path = crate::testbed_dir()
        .join("share/images")
        .join(format!("{name}.oci.tar"));
    if path.exists() {
        Ok(path)
    } else {
        Err(TestbedError::MissingBinary {
            name: format!("{name} image"),
            path,
            item: match name {
                "pause" => "pause".to_owned(),
                other => format!("{other}-image"),
            },
        })
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        drop(self.proc.take());
    }
}
