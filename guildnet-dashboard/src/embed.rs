//! `/embed/orchestrator/{port}/*`: the editor iframe's relay to the orchestrator's editor proxy
//! (`/editor/proxy/{port}/*`), HTTP and WebSocket.
//!
//! The browser only holds the dashboard's session cookie (checked by [`crate::auth::guard`]
//! before any of this runs); the relay adds the orchestrator's admin token server-side and
//! tells the orchestrator, with `X-Forwarded-Prefix`, which prefix the browser sees, so
//! `Location` and `Set-Cookie` paths come back under `/embed/orchestrator/{port}`. The
//! dashboard's own cookie is not forwarded, and framing is limited to the dashboard itself.
//!
//! The port is only a number: the orchestrator decides whether an editor is open on it (404
//! otherwise), so this relay cannot be pointed at another host or port.

use crate::auth::SESSION_COOKIE;
use crate::{ApiError, AppState};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use guildnet_core::proxy::{ProxyError, Upstream};

/// The prefix the browser sees for the editor on `port`.
pub fn external_prefix(port: u16) -> String {
    format!("/embed/orchestrator/{port}")
}

/// The orchestrator's `host:port` from its base URL; only plain `http://` can be relayed.
pub fn orchestrator_authority(url: &str) -> Result<String, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
    if parsed.scheme() != "http" {
        return Err(format!(
            "the editor relay reaches the orchestrator over plain http (loopback or the tailnet); {} is {}",
            url,
            parsed.scheme()
        ));
    }
    let host = parsed.host_str().ok_or_else(|| format!("{url}: no host"))?;
    let port = parsed.port_or_known_default().unwrap_or(80);
    Ok(if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

fn port_param(raw: &str) -> Result<u16, ApiError> {
    guildnet_core::proxy::parse_port(raw)
        .ok_or_else(|| ApiError::invalid("port", "must be a TCP port number (1-65535)"))
}

/// `ANY /embed/orchestrator/{port}`: the slash form, which code-server's relative URLs need.
pub async fn embed_root(Path(port): Path<String>) -> Result<Response, ApiError> {
    let port = port_param(&port)?;
    Ok((
        StatusCode::TEMPORARY_REDIRECT,
        [(header::LOCATION, format!("{}/", external_prefix(port)))],
    )
        .into_response())
}

/// `ANY /embed/orchestrator/{port}/`.
pub async fn embed_index(
    State(s): State<AppState>,
    Path(port): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    relay(s, &port, "/", req).await
}

/// `ANY /embed/orchestrator/{port}/{*rest}`.
pub async fn embed(
    State(s): State<AppState>,
    Path((port, rest)): Path<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    relay(s, &port, &format!("/{rest}"), req).await
}

async fn relay(s: AppState, port: &str, rest: &str, req: Request) -> Result<Response, ApiError> {
    let port = port_param(port)?;
    let authority =
        s.orchestrator_authority.as_ref().clone().map_err(|why| {
            ApiError::new(StatusCode::BAD_GATEWAY, "editor_relay_unavailable", why)
        })?;
    let bearer = HeaderValue::from_str(&format!("Bearer {}", s.orchestrator_token.expose()))
        .map_err(|_| ApiError::internal("the orchestrator token is not a valid header value"))?;
    // The proxy sets `X-Forwarded-Prefix` to `external_prefix` itself.
    let up = Upstream {
        authority,
        path_prefix: format!("/editor/proxy/{port}"),
        external_prefix: external_prefix(port),
        add_headers: vec![(header::AUTHORIZATION, bearer)],
        cookie: None,
        strip_cookies: vec![SESSION_COOKIE.to_owned()],
        frame_ancestors: Some("'self'".to_owned()),
        dialer: None,
    };
    s.embed_proxy
        .forward(req, rest, &up)
        .await
        .map_err(|e| match e {
            ProxyError::Unreachable { .. } => ApiError::new(
                StatusCode::BAD_GATEWAY,
                "orchestrator_unreachable",
                format!("the orchestrator's editor proxy does not answer: {e}"),
            ),
            ProxyError::BadRequest(m) => ApiError::invalid("path", m),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_from_orchestrator_urls() {
        assert_eq!(
            orchestrator_authority("http://127.0.0.1:8080").unwrap(),
            "127.0.0.1:8080"
        );
        assert_eq!(
            orchestrator_authority("http://orch.tail.example/").unwrap(),
            "orch.tail.example:80"
        );
        assert_eq!(
            orchestrator_authority("http://[::1]:9000").unwrap(),
            "[::1]:9000"
        );
        let e = orchestrator_authority("https://orch.example").unwrap_err();
        assert!(e.contains("plain http"), "{e}");
        assert!(orchestrator_authority("not a url").is_err());
    }

    #[test]
    fn ports_are_numbers() {
        assert!(port_param("8443").is_ok());
        for bad in ["0", "65536", "-1", "127.0.0.1", "x"] {
            assert!(port_param(bad).is_err(), "{bad}");
        }
    }
}
