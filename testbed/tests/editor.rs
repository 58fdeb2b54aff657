//! Smoke test of the real code-server with password auth.

use guildnet_testbed::editor::{CodeServer, SESSION_COOKIE, WORKSPACE_FILE};
use reqwest::StatusCode;
use std::time::Instant;

/// The value of the first `attr="…"` in `html` that ends with `suffix`.
fn find_ref<'a>(html: &'a str, attr: &str, suffix: &str) -> Option<&'a str> {
    let needle = format!("{attr}=\"");
    html.match_indices(&needle).find_map(|(i, _)| {
        let rest = &html[i + needle.len()..];
        let value = &rest[..rest.find('"')?];
        value.ends_with(suffix).then_some(value)
    })
}

#[tokio::test]
async fn code_server_answers_health_and_serves_its_page() {
    let started = Instant::now();
    let server = CodeServer::start("correct horse battery staple")
        .await
        .expect("start code-server");
    let startup = started.elapsed();
    assert!(server.workspace().join(WORKSPACE_FILE).is_file());
    let client = CodeServer::http_client().expect("client");
    let base = server.url();

    // Health.
    let health = client
        .get(format!("{base}healthz"))
        .send()
        .await
        .expect("GET /healthz");
    assert_eq!(health.status(), StatusCode::OK);
    let health: serde_json::Value = health.json().await.expect("healthz JSON");
    assert!(
        health.get("status").and_then(|s| s.as_str()).is_some(),
        "no status in {health}"
    );

    // Without a session, / redirects to the login page, which has the password form.
    let root = client.get(base).send().await.expect("GET /");
    assert_eq!(root.status(), StatusCode::FOUND);
    assert_eq!(
        root.headers().get("location").and_then(|l| l.to_str().ok()),
        Some("./login")
    );
    let login_page = client
        .get(format!("{base}login"))
        .send()
        .await
        .expect("GET /login");
    assert_eq!(login_page.status(), StatusCode::OK);
    let login_page = login_page.text().await.expect("login page");
    assert!(login_page.contains("name=\"password\""), "{login_page}");
    assert!(login_page.contains("Password was set from $PASSWORD."));

    // A wrong password: the login page again, with an error and no cookie.
    let wrong = server
        .try_login("wrong password")
        .await
        .expect("POST /login");
    assert_eq!(wrong.status, StatusCode::OK);
    assert_eq!(wrong.cookie, None);
    assert_eq!(wrong.error_message(), Some("Incorrect password"));

    // The right one: a redirect to ./ with the session cookie.
    let right = server
        .try_login(server.password())
        .await
        .expect("POST /login");
    assert_eq!(right.status, StatusCode::FOUND, "{}", right.body);
    assert_eq!(right.location.as_deref(), Some("./"));
    let cookie = right.cookie.expect("session cookie");
    assert!(
        cookie.starts_with(&format!("{SESSION_COOKIE}=")),
        "{cookie}"
    );

    // The same over a caller's client; one that follows redirects is refused, since the
    // cookie would be lost with the 302.
    let own = server.login_with(&client).await.expect("login_with");
    assert!(own.starts_with(&format!("{SESSION_COOKIE}=")), "{own}");
    let following = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let err = server
        .login_with(&following)
        .await
        .expect_err("a redirect-following client cannot log in");
    assert!(err.to_string().contains("Policy::none()"), "{err}");

    // With the cookie, / redirects to the workspace folder, which serves the workbench.
    let authed = server.authenticated_client().await.expect("log in");
    let root = authed.get(base).send().await.expect("GET / with cookie");
    assert_eq!(root.status(), StatusCode::FOUND);
    let location = root
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .expect("location")
        .to_owned();
    assert!(
        location.starts_with("./?folder=") && location.ends_with("/workspace"),
        "{location}"
    );
    let page = authed
        .get(format!("{base}{}", location.trim_start_matches("./")))
        .send()
        .await
        .expect("GET workbench");
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.expect("workbench html");
    assert!(html.contains("id=\"vscode-workbench-web-configuration\""));
    assert!(html.contains("codeServerVersion&quot;:&quot;4.100.3"));
    let script = find_ref(&html, "src", "/out/vs/code/browser/workbench/workbench.js")
        .expect("workbench.js in the page");
    let css = find_ref(
        &html,
        "href",
        "/out/vs/code/browser/workbench/workbench.css",
    )
    .expect("workbench.css in the page");

    // The assets the page references are served.
    for (asset, content_type) in [(script, "javascript"), (css, "text/css")] {
        let resp = authed
            .get(format!("{base}{asset}"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {asset}: {e}"));
        assert_eq!(resp.status(), StatusCode::OK, "{asset}");
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|c| c.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(ct.contains(content_type), "{asset}: content-type {ct}");
        let body = resp.bytes().await.expect("asset body");
        assert!(body.len() > 1000, "{asset} is only {} bytes", body.len());
    }

    drop(server);
    eprintln!(
        "code-server test took {:?} (startup {startup:?})",
        started.elapsed()
    );
}
