//! Contexts with the real CLI against a real orchestrator (`guildnet up` on loopback):
//! `guildnet login` checks the token and writes the config file (0600), later commands use it
//! without any environment variable, and flags > env > context > state dir.

use std::os::unix::fs::PermissionsExt;
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

#[test]
fn login_writes_a_private_context_that_later_commands_use() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_guildnet");
    let server_state = dir.path().join("server-state");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let _up = Up(Command::new(bin)
        .args([
            "up",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--no-dashboard",
        ])
        .env("GUILDNET_STATE_DIR", &server_state)
        .env_remove("ORCHESTRATOR_TOKEN")
        .env_remove("GUILDNET_RUNNER")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap());
    let token_file = server_state.join("orchestrator.token");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(token_file.exists() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()) {
        assert!(Instant::now() < deadline, "guildnet up did not start");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The client side: its own (empty) state dir, a config file in a temp HOME, and none of
    // the variables that would name the orchestrator.
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let config = home.join(".config/guildnet/config.toml");
    let cli = |args: &[&str]| {
        let mut c = Command::new(bin);
        c.args(args)
            .env("HOME", &home)
            .env("GUILDNET_STATE_DIR", dir.path().join("client-state"))
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("GUILDNET_CONFIG")
            .env_remove("GUILDNET_CONTEXT")
            .env_remove("GUILDNET_URL")
            .env_remove("ORCHESTRATOR_TOKEN");
        c
    };
    let run = |args: &[&str]| cli(args).output().unwrap();

    // Before login: nothing says where the orchestrator is or what the token is.
    let o = run(&["tasks"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("guildnet login"), "{}", text(&o));

    // A wrong token is refused and nothing is written.
    let bad = dir.path().join("bad.token");
    std::fs::write(&bad, "gn_admin_wrong\n").unwrap();
    let o = run(&["login", &url, "--token-file", bad.to_str().unwrap()]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("refused the token"), "{}", text(&o));
    assert!(!config.exists());

    // The right one: saved with mode 0600 as the current context.
    let o = run(&[
        "login",
        &url,
        "--name",
        "local",
        "--token-file",
        token_file.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let mode = std::fs::metadata(&config).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the config file holds tokens");
    let saved = std::fs::read_to_string(&config).unwrap();
    assert!(saved.contains("current-context = \"local\""), "{saved}");
    assert!(saved.contains(&url), "{saved}");

    // Commands now work with no flag and no env var.
    let o = run(&["schedule", "from a context", "-f"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("from a context"));
    let o = run(&["tasks", "-o", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    let tasks: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(tasks.as_array().map(|a| a.len()), Some(1));

    // A second context (nothing listens there), added from stdin and made current.
    let mut child = cli(&[
        "context",
        "add",
        "dead",
        "--url",
        "http://127.0.0.1:9",
        "--token-stdin",
        "--use",
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"other-token\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let o = run(&["context", "list", "-o", "json"]);
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list.as_array().map(|a| a.len()), Some(2));
    assert_eq!(list[0]["name"], "dead");
    assert_eq!(list[0]["current"], true);
    assert!(!text(&o).contains("other-token"), "tokens are never listed");
    let o = run(&["context", "list"]);
    assert!(!text(&o).contains("other-token"));

    // The current context points at nothing: the error names it.
    let o = run(&["tasks"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("127.0.0.1:9"), "{}", text(&o));
    // --context beats the current context; GUILDNET_CONTEXT too.
    let o = run(&["tasks", "--context", "local"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = cli(&["tasks"])
        .env("GUILDNET_CONTEXT", "local")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    // The env URL beats the context; the dead context's token is not sent to it, so without
    // another token the CLI says so.
    let o = cli(&["tasks"]).env("GUILDNET_URL", &url).output().unwrap();
    assert!(!o.status.success());
    assert!(text(&o).contains("no admin token"), "{}", text(&o));
    // ... with the env token it works; a flag URL beats the env URL.
    let token = std::fs::read_to_string(&token_file).unwrap();
    let o = cli(&["tasks"])
        .env("GUILDNET_URL", "http://127.0.0.1:9")
        .env("ORCHESTRATOR_TOKEN", token.trim())
        .args(["--url", &url])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    // An unknown context is an error that lists the known ones.
    let o = run(&["tasks", "--context", "nope"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("dead, local"), "{}", text(&o));

    // Use and remove.
    let o = run(&["context", "use", "local"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = run(&["context", "remove", "dead"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = run(&["version", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["serverUrl"], url.as_str());
    assert_eq!(v["server"], env!("CARGO_PKG_VERSION"));

    // Readable views: AGE columns and the task view.
    let o = run(&["tasks"]);
    let table = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(table.lines().next().unwrap().contains("AGE"), "{table}");
    let id = tasks[0]["id"].as_str().unwrap();
    let o = run(&["task", id]);
    assert!(o.status.success(), "{}", text(&o));
    let view = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        view.contains("Status:    Succeeded (exit code 0)"),
        "{view}"
    );
    assert!(view.contains("    from a context"), "{view}");
    assert!(view.contains(&format!("guildnet logs {id}")), "{view}");
    let o = run(&["agents"]);
    let table = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        table.contains("LAST SEEN") && table.contains(" ago"),
        "{table}"
    );
}
