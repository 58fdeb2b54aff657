//! Where the testbed keeps the real upstream binaries, and free loopback ports. (The same
//! conventions as `guildnet-testbed`, without its Kubernetes dependencies, so the mesh tests and
//! bench build quickly.)

#![allow(dead_code)]

use std::path::PathBuf;

/// `$GUILDNET_TESTBED_DIR/bin/<name>`, else `~/.cache/guildnet/testbed/bin/<name>`; panics naming
/// the install command when it is missing.
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("GUILDNET_TESTBED_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map_or_else(|| PathBuf::from("/root"), PathBuf::from)
                .join(".cache/guildnet/testbed")
        });
    let path = dir.join("bin").join(name);
    let item = if name == "tailscaled" {
        "tailscale"
    } else {
        name
    };
    assert!(
        path.is_file(),
        "{name} is not installed at {}: run `scripts/testbed/install.sh {item}`",
        path.display()
    );
    path
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind :0");
    l.local_addr().expect("local addr").port()
}

/// A loopback UDP port that was free a moment ago.
pub fn free_udp_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp :0");
    s.local_addr().expect("udp local addr").port()
}
