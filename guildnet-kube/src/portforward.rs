//! Port-forwards to agent pods through the API server (kube-rs over WebSocket, no kubectl),
//! listening on 127.0.0.1 only. Each accepted connection gets its own forward stream. Forwards
//! are kept per key and reused while alive.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::ResourceExt;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A local listener forwarding to one pod port. Dropping it stops the listener (connections in
/// flight end when their pod stream does).
#[derive(Debug)]
pub struct LocalForward {
    addr: SocketAddr,
    pod: String,
    accept: JoinHandle<()>,
}

impl LocalForward {
    /// Where to connect (`127.0.0.1:<port>`).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The pod it forwards to.
    pub fn pod(&self) -> &str {
        &self.pod
    }

    /// False once the listener stopped.
    pub fn is_alive(&self) -> bool {
        !self.accept.is_finished()
    }
}

impl Drop for LocalForward {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Starts a loopback listener forwarding every connection to `pod`:`port`.
pub async fn forward(pods: Api<Pod>, pod: &str, port: u16) -> std::io::Result<LocalForward> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let pod_name = pod.to_owned();
    let accept = tokio::spawn(async move {
        loop {
            let (mut conn, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "port-forward accept failed");
                    continue;
                }
            };
            let pods = pods.clone();
            let pod = pod_name.clone();
            tokio::spawn(async move {
                let mut pf = match pods.portforward(&pod, &[port]).await {
                    Ok(pf) => pf,
                    Err(e) => {
                        tracing::warn!(%pod, port, %peer, error = %e, "port-forward failed");
                        return;
                    }
                };
                let Some(mut upstream) = pf.take_stream(port) else {
                    return;
                };
                if let Err(e) = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await {
                    tracing::debug!(%pod, port, error = %e, "port-forward connection ended");
                }
                drop(upstream);
                let _ = pf.join().await;
            });
        }
    });
    Ok(LocalForward {
        addr,
        pod: pod.to_owned(),
        accept,
    })
}

/// The Running pod of a workload (by the `guildnet.io/agenttask` label), newest first.
pub async fn running_pod(pods: &Api<Pod>, workload: &str) -> Result<Option<String>, kube::Error> {
    let mut list = pods
        .list(&ListParams::default().labels(&format!("{}={workload}", crate::TASK_LABEL)))
        .await?
        .items;
    list.retain(|p| {
        p.metadata.deletion_timestamp.is_none()
            && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
    });
    list.sort_by_key(|p| std::cmp::Reverse(p.creation_timestamp()));
    Ok(list.first().map(|p| p.name_any()))
}

/// Open forwards by key, reused while alive.
#[derive(Debug, Default, Clone)]
pub struct Forwards {
    open: Arc<Mutex<HashMap<String, Arc<LocalForward>>>>,
}

impl Forwards {
    /// The live forward for `key`, if any.
    pub fn get(&self, key: &str) -> Option<Arc<LocalForward>> {
        let mut m = self.open.lock().unwrap_or_else(|p| p.into_inner());
        match m.get(key) {
            Some(f) if f.is_alive() => Some(f.clone()),
            Some(_) => {
                m.remove(key);
                None
            }
            None => None,
        }
    }

    /// Keeps `f` under `key` (replacing and stopping an older one).
    pub fn insert(&self, key: String, f: LocalForward) -> Arc<LocalForward> {
        let f = Arc::new(f);
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, f.clone());
        f
    }

    /// Stops and forgets the forward for `key`. Returns whether there was one.
    pub fn close(&self, key: &str) -> bool {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key)
            .is_some()
    }
}
