//! The CLI's repository options with the real binary: `guildnet up --runner-preset script`, then
//! `guildnet schedule --repo URL@REF --file PATH=DEST --file PATH --follow`; the agent clones
//! the repository, writes the files and the runner reads them. A URL with credentials is
//! refused naming `repo.url`, and an unknown preset stops `guildnet up` with the list.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Up(std::process::Child);

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args(["-c", "user.name=T", "-c", "user.email=t@example.invalid"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn schedule_with_repo_ref_and_files() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_guildnet");
    let state = dir.path().join("state");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let cli = |args: &[&str]| {
        let mut c = Command::new(bin);
        c.args(args)
            .current_dir(dir.path())
            .env("GUILDNET_STATE_DIR", &state)
            .env("GUILDNET_URL", &url)
            .env("GUILDNET_AGENT_BIN", env!("CARGO_BIN_EXE_guildnet-agent"))
            // The `file://` remote is the test user's; as `nobody` git would refuse it.
            .env(guildnet_core::agent_user::AGENT_USER_ENV, "current")
            .env_remove("ORCHESTRATOR_TOKEN")
            .env_remove("GUILDNET_RUNNER");
        c
    };

    // An unknown preset: `up` refuses to start and lists the presets.
    let out = cli(&["up", "--no-dashboard", "--runner-preset", "nope"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown runner preset") && err.contains("aider"),
        "{err}"
    );

    let _up = Up(cli(&[
        "up",
        "--no-dashboard",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--runner-preset",
        "script",
    ])
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

    // A repository with `main` and a `feature` branch.
    let bare = dir.path().join("app.git");
    let seed = dir.path().join("seed");
    std::fs::create_dir_all(&bare).unwrap();
    std::fs::create_dir_all(&seed).unwrap();
    git(&bare, &["init", "-q", "--bare", "-b", "main"]);
    git(&seed, &["init", "-q", "-b", "main"]);
    std::fs::write(seed.join("README.md"), "on main\n").unwrap();
    git(&seed, &["add", "README.md"]);
    git(&seed, &["commit", "-q", "-m", "main"]);
    git(&seed, &["checkout", "-q", "-b", "feature"]);
    std::fs::write(seed.join("README.md"), "on feature\n").unwrap();
    git(&seed, &["commit", "-q", "-am", "feature"]);
    git(
        &seed,
        &["push", "-q", bare.to_str().unwrap(), "main", "feature"],
    );
    std::fs::write(dir.path().join("notes.md"), "a note\n").unwrap();
    std::fs::write(dir.path().join("plan.txt"), "a plan\n").unwrap();

    let repo = format!("file://{}@feature", bare.display());
    let out = cli(&[
        "schedule",
        "--repo",
        &repo,
        "--file",
        "notes.md=docs/notes.md",
        "--file",
        "plan.txt",
        "--task",
        ": read\ncat README.md docs/notes.md plan.txt\n",
        "--follow",
    ])
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|l| !l.starts_with("[agent]"))
        .collect();
    assert_eq!(lines, ["on feature", "a note", "a plan"], "{stdout}");

    let out = cli(&["tasks", "--json"]).output().unwrap();
    let tasks: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ctx = &tasks[0]["context"];
    assert_eq!(ctx["repo"]["ref"], "feature", "{ctx}");
    assert_eq!(ctx["repo"]["url"], format!("file://{}", bare.display()));
    assert_eq!(ctx["files"][0]["path"], "docs/notes.md");
    assert_eq!(ctx["files"][1]["path"], "plan.txt");

    // Credentials in the URL are refused, naming the field, and not echoed.
    let out = cli(&[
        "schedule",
        "--repo",
        "https://bot:ghp_cliSecret99@forge.example/a/b.git",
        "--task",
        "x",
    ])
    .output()
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("repo.url"), "{err}");
    assert!(!err.contains("ghp_cliSecret99"), "{err}");
    // A missing local file is reported before anything is scheduled.
    let out = cli(&["schedule", "--file", "missing.txt", "--task", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.txt"));
}
