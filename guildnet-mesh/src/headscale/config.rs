//! The generated Headscale server config: settings kept as JSON in the state dir, rendered to
//! Headscale's YAML on every start (so a re-run uses exactly the same config).

use super::server::ServerFiles;
use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, SocketAddr};

/// A setting is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid headscale setting {field}: {reason}")]
pub struct SettingsError {
    /// The setting.
    pub field: &'static str,
    /// Why.
    pub reason: String,
}

/// What a local Headscale listens on and hands out. Defaults: loopback only, port 8080.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeadscaleSettings {
    /// The URL nodes use to reach the server (`--login-server`); defaults to
    /// `http://<listen_addr>`.
    pub server_url: String,
    /// HTTP listener (control protocol, REST API, embedded DERP). Loopback unless asked otherwise.
    pub listen_addr: SocketAddr,
    /// Prometheus metrics listener.
    pub metrics_listen_addr: SocketAddr,
    /// gRPC listener (remote CLI); TLS-only, so unused on loopback.
    pub grpc_listen_addr: SocketAddr,
    /// UDP STUN listener of the embedded DERP relay.
    pub stun_listen_addr: SocketAddr,
    /// Public IPv4 address of the embedded DERP relay, as nodes reach it. `0.0.0.0` puts none
    /// in the DERP map: nodes resolve the server URL's host instead.
    pub derp_ipv4: Ipv4Addr,
    /// Tailnet IPv4 prefix.
    pub ipv4_prefix: String,
    /// Tailnet IPv6 prefix.
    pub ipv6_prefix: String,
    /// MagicDNS on or off.
    pub magic_dns: bool,
    /// MagicDNS base domain (`<node>.<base_domain>`); must differ from the server's host.
    pub base_domain: String,
    /// Global DNS resolvers pushed to nodes (empty: keep the nodes' own).
    pub nameservers: Vec<String>,
    /// How long an offline ephemeral node is kept (Go duration, e.g. `30m`).
    pub ephemeral_inactivity_timeout: String,
}

impl Default for HeadscaleSettings {
    fn default() -> Self {
        Self::on_loopback(8080, 9090, 50443, 3478)
    }
}

impl HeadscaleSettings {
    /// Loopback-only settings on the given ports (HTTP, metrics, gRPC, STUN/UDP).
    pub fn on_loopback(http: u16, metrics: u16, grpc: u16, stun: u16) -> Self {
        let lo = Ipv4Addr::LOCALHOST;
        Self {
            server_url: format!("http://{lo}:{http}"),
            listen_addr: (lo, http).into(),
            metrics_listen_addr: (lo, metrics).into(),
            grpc_listen_addr: (lo, grpc).into(),
            stun_listen_addr: (lo, stun).into(),
            derp_ipv4: lo,
            ipv4_prefix: "100.64.0.0/10".into(),
            ipv6_prefix: "fd7a:115c:a1e0::/48".into(),
            magic_dns: true,
            base_domain: "guildnet.internal".into(),
            nameservers: Vec::new(),
            ephemeral_inactivity_timeout: "30m".into(),
        }
    }

    /// A Headscale that nodes on other hosts reach at `ip` (agent pods reaching the host at
    /// the node's address): the server URL (`http://<ip>:<http>`), its listener, the STUN
    /// listener and the announced DERP relay address on `ip`; metrics and gRPC on loopback.
    pub fn serving_at(ip: Ipv4Addr, http: u16, metrics: u16, grpc: u16, stun: u16) -> Self {
        let mut s = Self::on_loopback(http, metrics, grpc, stun);
        s.server_url = format!("http://{ip}:{http}");
        s.listen_addr = (ip, http).into();
        s.stun_listen_addr = (ip, stun).into();
        s.derp_ipv4 = ip;
        s
    }

    /// Checks the settings (URL, prefixes, domain, nameservers).
    pub fn validate(&self) -> Result<(), SettingsError> {
        let err = |field, reason: String| SettingsError { field, reason };
        let url = super::client::parse_base_url(&self.server_url)
            .map_err(|e| err("serverUrl", e.to_string()))?;
        for (field, p, v6) in [
            ("ipv4Prefix", &self.ipv4_prefix, false),
            ("ipv6Prefix", &self.ipv6_prefix, true),
        ] {
            let (ip, len) = p
                .split_once('/')
                .ok_or_else(|| err(field, format!("{p:?} is not a CIDR prefix")))?;
            let ok = match (v6, ip.parse::<std::net::IpAddr>(), len.parse::<u8>()) {
                (false, Ok(std::net::IpAddr::V4(_)), Ok(l)) => l <= 32,
                (true, Ok(std::net::IpAddr::V6(_)), Ok(l)) => l <= 128,
                _ => false,
            };
            if !ok {
                return Err(err(field, format!("{p:?} is not a valid prefix")));
            }
        }
        let labels: Vec<&str> = self.base_domain.split('.').collect();
        if labels
            .iter()
            .any(|l| guildnet_core::names::validate_dns_label("baseDomain", l).is_err())
        {
            return Err(err(
                "baseDomain",
                format!(
                    "{:?} must be a DNS name of lowercase labels",
                    self.base_domain
                ),
            ));
        }
        if url.host_str() == Some(self.base_domain.as_str())
            || url
                .host_str()
                .is_some_and(|h| h.ends_with(&format!(".{}", self.base_domain)))
        {
            return Err(err(
                "baseDomain",
                "must not contain the server URL's host".into(),
            ));
        }
        for ns in &self.nameservers {
            if ns.parse::<std::net::IpAddr>().is_err() {
                return Err(err("nameservers", format!("{ns:?} is not an IP address")));
            }
        }
        let t = &self.ephemeral_inactivity_timeout;
        let unit_ok = t.ends_with(['s', 'm', 'h']);
        let num_ok = t
            .get(..t.len().saturating_sub(1))
            .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
        if !(unit_ok && num_ok) {
            return Err(err(
                "ephemeralInactivityTimeout",
                format!("{t:?} must be a number followed by s, m or h"),
            ));
        }
        Ok(())
    }
}

/// A YAML double-quoted scalar (a JSON string is one).
/// Headscale's `config.yaml`, typed: only the keys GuildNet sets (Headscale's defaults cover the
/// rest). Serialized with serde, so values are always quoted and escaped correctly.
#[derive(serde::Serialize)]
struct HeadscaleConfig<'a> {
    server_url: &'a str,
    listen_addr: String,
    metrics_listen_addr: String,
    grpc_listen_addr: String,
    grpc_allow_insecure: bool,
    noise: Noise<'a>,
    prefixes: Prefixes<'a>,
    derp: Derp<'a>,
    disable_check_updates: bool,
    node: Node<'a>,
    database: Database<'a>,
    log: Log,
    dns: Dns<'a>,
    unix_socket: &'a std::path::Path,
    unix_socket_permission: &'static str,
    logtail: Enabled,
}

#[derive(serde::Serialize)]
struct Noise<'a> {
    private_key_path: &'a std::path::Path,
}

#[derive(serde::Serialize)]
struct Prefixes<'a> {
    v4: &'a str,
    v6: &'a str,
    allocation: &'static str,
}

#[derive(serde::Serialize)]
struct Derp<'a> {
    server: DerpServer<'a>,
    urls: [&'static str; 0],
    paths: [&'static str; 0],
    auto_update_enabled: bool,
}

#[derive(serde::Serialize)]
struct DerpServer<'a> {
    enabled: bool,
    region_id: u32,
    region_code: &'static str,
    region_name: &'static str,
    stun_listen_addr: String,
    private_key_path: &'a std::path::Path,
    automatically_add_embedded_derp_region: bool,
    ipv4: String,
}

#[derive(serde::Serialize)]
struct Node<'a> {
    ephemeral: Ephemeral<'a>,
}

#[derive(serde::Serialize)]
struct Ephemeral<'a> {
    inactivity_timeout: &'a str,
}

#[derive(serde::Serialize)]
struct Database<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    sqlite: Sqlite<'a>,
}

#[derive(serde::Serialize)]
struct Sqlite<'a> {
    path: &'a std::path::Path,
    write_ahead_log: bool,
}

#[derive(serde::Serialize)]
struct Log {
    level: &'static str,
    format: &'static str,
}

#[derive(serde::Serialize)]
struct Dns<'a> {
    magic_dns: bool,
    base_domain: &'a str,
    override_local_dns: bool,
    nameservers: Nameservers<'a>,
}

#[derive(serde::Serialize)]
struct Nameservers<'a> {
    global: &'a [String],
}

#[derive(serde::Serialize)]
struct Enabled {
    enabled: bool,
}

/// Renders Headscale's `config.yaml` for `settings` with its files under `files`: SQLite (WAL),
/// the embedded DERP relay as the only region (no DERP map download), no update checks, a unix
/// socket for the CLI (mode 0770), logtail off. Same input, same output (byte for byte).
pub fn render_config(settings: &HeadscaleSettings, files: &ServerFiles) -> String {
    let cfg = HeadscaleConfig {
        server_url: &settings.server_url,
        listen_addr: settings.listen_addr.to_string(),
        metrics_listen_addr: settings.metrics_listen_addr.to_string(),
        grpc_listen_addr: settings.grpc_listen_addr.to_string(),
        grpc_allow_insecure: false,
        noise: Noise {
            private_key_path: &files.noise_key,
        },
        prefixes: Prefixes {
            v4: &settings.ipv4_prefix,
            v6: &settings.ipv6_prefix,
            allocation: "sequential",
        },
        derp: Derp {
            server: DerpServer {
                enabled: true,
                region_id: 999,
                region_code: "guildnet",
                region_name: "GuildNet embedded DERP",
                stun_listen_addr: settings.stun_listen_addr.to_string(),
                private_key_path: &files.derp_key,
                automatically_add_embedded_derp_region: true,
                ipv4: if settings.derp_ipv4.is_unspecified() {
                    String::new()
                } else {
                    settings.derp_ipv4.to_string()
                },
            },
            urls: [],
            paths: [],
            auto_update_enabled: false,
        },
        disable_check_updates: true,
        node: Node {
            ephemeral: Ephemeral {
                inactivity_timeout: &settings.ephemeral_inactivity_timeout,
            },
        },
        database: Database {
            kind: "sqlite",
            sqlite: Sqlite {
                path: &files.database,
                write_ahead_log: true,
            },
        },
        log: Log {
            level: "info",
            format: "text",
        },
        dns: Dns {
            magic_dns: settings.magic_dns,
            base_domain: &settings.base_domain,
            override_local_dns: !settings.nameservers.is_empty(),
            nameservers: Nameservers {
                global: &settings.nameservers,
            },
        },
        unix_socket: &files.socket,
        unix_socket_permission: "0770",
        logtail: Enabled { enabled: false },
    };
    // Serializing plain structs of strings, numbers and booleans cannot fail.
    let body = serde_saphyr::to_string(&cfg).unwrap_or_default();
    format!("# Generated by guildnet-mesh; edit settings.json beside it instead.\n{body}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(y: &str) -> serde_json::Value {
        serde_saphyr::from_str(y).expect("the config is valid YAML")
    }

    #[test]
    fn serving_at_an_address_puts_the_url_listeners_and_relay_there() {
        let ip = Ipv4Addr::new(10, 0, 0, 5);
        let s = HeadscaleSettings::serving_at(ip, 8080, 9090, 50443, 3478);
        s.validate().expect("valid");
        assert_eq!(s.server_url, "http://10.0.0.5:8080");
        assert_eq!(s.listen_addr.to_string(), "10.0.0.5:8080");
        assert_eq!(s.stun_listen_addr.to_string(), "10.0.0.5:3478");
        assert_eq!(s.derp_ipv4, ip);
        assert_eq!(s.metrics_listen_addr.to_string(), "127.0.0.1:9090");
        assert_eq!(s.grpc_listen_addr.to_string(), "127.0.0.1:50443");
    }

    #[test]
    fn the_derp_relay_is_announced_at_its_address_or_left_to_the_host_name() {
        let files = ServerFiles::under(Path::new("/s"));
        let mut s = HeadscaleSettings::on_loopback(18080, 19090, 15443, 13478);
        assert_eq!(
            parse(&render_config(&s, &files))["derp"]["server"]["ipv4"],
            "127.0.0.1"
        );
        s.derp_ipv4 = Ipv4Addr::new(10, 0, 0, 5);
        assert_eq!(
            parse(&render_config(&s, &files))["derp"]["server"]["ipv4"],
            "10.0.0.5"
        );
        s.derp_ipv4 = Ipv4Addr::UNSPECIFIED;
        assert_eq!(
            parse(&render_config(&s, &files))["derp"]["server"]["ipv4"],
            ""
        );
    }

    #[test]
    fn renders_loopback_config_with_state_paths() {
        let files = ServerFiles::under(Path::new("/var/lib/gn/state"));
        let s = HeadscaleSettings::on_loopback(18080, 19090, 15443, 13478);
        s.validate().expect("valid");
        let y = render_config(&s, &files);
        let v = parse(&y);
        assert_eq!(v["server_url"], "http://127.0.0.1:18080", "{y}");
        assert_eq!(v["listen_addr"], "127.0.0.1:18080");
        assert_eq!(
            v["database"]["sqlite"]["path"],
            "/var/lib/gn/state/headscale/db.sqlite"
        );
        assert_eq!(v["database"]["type"], "sqlite");
        assert_eq!(v["prefixes"]["v4"], "100.64.0.0/10");
        assert_eq!(v["prefixes"]["v6"], "fd7a:115c:a1e0::/48");
        assert_eq!(v["derp"]["server"]["enabled"], true);
        assert_eq!(v["derp"]["server"]["stun_listen_addr"], "127.0.0.1:13478");
        assert_eq!(v["dns"]["nameservers"]["global"], serde_json::json!([]));
        assert_eq!(v["dns"]["override_local_dns"], false);
        assert_eq!(v["dns"]["base_domain"], "guildnet.internal");
        assert_eq!(
            v["unix_socket"],
            "/var/lib/gn/state/headscale/headscale.sock"
        );
        assert_eq!(v["unix_socket_permission"], "0770");
        // Same input, same output: re-runs reuse the config byte for byte.
        assert_eq!(y, render_config(&s, &files));
    }

    #[test]
    fn nameservers_override_local_dns_and_odd_values_stay_values() {
        let files = ServerFiles::under(Path::new("/s: x #y"));
        let s = HeadscaleSettings {
            nameservers: vec!["1.1.1.1".into(), "2606:4700:4700::1111".into()],
            ..HeadscaleSettings::default()
        };
        s.validate().expect("valid");
        let v = parse(&render_config(&s, &files));
        assert_eq!(
            v["dns"]["nameservers"]["global"],
            serde_json::json!(["1.1.1.1", "2606:4700:4700::1111"])
        );
        assert_eq!(v["dns"]["override_local_dns"], true);
        assert_eq!(
            v["database"]["sqlite"]["path"],
            "/s: x #y/headscale/db.sqlite"
        );
    }

    #[test]
    fn invalid_settings_name_the_field() {
        let base = HeadscaleSettings::default();
        type Mutate = Box<dyn Fn(&mut HeadscaleSettings)>;
        let cases: Vec<(&str, Mutate)> = vec![
            ("serverUrl", Box::new(|s| s.server_url = "ftp://x".into())),
            (
                "ipv4Prefix",
                Box::new(|s| s.ipv4_prefix = "100.64.0.0".into()),
            ),
            (
                "ipv6Prefix",
                Box::new(|s| s.ipv6_prefix = "10.0.0.0/8".into()),
            ),
            (
                "baseDomain",
                Box::new(|s| s.base_domain = "Bad_Domain".into()),
            ),
            (
                "baseDomain",
                Box::new(|s| s.base_domain = "127.0.0.1".into()),
            ),
            (
                "nameservers",
                Box::new(|s| s.nameservers = vec!["dns.google".into()]),
            ),
            (
                "ephemeralInactivityTimeout",
                Box::new(|s| s.ephemeral_inactivity_timeout = "soon".into()),
            ),
        ];
        for (field, mutate) in cases {
            let mut s = base.clone();
            mutate(&mut s);
            let e = s.validate().expect_err(field);
            assert_eq!(e.field, field, "{e}");
        }
    }
}
