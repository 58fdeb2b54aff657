//! What Linux's `/proc` says about processes and their listening sockets: the fields of
//! `/proc/<pid>/stat` that process bookkeeping needs, a process's tree, and whether a set of
//! processes holds the listening socket of a TCP port.
//!
//! The last one is how a supervisor knows that the server answering on a port is the one it
//! started: a port picked free a moment before the server binds it can be taken by another
//! process in between (another agent's runner, say); the server then fails to bind, and a
//! readiness probe of the port gets the other process's answer. The agent's editor supervisor
//! and the testbed's servers take an answer only from the process tree that holds the socket.

/// The fields of `/proc/<pid>/stat` used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// State (`R`, `S`, `Z`...).
    pub state: char,
    /// Parent process id.
    pub ppid: u32,
    /// Process group id.
    pub pgid: u32,
    /// Session id.
    pub session: u32,
    /// Start time, in clock ticks after boot: with the pid, names one process (pids are
    /// reused).
    pub start_time: u64,
}

/// `/proc/<pid>/stat` of `pid`, or `None` when it is gone or unreadable.
pub fn stat(pid: u32) -> Option<Stat> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: the fields follow the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    let ppid = f.next()?.parse().ok()?;
    let pgid = f.next()?.parse().ok()?;
    let session = f.next()?.parse().ok()?;
    // Fields 7-21 of the file (the 4th to 18th after the session), then the start time.
    let start_time = f.nth(15)?.parse().ok()?;
    Some(Stat {
        state,
        ppid,
        pgid,
        session,
        start_time,
    })
}

/// Every process id in `/proc` with its stat (processes that go away meanwhile are skipped).
pub fn all() -> Vec<(u32, Stat)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, stat(pid)?)))
        .collect()
}

/// `pid` and all its descendants (children, their children...), as `/proc` shows them now.
pub fn tree(pid: u32) -> Vec<u32> {
    tree_in(&all(), pid)
}

/// `pid` and all its descendants among `procs` (one scan of [`all`], for callers that
/// also look at other fields of the same processes).
pub fn tree_in(procs: &[(u32, Stat)], pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(
            procs
                .iter()
                .filter(|(p, s)| s.ppid == parent && *p != parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    out
}

/// The inodes of the listening TCP sockets (IPv4 and IPv6, any address) on `port`, sorted,
/// from `/proc/net/tcp` and `/proc/net/tcp6`; `None` when neither table is readable. Reading
/// them costs two small files: a caller that verified once who holds these sockets can tell
/// from this alone that nothing changed since.
pub fn listeners(port: u16) -> Option<Vec<u64>> {
    let mut tables = 0;
    let mut inodes = Vec::new();
    for path in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(table) = std::fs::read_to_string(path) else {
            continue;
        };
        tables += 1;
        // sl local_address rem_address st ... inode: LISTEN is state 0A.
        for l in table.lines().skip(1) {
            let f: Vec<&str> = l.split_whitespace().collect();
            let held = f
                .get(1)
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                == Some(port)
                && f.get(3) == Some(&"0A");
            if let (true, Some(inode)) = (held, f.get(9).and_then(|i| i.parse().ok())) {
                inodes.push(inode);
            }
        }
    }
    inodes.sort_unstable();
    (tables > 0).then_some(inodes)
}

/// A socket found open in a process: which file descriptor of which process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    /// The socket's inode.
    pub inode: u64,
    /// The process.
    pub pid: u32,
    /// The file descriptor.
    pub fd: u32,
}

impl Holder {
    /// Whether the process still has the socket open under that descriptor (one `readlink`):
    /// a listening socket open in its process is still bound to its port.
    pub fn still_holds(&self) -> bool {
        std::fs::read_link(format!("/proc/{}/fd/{}", self.pid, self.fd))
            .is_ok_and(|t| t.as_os_str() == format!("socket:[{}]", self.inode).as_str())
    }
}

/// Which of `inodes` (sockets) one of `pids` holds open, and where; `None` when none of the
/// processes' file tables is readable (another user's process, a restrictive `/proc` mount).
/// A process that is gone holds nothing.
pub fn holders(pids: &[u32], inodes: &[u64]) -> Option<Vec<Holder>> {
    let mut readable = false;
    let mut found: Vec<Holder> = Vec::new();
    for pid in pids {
        let fds = match std::fs::read_dir(format!("/proc/{pid}/fd")) {
            Ok(fds) => fds,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                readable = true;
                continue;
            }
            Err(_) => continue,
        };
        readable = true;
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let inode = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok());
            let fd_no = fd.file_name().to_str().and_then(|n| n.parse::<u32>().ok());
            if let (Some(inode), Some(fd)) = (inode, fd_no) {
                if inodes.contains(&inode) && !found.iter().any(|h| h.inode == inode) {
                    found.push(Holder {
                        inode,
                        pid: *pid,
                        fd,
                    });
                }
            }
        }
    }
    readable.then_some(found)
}

/// Whether one of `pids` holds a listening TCP socket (IPv4 or IPv6, any address) on `port`:
/// the socket's inode ([`listeners`]) among the open files of the processes. `None` when that
/// cannot be told (no `/proc/net/tcp`, or none of the processes' file tables is readable).
pub fn listens_on(pids: &[u32], port: u16) -> Option<bool> {
    let inodes = listeners(port)?;
    if inodes.is_empty() {
        // A port nobody listens on is not held, whoever asks.
        return Some(false);
    }
    holders(pids, &inodes).map(|h| !h.is_empty())
}

/// Whether `pids` hold every listening socket of `port` (`inodes`, from [`listeners`]), so
/// that a connection to the port can only reach them; `Some(false)` also when nobody listens.
/// `None` when it cannot be told.
pub fn hold_all(pids: &[u32], inodes: &[u64]) -> Option<bool> {
    if inodes.is_empty() {
        return Some(false);
    }
    holders(pids, inodes).map(|h| h.len() == inodes.len())
}

/// A process (python3) listening on `host`:`port`, returned once it listens (for tests of
/// who holds a port).
#[cfg(test)]
pub(crate) fn listener_process(host: &str, port: u16) -> std::process::Child {
    let mut child = std::process::Command::new("python3")
        .args([
            "-c",
            "import socket,sys,time\n\
             h=sys.argv[1]\n\
             s=socket.socket(socket.AF_INET6 if ':' in h else socket.AF_INET)\n\
             s.bind((h, int(sys.argv[2])))\n\
             s.listen()\n\
             print('ok', flush=True)\n\
             time.sleep(60)",
            host,
            &port.to_string(),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 for a listener process");
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line);
    }
    assert_eq!(line.trim(), "ok", "a listener on {host}:{port}");
    child
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_found_holding_its_listener_and_not_another_port() {
        let me = std::process::id();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert_eq!(listens_on(&[me], port), Some(true));
        let l6 = std::net::TcpListener::bind("[::1]:0");
        if let Ok(l6) = l6 {
            let p6 = l6.local_addr().unwrap().port();
            assert_eq!(listens_on(&[me], p6), Some(true));
        }
        drop(l);
        assert_eq!(listens_on(&[me], port), Some(false));
        // A connected (not listening) socket does not count.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let _c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        assert_eq!(listens_on(&[child.id()], port), Some(false));
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn every_listener_of_a_port_must_be_held() {
        let me = std::process::id();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let inodes = listeners(port).unwrap();
        assert_eq!(inodes.len(), 1);
        assert_eq!(hold_all(&[me], &inodes), Some(true));
        // A second listener on the same port (IPv6 loopback) held by another process.
        let mut child = listener_process("::1", port);
        let both = listeners(port).unwrap();
        assert_eq!(both.len(), 2);
        assert_eq!(listens_on(&[me], port), Some(true));
        assert_eq!(hold_all(&[me], &both), Some(false));
        assert_eq!(hold_all(&[me, child.id()], &both), Some(true));
        let found = holders(&[me, child.id()], &both).unwrap();
        assert_eq!(found.len(), 2);
        assert!(found.iter().all(Holder::still_holds));
        let _ = child.kill();
        let _ = child.wait();
        let theirs = found.iter().find(|h| h.pid == child.id()).unwrap();
        assert!(!theirs.still_holds(), "a process that ended holds nothing");
        let mine = found.iter().find(|h| h.pid == me).unwrap();
        assert!(mine.still_holds());
        drop(l);
        assert!(!mine.still_holds(), "a closed listener is not held");
        assert_eq!(listeners(port).map(|i| i.is_empty()), Some(true));
        assert_eq!(hold_all(&[me], &[]), Some(false));
    }

    #[test]
    fn a_tree_holds_its_children() {
        let me = std::process::id();
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let t = tree(me);
        assert_eq!(t[0], me);
        assert!(t.contains(&child.id()));
        assert_eq!(stat(child.id()).map(|s| s.ppid), Some(me));
        let (mine, its) = (stat(me).unwrap(), stat(child.id()).unwrap());
        assert!(its.start_time >= mine.start_time && mine.start_time > 0);
        assert!(!tree(child.id()).contains(&me));
        let _ = child.kill();
        let _ = child.wait();
    }
}
