//! `tailscale status --json`, the parts GuildNet uses.

use crate::{MeshPeer, MeshStatus};
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// A node's view of the tailnet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// `NoState`, `NeedsLogin`, `Starting`, `Running`, `Stopped`...
    pub backend_state: String,
    /// This node's host name (empty before login).
    pub hostname: String,
    /// MagicDNS name (`host.base.domain.`), empty when unknown.
    pub dns_name: String,
    /// This node's tailnet addresses.
    pub addresses: Vec<String>,
    /// Peers, sorted by host name.
    pub peers: Vec<PeerInfo>,
}

/// A peer in [`NodeStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerInfo {
    /// Host name.
    pub hostname: String,
    /// MagicDNS name.
    pub dns_name: String,
    /// Tailnet addresses.
    pub addresses: Vec<String>,
    /// Connected to the control server.
    pub online: bool,
    /// Home DERP relay region code (empty until known).
    pub relay: String,
    /// Known UDP endpoints.
    pub endpoints: Vec<String>,
}

impl PeerInfo {
    /// First IPv4 tailnet address.
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        self.addresses.iter().find_map(|a| a.parse().ok())
    }

    /// Whether packets to it have a path (a DERP relay or an endpoint), so a first connection
    /// does not stall on WireGuard's handshake retry.
    pub fn has_path(&self) -> bool {
        !self.relay.is_empty() || !self.endpoints.is_empty()
    }
}

impl NodeStatus {
    /// Logged in and connected.
    pub fn is_running(&self) -> bool {
        self.backend_state == "Running"
    }

    /// This node's first IPv4 tailnet address.
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        self.addresses.iter().find_map(|a| a.parse().ok())
    }

    /// The peer with host name `hostname`.
    pub fn peer(&self, hostname: &str) -> Option<&PeerInfo> {
        self.peers.iter().find(|p| p.hostname == hostname)
    }

    /// Parses `tailscale status --json`.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        let raw: RawStatus = serde_json::from_str(text)?;
        let me = raw.self_node.unwrap_or_default();
        let mut peers: Vec<PeerInfo> = raw.peer.into_values().map(PeerInfo::from).collect();
        peers.sort_by(|a, b| a.hostname.cmp(&b.hostname));
        Ok(Self {
            backend_state: raw.backend_state,
            hostname: me.host_name.clone(),
            dns_name: me.dns_name.clone(),
            addresses: if raw.tailscale_ips.is_empty() {
                me.tailscale_ips
            } else {
                raw.tailscale_ips
            },
            peers,
        })
    }
}

impl From<NodeStatus> for MeshStatus {
    fn from(s: NodeStatus) -> Self {
        MeshStatus {
            hostname: s.hostname,
            addresses: s.addresses,
            peers: s
                .peers
                .into_iter()
                .map(|p| MeshPeer {
                    hostname: p.hostname,
                    addresses: p.addresses,
                    online: p.online,
                })
                .collect(),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawStatus {
    #[serde(default)]
    backend_state: String,
    #[serde(rename = "TailscaleIPs", default, deserialize_with = "null_default")]
    tailscale_ips: Vec<String>,
    #[serde(rename = "Self", default)]
    self_node: Option<RawPeer>,
    #[serde(default, deserialize_with = "null_default")]
    peer: BTreeMap<String, RawPeer>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RawPeer {
    #[serde(default)]
    host_name: String,
    #[serde(rename = "DNSName", default)]
    dns_name: String,
    #[serde(rename = "TailscaleIPs", default, deserialize_with = "null_default")]
    tailscale_ips: Vec<String>,
    #[serde(default)]
    online: bool,
    #[serde(default)]
    relay: String,
    #[serde(default, deserialize_with = "null_default")]
    addrs: Vec<String>,
}

impl From<RawPeer> for PeerInfo {
    fn from(p: RawPeer) -> Self {
        Self {
            hostname: p.host_name,
            dns_name: p.dns_name,
            addresses: p.tailscale_ips,
            online: p.online,
            relay: p.relay,
            endpoints: p.addrs,
        }
    }
}

fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_json() {
        let text = r#"{
          "BackendState": "Running",
          "TailscaleIPs": ["100.64.0.1", "fd7a:115c:a1e0::1"],
          "Self": {"HostName": "a", "DNSName": "a.gn.internal.", "TailscaleIPs": ["100.64.0.1"], "Online": false},
          "Peer": {
            "nodekey:2": {"HostName": "c", "TailscaleIPs": null, "Online": false, "Relay": "", "Addrs": null},
            "nodekey:1": {"HostName": "b", "DNSName": "b.gn.internal.", "TailscaleIPs": ["100.64.0.2"], "Online": true, "Relay": "guildnet", "Addrs": ["127.0.0.1:4000"]}
          }
        }"#;
        let s = NodeStatus::from_json(text).expect("parse");
        assert!(s.is_running());
        assert_eq!(s.hostname, "a");
        assert_eq!(s.ipv4(), Some(Ipv4Addr::new(100, 64, 0, 1)));
        assert_eq!(s.peers.len(), 2);
        let b = s.peer("b").expect("b");
        assert!(b.online && b.has_path());
        assert_eq!(b.ipv4(), Some(Ipv4Addr::new(100, 64, 0, 2)));
        let c = s.peer("c").expect("c");
        assert!(!c.online && !c.has_path() && c.addresses.is_empty());
        let m: MeshStatus = s.into();
        assert_eq!(m.peers[0].hostname, "b");
        assert!(m.peers[0].online);
        let before_login = NodeStatus::from_json(
            r#"{"BackendState":"NeedsLogin","TailscaleIPs":null,"Self":null,"Peer":null}"#,
        )
        .expect("parse");
        assert!(!before_login.is_running() && before_login.addresses.is_empty());
    }
}
