//! Retention and disk use with the real CLI and a real orchestrator (`guildnet up`, SQLite,
//! local backend): `guildnet disk` reports the state dir, database and workspaces; `guildnet
//! prune` removes finished tasks (logs, workspaces) but never unfinished ones; `guildnet up
//! --retention` removes them by itself.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Up(std::process::Child);

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

struct Server {
    _up: Up,
    url: String,
    state: std::path::PathBuf,
    config: std::path::PathBuf,
}

fn up(dir: &Path, name: &str, extra: &[&str]) -> Server {
    let bin = env!("CARGO_BIN_EXE_guildnet");
    let state = dir.join(name).join("state");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec![
        "up",
        "--listen",
        &listen,
        "--no-dashboard",
        "--runner",
        "sh -s",
    ];
    args.extend_from_slice(extra);
    let child = Command::new(bin)
        .args(&args)
        .env("GUILDNET_STATE_DIR", &state)
        .env_remove("ORCHESTRATOR_TOKEN")
        .env_remove("GUILDNET_RUNNER")
        .env_remove("GUILDNET_RETENTION")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let up = Up(child);
    let token = state.join("orchestrator.token");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(token.exists() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()) {
        assert!(Instant::now() < deadline, "guildnet up did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    Server {
        _up: up,
        url: format!("http://{listen}"),
        state: state.clone(),
        config: dir.join(name).join("absent-config.toml"),
    }
}

impl Server {
    fn cli(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_guildnet"))
            .args(args)
            .env("GUILDNET_STATE_DIR", &self.state)
            .env("GUILDNET_URL", &self.url)
            .env("GUILDNET_CONFIG", &self.config)
            .env_remove("ORCHESTRATOR_TOKEN")
            .env_remove("GUILDNET_CONTEXT")
            .output()
            .unwrap()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let o = self.cli(&a);
        assert!(o.status.success(), "{args:?}: {}", text(&o));
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)))
    }

    fn schedule(&self, script: &str, follow: bool) -> String {
        let mut args = vec!["schedule", script, "-o", "json"];
        if follow {
            args.push("-f");
        }
        let o = self.cli(&args);
        assert!(o.status.success(), "{}", text(&o));
        if !follow {
            let t: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            return t["id"].as_str().unwrap().to_owned();
        }
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        err.split_whitespace()
            .skip_while(|w| *w != "task")
            .nth(1)
            .unwrap_or_else(|| panic!("no task id in {err}"))
            .to_owned()
    }
}

#[test]
fn prune_and_disk_use() {
    let dir = tempfile::tempdir().unwrap();
    let s = up(dir.path(), "manual", &[]);
    let a = s.schedule("echo one; head -c 100000 /dev/zero > blob", true);
    let b = s.schedule("echo two", true);
    let running = s.schedule("sleep 30", false);
    let d = s.json(&["disk"]);
    // Next to the state dir, or under /var/lib/guildnet when agents run as another user.
    let workspaces = std::path::PathBuf::from(d["workspacesDir"].as_str().unwrap());
    assert!(
        workspaces.join(&a).is_dir(),
        "the local backend keeps a workspace per task"
    );
    assert!(d["stateDirBytes"].as_u64().unwrap() > 0, "{d}");
    assert!(d["databaseBytes"].as_u64().unwrap() > 0, "{d}");
    assert!(d["workspacesBytes"].as_u64().unwrap() >= 100_000, "{d}");
    assert!(d["workspaces"].as_u64().unwrap() >= 3, "{d}");
    assert_eq!(d["retentionSecs"], serde_json::Value::Null);
    let o = s.cli(&["disk"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("retention:  off"),
        "{}",
        text(&o)
    );

    // Nothing finished an hour ago.
    let r = s.json(&["prune", "--older-than", "1h"]);
    assert_eq!(r["tasks"], 0, "{r}");
    // Everything finished: both finished tasks go, the running one stays.
    std::thread::sleep(Duration::from_millis(1100));
    let r = s.json(&["prune", "--older-than", "1s"]);
    assert_eq!(r["tasks"], 2, "{r}");
    assert_eq!(r["workspaces"], 2, "{r}");
    assert!(r["workspaceBytes"].as_u64().unwrap() >= 100_000, "{r}");
    let tasks = s.json(&["tasks"]);
    let ids: Vec<&str> = tasks
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![running.as_str()]);
    assert!(!workspaces.join(&a).exists() && !workspaces.join(&b).exists());
    assert!(workspaces.join(&running).exists());
    let o = s.cli(&["logs", &a]);
    assert!(!o.status.success());
    assert!(text(&o).contains("not found"), "{}", text(&o));
    // Bad input: a clear error, before any request.
    let o = s.cli(&["prune", "--older-than", "3y"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("unknown unit"), "{}", text(&o));
    s.cli(&["cancel", &running]);
}

#[test]
fn up_with_retention_removes_finished_tasks_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let s = up(dir.path(), "auto", &["--retention", "2s"]);
    let id = s.schedule("echo soon gone", true);
    let d = s.json(&["disk"]);
    assert_eq!(d["retentionSecs"], 2);
    let workspace = Path::new(d["workspacesDir"].as_str().unwrap()).join(&id);
    assert!(workspace.is_dir());
    // The row goes first, then the workspace (in the same pass).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = s.cli(&["task", &id]);
        if !o.status.success() && !workspace.exists() {
            assert!(text(&o).contains("not found"), "{}", text(&o));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "task {id} still there: {}",
            text(&o)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}
