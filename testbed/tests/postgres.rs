//! The testbed's PostgreSQL: starts as an unprivileged user, takes SQL over TCP with the
//! password in its URL, refuses a wrong password, and is gone (process and dir) after drop.

use guildnet_testbed::postgres::{Postgres, OS_USER};

#[tokio::test]
async fn postgres_starts_as_a_non_root_user_serves_sql_and_cleans_up() {
    let pg = Postgres::start().await.expect("start postgres");
    let url = pg
        .create_database("probe_db")
        .await
        .expect("create database");
    assert!(url.starts_with("postgres://guildnet:"), "{url}");
    assert!(
        url.ends_with(&format!("@127.0.0.1:{}/probe_db", pg.port())),
        "{url}"
    );

    let out = pg
        .psql(
            "probe_db",
            "SELECT current_database() || ' ' || (2 + 3)::text",
        )
        .await
        .expect("query");
    assert_eq!(out.trim(), "probe_db 5");

    // The server process is not root when the test is.
    let pid = pg.pid().expect("pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let uid: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .expect("uid");
    if nix::unistd::geteuid().is_root() {
        let (want, _) = pg.os_user().expect("runs as another user when root");
        assert_eq!(uid, want, "server runs as {OS_USER}");
        assert_ne!(uid, 0);
    }

    // Password authentication is on: a wrong password is refused.
    let psql = guildnet_testbed::bin("psql").expect("psql");
    let port = pg.port().to_string();
    let wrong = guildnet_testbed::process::run(
        &psql,
        [
            "-X",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "guildnet",
            "-d",
            "probe_db",
            "-c",
            "SELECT 1",
        ],
        &[("PGPASSWORD", std::ffi::OsStr::new("not-the-password"))],
    )
    .await;
    let err = wrong.expect_err("a wrong password must fail").to_string();
    assert!(err.contains("password authentication failed"), "{err}");

    let dir = pg.dir().to_owned();
    assert!(dir.join("data/PG_VERSION").exists());
    drop(pg);
    assert!(!dir.exists(), "temp dir removed");
    let gone = !std::path::Path::new(&format!("/proc/{pid}")).exists()
        || std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true);
    assert!(gone, "server process {pid} stopped");
}
