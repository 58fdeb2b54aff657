//! PostgreSQL from Debian's packages, on loopback, for the PostgreSQL state store's tests.
//!
//! [`Postgres::start`] runs `initdb` in a temp dir (superuser [`SUPERUSER`] with a random
//! password, SCRAM authentication on TCP, UTF-8, C locale), starts `postgres` on a free
//! loopback port with its Unix socket in the same temp dir, waits until `pg_isready` says it
//! accepts connections, and stops it (SIGINT, PostgreSQL's fast shutdown, then SIGKILL) and removes the temp dir on drop. Databases are made with
//! [`Postgres::create_database`], which returns a `postgres://` URL with the password.
//!
//! PostgreSQL refuses to run as root, and tests run as root on the CI machine: as root, the
//! server and `initdb` run as the system user [`OS_USER`] (created with `useradd --system` when
//! missing), through `setpriv` (which execs, so the server is the process this handle stops);
//! the temp dir belongs to that user. As any other user they run as that user.
//!
//! [`Postgres::shared`] is one server per test process (a database per test keeps tests apart):
//! a watchdog shell stops it and removes its dir when the test process is gone, since statics
//! are never dropped.
//!
//! Binaries: `bin/{initdb,postgres,pg_isready,psql}` from `scripts/testbed/install.sh postgres`.

use crate::process::{run, Proc};
use crate::{bin, free_port, wait_for, Result, TestbedError};
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// The system user the server runs as when the tests run as root.
pub const OS_USER: &str = "guildnet-pg";

/// The database superuser `initdb` creates.
pub const SUPERUSER: &str = "guildnet";

/// Environment variable with extra server settings, `name=value` separated by whitespace,
/// each passed as `-c name=value` (for profiling: `shared_preload_libraries=pg_stat_statements
/// log_min_duration_statement=50`). Unset: none.
pub const EXTRA_SETTINGS_ENV: &str = "GUILDNET_TESTBED_POSTGRES_SETTINGS";

/// How long the server may take to accept connections after start.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running PostgreSQL server. Dropping it stops the server and removes its temp dir.
#[derive(Debug)]
pub struct Postgres {
    proc: Option<Proc>,
    dir: Option<tempfile::TempDir>,
    port: u16,
    password: String,
    /// `(uid, gid)` the server runs as, when not the current user.
    run_as: Option<(u32, u32)>,
    /// With TLS: the CA certificate (PEM) that signed the server's certificate.
    tls_ca: Option<PathBuf>,
}

static SHARED: Mutex<Option<&'static Postgres>> = Mutex::new(None);

impl Postgres {
    /// Initialises a cluster in a temp dir and starts it on a free loopback port.
    pub async fn start() -> Result<Postgres> {
        Self::start_inner(false).await
    }

    /// Like [`Postgres::start`], with TLS on (`ssl=on`): a fresh self-signed CA signs the
    /// server's certificate for `127.0.0.1` and `localhost` (made with `openssl`);
    /// [`Postgres::tls_ca`] is the CA's PEM file, for `sslrootcert`. Plain connections are
    /// still accepted (what `sslmode` a client uses is the client's choice).
    pub async fn start_with_tls() -> Result<Postgres> {
        Self::start_inner(true).await
    }

    async fn start_inner(tls: bool) -> Result<Postgres> {
        let run_as = if nix::unistd::geteuid().is_root() {
            Some(
                tokio::task::spawn_blocking(ensure_os_user)
                    .await
                    .map_err(|e| {
                        TestbedError::Unexpected(format!("postgres: user setup task failed: {e}"))
                    })??,
            )
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("guildnet-pg-")
            .tempdir()
            .map_err(TestbedError::io("postgres temp dir"))?;
        let data = dir.path().join("data");
        let pwfile = dir.path().join("pwfile");
        let password = random_password();
        std::fs::write(&pwfile, &password).map_err(TestbedError::io("write postgres pwfile"))?;
        std::fs::set_permissions(&pwfile, std::fs::Permissions::from_mode(0o600))
            .map_err(TestbedError::io("chmod postgres pwfile"))?;
        if let Some((uid, gid)) = run_as {
            for p in [dir.path(), pwfile.as_path()] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid)).map_err(TestbedError::io(
                    format!("chown {} to {OS_USER}", p.display()),
                ))?;
            }
        }

        let initdb = server_bin("initdb")?;
        let (prog, args) = as_user(
            run_as,
            &initdb,
            [
                OsStr::new("-D"),
                data.as_os_str(),
                OsStr::new("-U"),
                OsStr::new(SUPERUSER),
                OsStr::new("--pwfile"),
                pwfile.as_os_str(),
                OsStr::new("--auth-host=scram-sha-256"),
                OsStr::new("--auth-local=scram-sha-256"),
                OsStr::new("--encoding=UTF8"),
                OsStr::new("--locale=C"),
                OsStr::new("--no-sync"),
            ],
        );
        run(&prog, &args, &[("LC_ALL", OsStr::new("C"))]).await?;
        let _ = std::fs::remove_file(&pwfile);

        let tls_ca = if tls {
            Some(make_certs(dir.path(), run_as).await?)
        } else {
            None
        };
        let port = free_port()?;
        let proc = spawn_server(run_as, dir.path(), port, tls).await?;
        tracing::debug!(port, dir = %dir.path().display(), "testbed postgres ready");
        Ok(Postgres {
            proc: Some(proc),
            dir: Some(dir),
            port,
            password,
            run_as,
            tls_ca,
        })
    }

    /// Starts the server again after [`Postgres::stop`] or [`Postgres::kill`], on the same
    /// port and data (a restart: what it committed is still there).
    pub async fn start_again(&mut self) -> Result<()> {
        if self.proc.is_some() {
            return Ok(());
        }
        let dir = self.dir().to_owned();
        self.proc = Some(spawn_server(self.run_as, &dir, self.port, self.tls_ca.is_some()).await?);
        Ok(())
    }

    /// One server for the whole test process, started on first use (see the module docs).
    pub async fn shared() -> Result<&'static Postgres> {
        if let Some(pg) = *SHARED.lock().unwrap_or_else(|e| e.into_inner()) {
            return Ok(pg);
        }
        // Started outside the lock (which is not held across an await); a concurrent first
        // use may start a second server, which is then stopped again.
        let pg = Postgres::start().await?;
        let mut guard = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = *guard {
            return Ok(existing);
        }
        pg.watch_process_exit()?;
        let pg: &'static Postgres = Box::leak(Box::new(pg));
        *guard = Some(pg);
        Ok(pg)
    }

    /// Starts a watchdog (in a session of its own, so it outlives this process) that stops the
    /// server and removes its temp dir once this process has exited.
    fn watch_process_exit(&self) -> Result<()> {
        let (Some(proc), Some(dir)) = (&self.proc, &self.dir) else {
            return Ok(());
        };
        // SIGINT: PostgreSQL's fast shutdown; then SIGKILL to the group after 10 s.
        let script = "while kill -0 \"$1\" 2>/dev/null; do sleep 1; done; \
             kill -INT -\"$2\" 2>/dev/null; \
             i=0; while kill -0 \"$2\" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.2; i=$((i+1)); done; \
             kill -KILL -\"$2\" 2>/dev/null; rm -rf -- \"$3\"";
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(script)
            .arg("guildnet-pg-watchdog")
            .arg(std::process::id().to_string())
            .arg(proc.pid().to_string())
            .arg(dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        crate::process::in_new_session(&mut cmd);
        cmd.spawn()
            .map_err(TestbedError::io("start the postgres watchdog"))?;
        Ok(())
    }

    /// The CA certificate (PEM) of a server started with [`Postgres::start_with_tls`].
    pub fn tls_ca(&self) -> Option<&Path> {
        self.tls_ca.as_deref()
    }

    /// The server's TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser's password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The server's temp dir (data dir, socket, log).
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .map_or(Path::new("/nonexistent"), |d| d.path())
    }

    /// The server log.
    pub fn log_path(&self) -> PathBuf {
        self.dir().join("postgres.log")
    }

    /// The user the server runs as (`None`: the current user).
    pub fn os_user(&self) -> Option<(u32, u32)> {
        self.run_as
    }

    /// The server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    /// `postgres://guildnet:<password>@127.0.0.1:<port>/<database>`.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{}/{database}",
            self.password, self.port
        )
    }

    /// Creates database `name` (letters, digits and `_` only) and returns its URL.
    pub async fn create_database(&self, name: &str) -> Result<String> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(TestbedError::Unexpected(format!(
                "postgres: database name {name:?} must be letters, digits and _"
            )));
        }
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""))
            .await?;
        Ok(self.url(name))
    }

    /// Creates a database with a fresh unique name and returns its URL.
    pub async fn fresh_database(&self) -> Result<String> {
        let name = format!("t_{}", random_password().to_ascii_lowercase());
        self.create_database(&name).await
    }

    /// Runs one SQL command with `psql` in `database`; returns its output (unaligned, tuples
    /// only).
    pub async fn psql(&self, database: &str, sql: &str) -> Result<String> {
        let psql = bin("psql")?;
        let port = self.port.to_string();
        run(
            &psql,
            [
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                SUPERUSER,
                "-d",
                database,
                "-c",
                sql,
            ],
            &[("PGPASSWORD", OsStr::new(&self.password))],
        )
        .await
    }

    /// Stops the server (SIGINT, PostgreSQL's fast shutdown; SIGKILL after 10 s); the temp dir
    /// stays until drop.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            // SIGINT is PostgreSQL's "fast" shutdown (SIGTERM, "smart", waits for every client
            // to disconnect, and a test's pool may still be open).
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(p.pid() as i32),
                nix::sys::signal::Signal::SIGINT,
            );
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while p.ensure_running().is_ok() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            p.stop();
        }
    }

    /// Kills the server with SIGKILL (a crash: no shutdown checkpoint).
    pub fn kill(&mut self) {
        if let Some(p) = self.proc.take() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(p.pid() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            drop(p);
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
        if let Some(d) = self.dir.take() {
            // Files the server wrote belong to its user; root removes them anyway.
            let _ = d.close();
        }
    }
}

/// Starts `postgres` on `port` with the data in `dir/data` and its socket in `dir`, and waits
/// until it accepts connections.
async fn spawn_server(
    run_as: Option<(u32, u32)>,
    dir: &Path,
    port: u16,
    tls: bool,
) -> Result<Proc> {
    let data = dir.join("data");
    let postgres = server_bin("postgres")?;
    let port_s = port.to_string();
    let cert = format!("ssl_cert_file={}", dir.join("server.crt").display());
    let key = format!("ssl_key_file={}", dir.join("server.key").display());
    let tls_args: Vec<&OsStr> = if tls {
        vec![
            OsStr::new("-c"),
            OsStr::new("ssl=on"),
            OsStr::new("-c"),
            OsStr::new(&cert),
            OsStr::new("-c"),
            OsStr::new(&key),
        ]
    } else {
        Vec::new()
    };
    // Extra settings for profiling (e.g. `shared_preload_libraries=pg_stat_statements`),
    // from the environment: see [`EXTRA_SETTINGS_ENV`].
    let extra: Vec<String> = std::env::var(EXTRA_SETTINGS_ENV)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let extra_args: Vec<&OsStr> = extra
        .iter()
        .flat_map(|kv| [OsStr::new("-c"), OsStr::new(kv.as_str())])
        .collect();
    let (prog, args) = as_user(
        run_as,
        &postgres,
        [
            OsStr::new("-D"),
            data.as_os_str(),
            OsStr::new("-p"),
            OsStr::new(&port_s),
            OsStr::new("-k"),
            dir.as_os_str(),
            OsStr::new("-c"),
            OsStr::new("listen_addresses=127.0.0.1"),
            OsStr::new("-c"),
            OsStr::new("max_connections=300"),
        ]
        .into_iter()
        .chain(tls_args)
        .chain(extra_args),
    );
    // Written by this process (as root), so the server's user need not own it; a restart
    // starts it anew.
    let log = dir.join("postgres.log");
    let mut proc = Proc::spawn(
        "postgres",
        &prog,
        &args,
        &[("LC_ALL", OsStr::new("C"))],
        &log,
    )?
    .with_stop_timeout(Duration::from_secs(10))
    .listening_on(port);
    let pg_isready = bin("pg_isready")?;
    wait_for(
        &format!("postgres on 127.0.0.1:{port} to accept connections"),
        START_TIMEOUT,
        Some(&mut proc),
        || {
            let pg_isready = pg_isready.clone();
            let port_s = port_s.clone();
            async move {
                run(
                    &pg_isready,
                    [
                        "-h",
                        "127.0.0.1",
                        "-p",
                        &port_s,
                        "-U",
                        SUPERUSER,
                        "-d",
                        "postgres",
                    ],
                    &[],
                )
                .await
                .ok()
            }
        },
    )
    .await?;
    Ok(proc)
}

/// Makes a CA and a server certificate for 127.0.0.1/localhost in `dir` with `openssl`
/// (`server.key` belongs to the server's user, mode 0600, as PostgreSQL demands); returns the
/// CA certificate's path.
async fn make_certs(dir: &Path, run_as: Option<(u32, u32)>) -> Result<PathBuf> {
    let openssl = Path::new("openssl");
    let p = |f: &str| dir.join(f).display().to_string();
    let ext = dir.join("server.ext");
    std::fs::write(&ext, "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        .map_err(TestbedError::io("write server.ext"))?;
    run(
        openssl,
        [
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=guildnet-testbed-postgres-ca",
            "-keyout",
            &p("ca.key"),
            "-out",
            &p("ca.crt"),
        ],
        &[],
    )
    .await?;
    run(
        openssl,
        [
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            &p("server.key"),
            "-out",
            &p("server.csr"),
        ],
        &[],
    )
    .await?;
    run(
        openssl,
        [
            "x509",
            "-req",
            "-in",
            &p("server.csr"),
            "-CA",
            &p("ca.crt"),
            "-CAkey",
            &p("ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &p("server.ext"),
            "-out",
            &p("server.crt"),
        ],
        &[],
    )
    .await?;
    let key = dir.join("server.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
        .map_err(TestbedError::io("chmod server.key"))?;
    if let Some((uid, gid)) = run_as {
        for f in ["server.key", "server.crt"] {
            std::os::unix::fs::chown(dir.join(f), Some(uid), Some(gid))
                .map_err(TestbedError::io(format!("chown {f} to {OS_USER}")))?;
        }
    }
    Ok(dir.join("ca.crt"))
}

/// A server binary by its real path: the testbed's `bin/` links into Debian's
/// `/usr/lib/postgresql/<major>/bin`, and the server's user cannot traverse root's home (and
/// `initdb` looks for `postgres` beside its own resolved path).
fn server_bin(name: &str) -> Result<PathBuf> {
    let link = bin(name)?;
    std::fs::canonicalize(&link).map_err(TestbedError::io(format!("resolve {}", link.display())))
}

/// `(program, args)` that run `program args` as `run_as` (through `setpriv`), or directly.
fn as_user<'a>(
    run_as: Option<(u32, u32)>,
    program: &Path,
    args: impl IntoIterator<Item = &'a OsStr>,
) -> (PathBuf, Vec<std::ffi::OsString>) {
    let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.to_owned()).collect();
    match run_as {
        None => (program.to_owned(), args),
        Some((uid, gid)) => {
            let mut all: Vec<std::ffi::OsString> = vec![
                format!("--reuid={uid}").into(),
                format!("--regid={gid}").into(),
                "--clear-groups".into(),
                "--".into(),
                program.as_os_str().to_owned(),
            ];
            all.extend(args);
            (PathBuf::from("setpriv"), all)
        }
    }
}

/// The uid and gid of [`OS_USER`], creating it (a system user without a home or login shell)
/// when missing.
fn ensure_os_user() -> Result<(u32, u32)> {
    let lookup = || {
        nix::unistd::User::from_name(OS_USER)
            .map_err(|e| TestbedError::Unexpected(format!("look up user {OS_USER}: {e}")))
    };
    if let Some(u) = lookup()? {
        return Ok((u.uid.as_raw(), u.gid.as_raw()));
    }
    let out = std::process::Command::new("useradd")
        .args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            OS_USER,
        ])
        .output()
        .map_err(TestbedError::io(format!("run useradd {OS_USER}")))?;
    // A concurrent test process may have created it meanwhile: look again either way.
    match lookup()? {
        Some(u) => Ok((u.uid.as_raw(), u.gid.as_raw())),
        None => Err(TestbedError::Command {
            command: format!("useradd --system {OS_USER}"),
            status: out.status.to_string(),
            output: String::from_utf8_lossy(&out.stderr).into_owned(),
        }),
    }
}

/// 24 random letters and digits.
fn random_password() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 24];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut bytes);
    }
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}
