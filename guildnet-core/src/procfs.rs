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
    Some(Stat {
        state,
        ppid,
        pgid,
        session,
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

/// Whether one of `pids` holds a listening TCP socket (IPv4 or IPv6, any address) on `port`:
/// the socket's inode, from `/proc/net/tcp` and `/proc/net/tcp6`, among the open files of the
/// process. `None` when that cannot be told (no `/proc/net/tcp`, or none of the processes'
/// file tables is readable: another user's process, a restrictive `/proc` mount).
pub fn listens_on(pids: &[u32], port: u16) -> Option<bool> {
    let mut tables = 0;
    // sl local_address rem_address st ... inode: LISTEN is state 0A.
    let mut inodes = Vec::new();
    for path in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(table) = std::fs::read_to_string(path) else {
            continue;
        };
        tables += 1;
        for l in table.lines().skip(1) {
            let f: Vec<&str> = l.split_whitespace().collect();
            let held = f
                .get(1)
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                == Some(port)
                && f.get(3) == Some(&"0A");
            if let (true, Some(inode)) = (held, f.get(9)) {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    if tables == 0 {
        return None;
    }
    let mut readable = false;
    for pid in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        readable = true;
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
        });
        if holds {
            return Some(true);
        }
    }
    // A port nobody listens on is not held, whoever asks.
    (readable || inodes.is_empty()).then_some(false)
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
        assert!(!tree(child.id()).contains(&me));
        let _ = child.kill();
        let _ = child.wait();
    }
}
