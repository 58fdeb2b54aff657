//! Smoke tests of headless Chromium driven through the real chromedriver: a page served on
//! loopback, and code-server's login and workbench.

use guildnet_testbed::browser::ChromeDriver;
use guildnet_testbed::editor::CodeServer;
use guildnet_testbed::image::Image;
use std::path::Path;
use std::time::{Duration, Instant};

/// The page's background colour.
const BACKGROUND: [u8; 3] = [12, 34, 56];

const PAGE: &str = r#"<!doctype html>
<html>
  <head>
    <meta charset="utf-8">
    <title>GuildNet testbed page</title>
    <style>
      html, body { margin: 0; height: 100%; background: rgb(12, 34, 56); }
      #greeting { position: absolute; top: 8px; left: 8px; color: rgb(250, 250, 250);
                  font: 16px sans-serif; }
    </style>
  </head>
  <body><p id="greeting">Hello from <b>GuildNet</b></p></body>
</html>
"#;

fn artifact_dir(_temp: &Path) -> std::path::PathBuf {
    guildnet_testbed::image::artifact_dir("testbed")
}

fn decode_png(bytes: &[u8]) -> Image {
    guildnet_testbed::image::decode_png(bytes).expect("decode screenshot")
}

#[tokio::test]
async fn chromium_loads_a_loopback_page_and_saves_a_screenshot() {
    let started = Instant::now();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(|| async { axum::response::Html(PAGE) }),
    );
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let driver = ChromeDriver::start().await.expect("start chromedriver");
    let session = driver.new_session(true).await.expect("new session");
    assert!(!session.browser_version().is_empty());
    session
        .goto(&format!("http://{addr}/"))
        .await
        .expect("navigate");
    assert_eq!(
        session.title().await.expect("title"),
        "GuildNet testbed page"
    );
    let greeting = session.find_css("#greeting").await.expect("#greeting");
    assert_eq!(
        session.text(&greeting).await.expect("text"),
        "Hello from GuildNet"
    );
    let bg = session
        .execute(
            "return getComputedStyle(arguments[0].parentElement).backgroundColor",
            vec![greeting.to_json()],
        )
        .await
        .expect("execute");
    assert_eq!(bg, serde_json::json!("rgb(12, 34, 56)"));
    assert!(
        session.find_css("#missing").await.is_err(),
        "found an element that does not exist"
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let path = artifact_dir(dir.path()).join("page.png");
    let png = session.save_screenshot(&path).await.expect("screenshot");
    assert_eq!(std::fs::read(&path).expect("read screenshot"), png);
    let image = decode_png(&png);
    assert!(image.width > 0 && image.height > 0);
    assert_eq!(
        image.pixel(image.width / 2, image.height / 2),
        BACKGROUND,
        "centre pixel"
    );
    let histogram = image.histogram();
    let (top, count) = histogram[0];
    assert_eq!(top, BACKGROUND);
    assert!(
        count * 10 > image.rgb.len() * 9,
        "only {count} of {} pixels have the background colour",
        image.rgb.len()
    );
    // The text is drawn too, in other colours.
    assert!(histogram.len() > 2, "the greeting was not drawn");

    session.close().await.expect("close session");
    let (group, driver_dir) = (driver.pid(), driver.dir().to_owned());
    let running = leftover_processes(Some(group), &driver_dir.to_string_lossy());
    assert!(
        !running.is_empty(),
        "chromedriver's processes: {running:#?}"
    );
    drop(driver);
    server.abort();
    assert_no_processes_left(Some(group), &driver_dir).await;
    eprintln!(
        "page test took {:?}; screenshot {}x{}",
        started.elapsed(),
        image.width,
        image.height
    );
}

#[tokio::test]
async fn chromium_logs_in_to_code_server_and_renders_the_workbench() {
    let started = Instant::now();
    let server = CodeServer::start("open sesame")
        .await
        .expect("start code-server");
    let driver = ChromeDriver::start().await.expect("start chromedriver");
    let session = driver.new_session(true).await.expect("new session");

    // / redirects to the login page.
    session.goto(server.url()).await.expect("navigate");
    let url = session.current_url().await.expect("url");
    assert!(url.ends_with("/login"), "{url}");
    let password = session
        .wait_for_css("input.password", Duration::from_secs(10))
        .await
        .expect("password field");
    session
        .send_keys(&password, server.password())
        .await
        .expect("type password");
    let submit = session.find_css("input.submit").await.expect("submit");
    let submitted = Instant::now();
    // The click returns once the navigation it starts (POST /login, 302, the workbench page)
    // has loaded: about 4 s here.
    session.click(&submit).await.expect("submit");

    // The workbench is built by script after the page loads: wait for it, then for the
    // explorer to list the workspace file.
    let workbench = session
        .wait_for_css(".monaco-workbench", Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("workbench: {e}\ncode-server log:\n{}", server.log_tail()));
    let workbench_after = submitted.elapsed();
    session
        .wait_for_css(
            ".explorer-folders-view .monaco-list-row[aria-label*='README.md']",
            Duration::from_secs(60),
        )
        .await
        .unwrap_or_else(|e| panic!("explorer: {e}\ncode-server log:\n{}", server.log_tail()));
    let explorer_after = submitted.elapsed();
    let url = session.current_url().await.expect("url");
    assert!(url.contains("?folder="), "{url}");
    // The workbench fills the viewport.
    let sizes = session
        .execute(
            "const r = arguments[0].getBoundingClientRect(); \
             return [[r.width, r.height], [window.innerWidth, window.innerHeight]]",
            vec![workbench.to_json()],
        )
        .await
        .expect("workbench size");
    assert_eq!(sizes[0], sizes[1], "workbench vs viewport size");
    assert!(sizes[0][0].as_f64().unwrap_or(0.0) >= 1000.0, "{sizes}");

    let dir = tempfile::tempdir().expect("temp dir");
    let path = artifact_dir(dir.path()).join("code-server.png");
    let png = session.save_screenshot(&path).await.expect("screenshot");
    let image = decode_png(&png);
    assert!(image.width > 0 && image.height > 0);
    let histogram = image.histogram();
    let (top, count) = histogram[0];
    assert!(
        histogram.len() > 50 && count * 10 < image.rgb.len() * 9,
        "screenshot looks blank: {} colours, {top:?} covers {count} of {} pixels",
        histogram.len(),
        image.rgb.len()
    );

    session.close().await.expect("close session");
    let (group, driver_dir) = (driver.pid(), driver.dir().to_owned());
    let server_dir = server.dir().to_owned();
    // The leftover check does see the processes while they run.
    let running = leftover_processes(None, &server_dir.to_string_lossy());
    assert!(running.len() >= 2, "code-server processes: {running:#?}");
    drop(driver);
    drop(server);
    assert_no_processes_left(Some(group), &driver_dir).await;
    // code-server's children (extension host, file watcher, …) are gone too: their
    // environments name the server's temp dir.
    assert_no_processes_left(None, &server_dir).await;
    eprintln!(
        "code-server browser test took {:?}; workbench {workbench_after:?} and explorer \
         {explorer_after:?} after submitting the password; screenshot {} colours, top {top:?} {count}/{}",
        started.elapsed(),
        histogram.len(),
        image.rgb.len()
    );
}

/// Asserts that, within 5 s, no live process is left in the process group `pgid` if given
/// (chromedriver's, which Chromium and its helpers share) nor any process whose command line
/// or environment names `dir` (the servers point `HOME`/`XDG_*` into their temp dirs, and
/// children inherit that; this also catches Chromium's crash handler, which runs in a
/// session of its own and exits once the browser is gone).
async fn assert_no_processes_left(pgid: Option<u32>, dir: &Path) {
    let dir = dir.to_string_lossy().into_owned();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = leftover_processes(pgid, &dir);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "processes left after chromedriver stopped: {left:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn leftover_processes(pgid: Option<u32>, dir: &str) -> Vec<String> {
    let mut left = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return left;
    };
    for entry in entries.flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp …; comm may contain spaces, so split after the last ')'.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.len() < 3 || fields[0] == "Z" || fields[0] == "X" {
            continue;
        }
        let read = |file: &str| {
            std::fs::read(entry.path().join(file))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .unwrap_or_default()
        };
        let cmdline = read("cmdline");
        if pgid.is_some_and(|g| fields[2] == g.to_string())
            || cmdline.contains(dir)
            || read("environ").contains(dir)
        {
            left.push(format!(
                "{}: {cmdline}",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    left
}
