//! Removing secrets from text that leaves a process: log lines, task reasons, errors.
//!
//! A [`Redactor`] knows the secret values of one agent (its forge token, the model provider keys
//! the orchestrator handed it) and replaces every occurrence with `***`, and removes
//! `user:password@` from URLs (see [`redact_url`]). It owns no I/O: callers apply it where text
//! is about to be shipped or stored.

use crate::token::Secret;
use base64::Engine;
use std::borrow::Cow;

/// Shorter values are not redacted (replacing `a` everywhere would destroy the log and hide
/// nothing worth hiding).
pub const MIN_SECRET_LEN: usize = 6;

/// What a secret is replaced with.
pub const MASK: &str = "***";

/// Replaces known secret values (and URL credentials) in text.
#[derive(Clone, Default)]
pub struct Redactor {
    needles: Vec<String>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("secrets", &self.needles.len())
            .finish()
    }
}

impl Redactor {
    /// A redactor for `secrets`. Each value is also matched in its base64 forms (an HTTP
    /// `Authorization: Basic` header carries `user:token` in base64), and values shorter than
    /// [`MIN_SECRET_LEN`] are ignored.
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a Secret>) -> Self {
        let mut r = Self::default();
        for s in secrets {
            r.add(s);
        }
        r
    }

    /// Adds one secret.
    pub fn add(&mut self, secret: &Secret) {
        let v = secret.expose();
        if v.len() < MIN_SECRET_LEN || self.needles.iter().any(|n| n == v) {
            return;
        }
        self.needles.push(v.to_owned());
        let b64 = base64::engine::general_purpose::STANDARD.encode(v);
        // Only the middle of a base64 encoding is stable when the value is embedded in a longer
        // string (`user:token`); the full encoding of the value alone still matters.
        self.needles.push(b64);
        // Longest first, so a secret that contains another is replaced whole.
        self.needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
    }

    /// True when there is nothing to redact but URL credentials.
    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// `text` with every known secret replaced by [`MASK`] and URL credentials removed.
    pub fn apply<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out: Cow<'a, str> = Cow::Borrowed(text);
        for n in &self.needles {
            if out.contains(n.as_str()) {
                out = Cow::Owned(out.replace(n.as_str(), MASK));
            }
        }
        if out.contains("://") && out.contains('@') {
            out = Cow::Owned(redact_url(&out));
        }
        out
    }

    /// Like [`Redactor::apply`], owning the result.
    pub fn apply_owned(&self, text: String) -> String {
        match self.apply(&text) {
            Cow::Borrowed(_) => text,
            Cow::Owned(s) => s,
        }
    }
}

/// Removes `user[:password]@` from every URL in `s`, so credentials never reach a log line.
pub fn redact_url(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c == '/' || c.is_whitespace() || c == '\'' || c == '"')
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                out.push_str("***@");
                out.push_str(&authority[at + 1..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_and_their_base64_are_masked() {
        let tok = Secret::new("ghp_0123456789abcdef");
        let r = Redactor::new([&tok]);
        assert_eq!(r.apply("token=ghp_0123456789abcdef end"), "token=*** end");
        let b64 = base64::engine::general_purpose::STANDARD.encode("ghp_0123456789abcdef");
        assert_eq!(r.apply(&format!("Basic {b64}")), "Basic ***");
        assert_eq!(r.apply("nothing here"), "nothing here");
        assert!(matches!(r.apply("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn short_values_are_ignored_and_urls_lose_credentials() {
        let r = Redactor::new([&Secret::new("abc")]);
        assert!(r.is_empty());
        assert_eq!(r.apply("abc"), "abc");
        assert_eq!(
            r.apply("fatal: could not read from https://bot:s3cr3t@host/a/b.git"),
            "fatal: could not read from https://***@host/a/b.git"
        );
        assert_eq!(redact_url("https://host/a"), "https://host/a");
    }

    #[test]
    fn longer_secrets_win_over_their_prefixes() {
        let a = Secret::new("secret-value");
        let b = Secret::new("secret-value-longer");
        let r = Redactor::new([&a, &b]);
        assert_eq!(r.apply("x secret-value-longer y"), "x *** y");
    }
}
