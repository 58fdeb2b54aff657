//! What a real testbed node changes on the machine, how to find it, and how to undo it.
//!
//! A [`crate::node::RealNode`] keeps everything it can inside its temp dir (containerd's root
//! and state, runc's state, the network namespaces, the kubelet's root dir, pod logs, the CNI
//! IP allocations). What cannot live there is named by the constants below, so it can be found
//! and removed after a crash too: the CNI bridge [`BRIDGE`] and its veths, the cgroup tree
//! [`CGROUP_ROOT`] in every cgroup hierarchy, the container shims (they outlive containerd) and
//! their sockets under `/run/containerd/s`, libcni's result cache for [`CNI_NETWORK`], the
//! kubelet's symlinks in `/var/log/containers`, iptables chains the kubelet may add, the nat
//! chain [`SERVICE_CHAIN`] that routes the `kubernetes` Service to the API server, and
//! `net.ipv4.ip_forward`, which the bridge plugin turns on.
//!
//! This module only looks at and removes those things; starting the node is `node.rs`'s job.

use nix::mount::{umount2, MntFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The CNI bridge the node's pods hang off.
pub const BRIDGE: &str = "gn-testbed0";
/// The pods' subnet (host-local IPAM); the bridge is its `.1`.
pub const POD_CIDR: &str = "10.217.0.0/24";
/// The CNI network name (libcni keys its result cache by it).
pub const CNI_NETWORK: &str = "guildnet-testbed";
/// The kubelet's `cgroupRoot`: `kubepods` lives under `/<CGROUP_ROOT>` in every hierarchy,
/// never at the top, so nothing of another kubelet on the machine is ever touched.
pub const CGROUP_ROOT: &str = "guildnet-testbed";
/// The kubelet's device-plugin socket goes to `/var/lib/kubelet/device-plugins` whatever its
/// root dir is (a constant in the kubelet).
pub const VAR_LIB_KUBELET: &str = "/var/lib/kubelet";
/// Where containerd puts shim sockets whatever its config says (`defaults.DefaultStateDir/s`).
const SHIM_SOCKET_DIR: &str = "/run/containerd/s";
/// libcni's default cache dir (containerd's CRI plugin does not change it).
const CNI_CACHE_DIR: &str = "/var/lib/cni";
/// The kubelet's container log symlinks (a constant in the kubelet, not configurable).
const CONTAINER_LOG_LINKS: &str = "/var/log/containers";
/// Chains the kubelet creates when `makeIPTablesUtilChains` is on (the node turns it off).
const KUBELET_CHAINS: [(&str, &str); 5] = [
    ("filter", "KUBE-FIREWALL"),
    ("filter", "KUBE-KUBELET-CANARY"),
    ("nat", "KUBE-KUBELET-CANARY"),
    ("mangle", "KUBE-KUBELET-CANARY"),
    ("mangle", "KUBE-IPTABLES-HINT"),
];

/// The nat chain of the node's stand-in for kube-proxy: pods reach the `kubernetes` Service
/// (the API server) at its ClusterIP through a DNAT to the API server's address.
pub const SERVICE_CHAIN: &str = "GN-TESTBED-SERVICES";
/// The `kubernetes` Service's ClusterIP (the first address of the testbed's service range
/// 10.96.0.0/16) and port, which the kubelet gives every pod as `KUBERNETES_SERVICE_HOST/PORT`.
pub const API_SERVICE: (std::net::Ipv4Addr, u16) = (std::net::Ipv4Addr::new(10, 96, 0, 1), 443);

/// A container shim process (`containerd-shim-runc-v2 -namespace NS -id ID -address SOCK`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shim {
    /// Process id.
    pub pid: u32,
    /// containerd namespace (`k8s.io` for CRI).
    pub namespace: String,
    /// Shim id (the pod sandbox id, for CRI).
    pub id: String,
    /// The containerd gRPC socket it reports to.
    pub address: String,
}

impl Shim {
    /// The shim's ttrpc socket, as containerd computes it: `/run/containerd/s/<sha256 of
    /// address/namespace/id>`. A shim that is killed leaves it behind.
    pub fn socket(&self) -> PathBuf {
        let path = Path::new(&self.address)
            .join(&self.namespace)
            .join(&self.id);
        let digest = Sha256::digest(path.as_os_str().as_encoded_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        Path::new(SHIM_SOCKET_DIR).join(hex)
    }
}

/// Every running runc shim, or only those of the containerd at `address`.
pub fn shims(address: Option<&Path>) -> Vec<Shim> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !args
            .first()
            .is_some_and(|a| a.ends_with("containerd-shim-runc-v2"))
        {
            continue;
        }
        let flag = |name: &str| {
            args.iter()
                .position(|a| a == name)
                .and_then(|i| args.get(i + 1))
                .cloned()
                .unwrap_or_default()
        };
        let shim = Shim {
            pid,
            namespace: flag("-namespace"),
            id: flag("-id"),
            address: flag("-address"),
        };
        if address.is_none_or(|a| Path::new(&shim.address) == a) {
            out.push(shim);
        }
    }
    out
}

/// Mount points at or under `dir`, in the order `/proc/self/mountinfo` lists them (parents
/// before the mounts on top of them).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mount_path(m)))
        .filter(|m| m.starts_with(dir))
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount points of every cgroup hierarchy (v1 controllers and the v2 unified one).
pub fn cgroup_hierarchies() -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let fstype = right.split(' ').next()?;
            (fstype == "cgroup" || fstype == "cgroup2").then(|| {
                left.split(' ')
                    .nth(4)
                    .map(|m| PathBuf::from(unescape_mount_path(m)))
            })?
        })
        .collect()
}

/// `/<hierarchy>/<CGROUP_ROOT>` for every hierarchy where it exists.
pub fn node_cgroups() -> Vec<PathBuf> {
    cgroup_hierarchies()
        .into_iter()
        .map(|h| h.join(CGROUP_ROOT))
        .filter(|p| p.is_dir())
        .collect()
}

/// Creates `/<CGROUP_ROOT>` in every hierarchy (the kubelet refuses a cgroupRoot that does not
/// exist), copying the parent's CPUs and memory nodes into the cpuset one (an empty cpuset
/// takes no tasks).
pub fn create_node_cgroups() -> Result<(), String> {
    for h in cgroup_hierarchies() {
        let dir = h.join(CGROUP_ROOT);
        if let Err(e) = std::fs::create_dir(&dir) {
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                return Err(format!("create cgroup {}: {e}", dir.display()));
            }
        }
        for f in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(v) = std::fs::read_to_string(h.join(f)) {
                std::fs::write(dir.join(f), v.trim())
                    .map_err(|e| format!("write {}: {e}", dir.join(f).display()))?;
            }
        }
    }
    Ok(())
}

/// Directories of a cgroup tree, children before parents.
fn cgroup_tree(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(cgroup_tree(&e.path()));
            }
        }
    }
    out.push(root.to_owned());
    out
}

/// Pids in a cgroup tree.
fn cgroup_pids(root: &Path) -> Vec<u32> {
    cgroup_tree(root)
        .iter()
        .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|s| {
            s.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Host network interfaces enslaved to the node's bridge (the pods' veths).
pub fn bridge_ports() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/sys/class/net") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path().join("master"))
                .ok()
                .and_then(|t| t.file_name().map(|n| n == BRIDGE))
                .unwrap_or(false)
        })
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .collect()
}

/// Whether the node's bridge exists.
pub fn bridge_exists() -> bool {
    Path::new("/sys/class/net").join(BRIDGE).exists()
}

/// `net.ipv4.ip_forward` ("0" or "1").
pub fn ip_forward() -> Option<String> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
        .ok()
        .map(|s| s.trim().to_owned())
}

/// Named network namespaces in `/var/run/netns` that CNI runtimes create (`cni-*`).
pub fn cni_netns() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/var/run/netns") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| n.starts_with("cni-"))
        .collect()
}

/// libcni cache entries of the node's network.
pub fn cni_cache_entries() -> Vec<PathBuf> {
    let dir = Path::new(CNI_CACHE_DIR).join("results");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let prefix = format!("{CNI_NETWORK}-");
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .map(|e| e.path())
        .collect()
}

/// Symlinks in `/var/log/containers` that point into `dir`.
pub fn container_log_links(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(CONTAINER_LOG_LINKS) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.starts_with(dir)))
        .map(|e| e.path())
        .collect()
}

/// The kubelet's iptables chains that exist, as `table/chain`.
pub fn kubelet_chains() -> Vec<String> {
    let mut out = Vec::new();
    for table in ["filter", "nat", "mangle"] {
        let Ok(o) = std::process::Command::new("iptables")
            .args(["-w", "5", "-t", table, "-S"])
            .output()
        else {
            return out;
        };
        let text = String::from_utf8_lossy(&o.stdout);
        for (t, chain) in KUBELET_CHAINS {
            if t == table && text.lines().any(|l| l == format!("-N {chain}")) {
                out.push(format!("{table}/{chain}"));
            }
        }
    }
    out
}

/// Whether the node's service chain ([`SERVICE_CHAIN`]) exists.
pub fn service_chain_exists() -> bool {
    std::process::Command::new("iptables")
        .args(["-w", "5", "-t", "nat", "-S", SERVICE_CHAIN])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Routes pod traffic for the `kubernetes` Service ([`API_SERVICE`]) to `target` (the API
/// server, listening on the node's address): a DNAT in [`SERVICE_CHAIN`], jumped to from
/// `PREROUTING` for packets coming in on the pods' bridge. What kube-proxy would do for this one
/// Service; nothing else is proxied. [`clean`] removes it.
pub fn add_api_service_nat(target: std::net::SocketAddrV4) -> Result<(), String> {
    let (ip, port) = API_SERVICE;
    let dest = format!("{ip}/32");
    let dport = port.to_string();
    let to = target.to_string();
    iptables(&["-t", "nat", "-N", SERVICE_CHAIN])?;
    iptables(&[
        "-t",
        "nat",
        "-A",
        SERVICE_CHAIN,
        "-d",
        &dest,
        "-p",
        "tcp",
        "--dport",
        &dport,
        "-m",
        "comment",
        "--comment",
        "guildnet testbed: default/kubernetes",
        "-j",
        "DNAT",
        "--to-destination",
        &to,
    ])?;
    iptables(&[
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-i",
        BRIDGE,
        "-j",
        SERVICE_CHAIN,
    ])
}

fn remove_service_chain() -> Result<(), String> {
    while iptables(&[
        "-t",
        "nat",
        "-D",
        "PREROUTING",
        "-i",
        BRIDGE,
        "-j",
        SERVICE_CHAIN,
    ])
    .is_ok()
    {}
    iptables(&["-t", "nat", "-F", SERVICE_CHAIN])?;
    iptables(&["-t", "nat", "-X", SERVICE_CHAIN])
}

/// What a node left on the machine; empty means clean. Built by [`leftovers`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Leftovers {
    /// One line per thing left behind.
    pub items: Vec<String>,
}

impl Leftovers {
    /// Nothing is left.
    pub fn is_clean(&self) -> bool {
        self.items.is_empty()
    }
}

/// Looks for everything a node whose temp dir was `dir` and whose containerd listened on
/// `address` could have left: shims, container processes, mounts under `dir`, the dir itself,
/// the bridge and its veths, `cni-*` network namespaces, the cgroup tree, libcni cache entries,
/// container log links and the kubelet's iptables chains.
pub fn leftovers(dir: &Path, address: &Path) -> Leftovers {
    let mut items = Vec::new();
    for s in shims(Some(address)) {
        if process_alive(s.pid) {
            items.push(format!("shim pid {} (id {})", s.pid, s.id));
        }
    }
    for m in mounts_under(dir) {
        items.push(format!("mount {}", m.display()));
    }
    if dir.exists() {
        items.push(format!("dir {}", dir.display()));
    }
    if bridge_exists() {
        items.push(format!("bridge {BRIDGE}"));
    }
    for p in bridge_ports() {
        items.push(format!("veth {p}"));
    }
    for n in cni_netns() {
        items.push(format!("netns /var/run/netns/{n}"));
    }
    for c in node_cgroups() {
        let pids = cgroup_pids(&c);
        items.push(format!("cgroup {} (pids {pids:?})", c.display()));
    }
    for c in cni_cache_entries() {
        items.push(format!("cni cache {}", c.display()));
    }
    for l in container_log_links(dir) {
        items.push(format!("log link {}", l.display()));
    }
    for c in kubelet_chains() {
        items.push(format!("iptables chain {c}"));
    }
    if service_chain_exists() {
        items.push(format!("iptables chain nat/{SERVICE_CHAIN}"));
    }
    let socket = Path::new(VAR_LIB_KUBELET).join("device-plugins/kubelet.sock");
    if socket.exists() {
        items.push(format!("kubelet socket {}", socket.display()));
    }
    Leftovers { items }
}

/// Removes everything a node whose temp dir is `dir` and whose containerd listened on `address`
/// left on the machine, except the dir itself (the caller removes it once this returns) and
/// `ip_forward`. The kubelet and containerd must be stopped already. Idempotent; returns
/// what could not be removed.
pub fn clean(dir: &Path, address: &Path) -> Vec<String> {
    let mut errors = Vec::new();

    // 1. Container processes: everything in the node's cgroup tree, then the shims (they
    //    outlive containerd, and a killed shim leaves its socket behind).
    let cgroups = node_cgroups();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids: Vec<u32> = cgroups.iter().flat_map(|c| cgroup_pids(c)).collect();
        if pids.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            errors.push(format!("processes still in the node's cgroups: {pids:?}"));
            break;
        }
        for pid in pids {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for shim in shims(Some(address)) {
        let _ = kill(Pid::from_raw(shim.pid as i32), Signal::SIGKILL);
        wait_gone(shim.pid, Duration::from_secs(5));
        let socket = shim.socket();
        if let Err(e) = std::fs::remove_file(&socket) {
            if e.kind() != std::io::ErrorKind::NotFound {
                errors.push(format!("remove {}: {e}", socket.display()));
            }
        }
    }

    // 2. Mounts under the dir, topmost first: container root filesystems, network namespace
    //    bind mounts, the kubelet's bind mount of its root dir and the pods' volumes.
    for _ in 0..5 {
        let mounts = mounts_under(dir);
        if mounts.is_empty() {
            break;
        }
        for m in mounts.iter().rev() {
            let _ = umount2(m, MntFlags::MNT_DETACH);
        }
    }
    for m in mounts_under(dir) {
        errors.push(format!("still mounted: {}", m.display()));
    }

    // 3. Network: the pods' veths (the peer end goes with its namespace, but not always at
    //    once), then the bridge.
    for port in bridge_ports() {
        if let Err(e) = ip(["link", "del", port.as_str()]) {
            if Path::new("/sys/class/net").join(&port).exists() {
                errors.push(e);
            }
        }
    }
    if bridge_exists() {
        if let Err(e) = ip(["link", "del", BRIDGE]) {
            errors.push(e);
        }
    }

    // 4. The cgroup tree, children first. A cgroup whose last task just died can be busy for a
    //    moment.
    for root in node_cgroups() {
        let deadline = Instant::now() + Duration::from_secs(10);
        for d in cgroup_tree(&root) {
            loop {
                match std::fs::remove_dir(&d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) if Instant::now() > deadline => {
                        errors.push(format!("rmdir {}: {e}", d.display()));
                        break;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
    }

    // 5. Files outside the dir: libcni's cache of the pods' results (CNI DEL never ran for
    //    killed pods), the kubelet's log symlinks, and the empty dirs they lived in.
    for f in cni_cache_entries() {
        if let Err(e) = std::fs::remove_file(&f) {
            errors.push(format!("remove {}: {e}", f.display()));
        }
    }
    for l in container_log_links(dir) {
        if let Err(e) = std::fs::remove_file(&l) {
            errors.push(format!("remove {}: {e}", l.display()));
        }
    }
    // rmdir only removes empty dirs: anything of someone else's stays.
    for d in [
        Path::new(CNI_CACHE_DIR).join("results"),
        PathBuf::from(CNI_CACHE_DIR),
        PathBuf::from(CONTAINER_LOG_LINKS),
        PathBuf::from(SHIM_SOCKET_DIR),
        PathBuf::from("/run/containerd"),
    ] {
        let _ = std::fs::remove_dir(d);
    }

    // 6. The kubelet's iptables chains (only there if makeIPTablesUtilChains was on).
    for chain in kubelet_chains() {
        let Some((table, name)) = chain.split_once('/') else {
            continue;
        };
        for builtin in ["INPUT", "OUTPUT"] {
            while iptables(&["-t", table, "-D", builtin, "-j", name]).is_ok() {}
        }
        if let Err(e) =
            iptables(&["-t", table, "-F", name]).and_then(|()| iptables(&["-t", table, "-X", name]))
        {
            errors.push(e);
        }
    }
    // 7. The node's service chain (the API server's ClusterIP).
    if service_chain_exists() {
        if let Err(e) = remove_service_chain() {
            errors.push(e);
        }
    }
    errors
}

/// Sets `net.ipv4.ip_forward`.
pub fn set_ip_forward(value: &str) -> Result<(), String> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", value)
        .map_err(|e| format!("write /proc/sys/net/ipv4/ip_forward: {e}"))
}

/// Kills (SIGKILL) every process whose command line names a path under `dir`: the kubelet,
/// containerd and the shims of a node whose owner died without stopping them. Returns how many.
pub fn kill_processes_using(dir: &Path) -> usize {
    let needle = dir.as_os_str().as_encoded_bytes();
    let own = std::process::id();
    let mut n = 0;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == own {
            continue;
        }
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if cmdline.windows(needle.len()).any(|w| w == needle) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            n += 1;
        }
    }
    n
}

/// Whether `pid` is a live process: it exists and is not a zombie. (A killed shim is not this
/// process's child; it stays a zombie until init reaps it.)
pub fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'))
    })
}

fn wait_gone(pid: u32, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while process_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ip<const N: usize>(args: [&str; N]) -> Result<(), String> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("run ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn iptables(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("iptables")
        .arg("-w")
        .arg("5")
        .args(args)
        .output()
        .map_err(|e| format!("run iptables {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The IPv4 address of the interface that carries the default route (eth0 here), or
/// `$GUILDNET_TESTBED_NODE_IP`. The kubelet refuses a loopback node IP, and this is also the
/// address at which pods reach servers on the host.
pub fn host_ip() -> Result<std::net::Ipv4Addr, String> {
    if let Some(v) = std::env::var_os("GUILDNET_TESTBED_NODE_IP").filter(|v| !v.is_empty()) {
        let s = v.to_string_lossy();
        return s
            .parse()
            .map_err(|e| format!("GUILDNET_TESTBED_NODE_IP={s}: {e}"));
    }
    let run = |args: &[&str]| -> Result<String, String> {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .map_err(|e| format!("run ip {}: {e}", args.join(" ")))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    // "default via 192.0.2.1 dev eth0 ..."
    let routes = run(&["-4", "-o", "route", "show", "default"])?;
    let dev = routes
        .split_whitespace()
        .skip_while(|w| *w != "dev")
        .nth(1)
        .ok_or_else(|| {
            "no IPv4 default route: set GUILDNET_TESTBED_NODE_IP to a non-loopback address of this machine".to_owned()
        })?
        .to_owned();
    // "4: eth0    inet 192.0.2.2/24 brd ... scope global eth0 ..."
    let addrs = run(&["-4", "-o", "addr", "show", "dev", &dev, "scope", "global"])?;
    addrs
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("no global IPv4 address on {dev}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape_mount_path("/a\\040b"), "/a b");
        assert_eq!(unescape_mount_path("/plain/path"), "/plain/path");
        assert_eq!(unescape_mount_path("/x\\134y"), "/x\\y");
    }
}
