//! The README quickstart with the real CLI: `guildnet up` (alone, without a `guildnet-agent` next
//! to it, as after `cargo run --bin guildnet`), then `guildnet schedule --follow` and
//! `guildnet tasks --json`, with the admin token generated into the state dir.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Up(std::process::Child);

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn quickstart_with_the_cli_alone() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("guildnet");
    std::fs::copy(env!("CARGO_BIN_EXE_guildnet"), &bin).unwrap();
    let state = dir.path().join("state");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let cli = |args: &[&str]| {
        let mut c = Command::new(&bin);
        c.args(args)
            .env("GUILDNET_STATE_DIR", &state)
            .env("GUILDNET_URL", &url)
            .env_remove("ORCHESTRATOR_TOKEN")
            .env_remove("GUILDNET_CONTEXT")
            .env("GUILDNET_CONFIG", dir.path().join("absent-config.toml"))
            .env_remove("GUILDNET_RUNNER");
        c
    };
    let _up = Up(cli(&["up", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap());

    let token_file = state.join("orchestrator.token");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(token_file.exists() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()) {
        assert!(Instant::now() < deadline, "guildnet up did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "token file must be private");

    let out = cli(&["schedule", "--task", "hello from the README", "--follow"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schedule failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The default runner echoes the task.
    assert!(
        stdout.lines().any(|l| l == "hello from the README"),
        "{stdout}"
    );

    let out = cli(&["tasks", "--json"]).output().unwrap();
    assert!(out.status.success());
    let tasks: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(tasks.as_array().map(|a| a.len()), Some(1));
    assert_eq!(tasks[0]["status"], "Succeeded");
    assert_eq!(tasks[0]["org"], "default");

    // The task text can be positional; statuses are accepted in any case.
    let out = cli(&["schedule", "second, positional", "-f"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["tasks", "--status", "succeeded", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tasks: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(tasks.as_array().map(|a| a.len()), Some(2));
    let out = cli(&["tasks", "-o", "yaml"]).output().unwrap();
    assert!(out.status.success());
    let yaml = String::from_utf8_lossy(&out.stdout);
    assert!(yaml.contains("status: Succeeded"), "{yaml}");
    let out = cli(&["version", "-o", "json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["client"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["server"], env!("CARGO_PKG_VERSION"));
    let out = cli(&["completion", "bash"]).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("_guildnet()"));
    let out = cli(&["--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("Examples:"));
    // JSON logs on request (one object per line); no colour codes when stderr is a pipe.
    let mut json_up = Up(Command::new(&bin)
        .args(["up", "--listen", "127.0.0.1:0", "--no-dashboard"])
        .env("GUILDNET_STATE_DIR", dir.path().join("json-logs"))
        .env("GUILDNET_LOG_FORMAT", "json")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap());
    let stderr = json_up.0.stderr.take().unwrap();
    let line = std::io::BufRead::lines(std::io::BufReader::new(stderr))
        .map_while(Result::ok)
        .find(|l| l.contains("orchestrator listening"))
        .expect("a log line");
    assert!(!line.contains('\u{1b}'), "{line}");
    let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(v["level"], "INFO", "{line}");
    drop(json_up);
    // An unregistered org names the command that creates it.
    let out = cli(&["schedule", "--org", "nowhere", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("guildnet org create"), "{err}");

    // A bad org is refused with a clear message and a non-zero exit.
    let out = cli(&["schedule", "--org", "Bad_Org", "--task", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("org"));

    // Without a token the CLI says how to get one.
    let out = Command::new(&bin)
        .args(["tasks"])
        .env("GUILDNET_STATE_DIR", dir.path().join("elsewhere"))
        .env("GUILDNET_URL", &url)
        .env_remove("ORCHESTRATOR_TOKEN")
        .env_remove("GUILDNET_CONTEXT")
        .env("GUILDNET_CONFIG", dir.path().join("absent-config.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ORCHESTRATOR_TOKEN"));

    // With no orchestrator there, the CLI says why and what to do.
    let out = Command::new(&bin)
        .args(["tasks", "--url", "http://127.0.0.1:9", "--token", "x"])
        .env_remove("ORCHESTRATOR_TOKEN")
        .env_remove("GUILDNET_CONTEXT")
        .env("GUILDNET_CONFIG", dir.path().join("absent-config.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Connection refused") && err.contains("guildnet up"),
        "{err}"
    );
}
