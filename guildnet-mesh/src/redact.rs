//! Keeping secrets out of text: URL display without credentials, and secret redaction.

use guildnet_core::token::Secret;

/// A URL as it may appear in logs and errors: scheme, host, port and path only (no user info,
/// query or fragment, where credentials could hide). Unparsable input is shown as `<invalid url>`.
pub fn display_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            let s = u.to_string();
            s.strip_suffix('/')
                .filter(|_| u.path() == "/")
                .map(str::to_owned)
                .unwrap_or(s)
        }
        Err(_) => "<invalid url>".to_owned(),
    }
}

/// `text` with every occurrence of each non-empty secret replaced by `<redacted>`.
pub(crate) fn redact(text: &str, secrets: &[&Secret]) -> String {
    let mut out = text.to_owned();
    for s in secrets {
        let v = s.expose();
        if !v.is_empty() {
            out = out.replace(v, "<redacted>");
        }
    }
    out
}

/// Cuts `text` to its last `max` bytes (on a char boundary), for quoting process output.
pub(crate) fn tail(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.trim().to_owned();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", text[start..].trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_credentials_and_queries() {
        assert_eq!(
            display_url("https://user:pw@hs.example.com:8443/x?token=abc#f"),
            "https://hs.example.com:8443/x"
        );
        assert_eq!(
            display_url("http://127.0.0.1:8080/"),
            "http://127.0.0.1:8080"
        );
        assert_eq!(display_url("not a url"), "<invalid url>");
    }

    #[test]
    fn secrets_are_redacted() {
        let k = Secret::new("hskey-auth-abc");
        let empty = Secret::new("");
        assert_eq!(
            redact("bad key hskey-auth-abc!", &[&k, &empty]),
            "bad key <redacted>!"
        );
        assert_eq!(tail("abcdef", 3), "...def");
        assert_eq!(tail("ab", 3), "ab");
    }
}
