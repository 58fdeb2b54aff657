//! Redaction of talosctl output before it reaches a progress event, a log line or an error:
//! talosctl can print keys, certificates and tokens.
//!
//! Three rules, applied per line:
//! - the value after a `key: value` / `key=value` whose key names a secret (`token`, `key`,
//!   `crt`, `cert`, `secret`, `password`, `*-data`) is replaced up to the end of the line;
//! - a word after `Bearer`, or after the words `token`, `password`, `secret` used as nouns
//!   (`join token <value>`), is replaced;
//! - any long base64/base64url-looking run (40+ characters of mixed case and digits, or ending
//!   in `=`) and any bootstrap-token-shaped word (`[a-z0-9]{6}.[a-z0-9]{16}`) is replaced.

/// What replaces a secret.
pub const REDACTED: &str = "<redacted>";

const SECRET_KEY_WORDS: [&str; 7] = ["token", "key", "crt", "cert", "secret", "password", "-data"];
const MIN_BLOB: usize = 40;

/// `line` with every secret-looking part replaced by [`REDACTED`].
pub fn redact_line(line: &str) -> String {
    let line = redact_key_values(line);
    let line = redact_bearer(&line);
    let line = redact_after_noun(&line);
    redact_words(&line)
}

/// Every line of `text` redacted (line breaks kept).
pub fn redact(text: &str) -> String {
    text.split('\n')
        .map(redact_line)
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'
}

fn redact_key_values(line: &str) -> String {
    for (i, c) in line.char_indices() {
        if c != ':' && c != '=' {
            continue;
        }
        let key_start = line[..i]
            .char_indices()
            .rev()
            .take_while(|(_, c)| is_key_char(*c))
            .last()
            .map_or(i, |(j, _)| j);
        let key = line[key_start..i].to_ascii_lowercase();
        if key.is_empty() || !SECRET_KEY_WORDS.iter().any(|w| key.contains(w)) {
            continue;
        }
        let rest = &line[i + 1..];
        // `key: value` or `key=value`, but not `key::` or a URL-ish `key://`.
        if rest.trim().is_empty() || rest.starts_with(':') || rest.starts_with('/') {
            continue;
        }
        let pad = if rest.starts_with(' ') { " " } else { "" };
        return format!("{}{c}{pad}{REDACTED}", &line[..i]);
    }
    line.to_owned()
}

fn redact_bearer(line: &str) -> String {
    let lower = line.to_ascii_lowercase();
    match lower.find("bearer ") {
        Some(i) => {
            let start = i + "bearer ".len();
            let end = line[start..]
                .find(|c: char| c.is_whitespace() || c == '"' || c == '\'')
                .map_or(line.len(), |e| start + e);
            format!("{}{REDACTED}{}", &line[..start], &line[end..])
        }
        None => line.to_owned(),
    }
}

/// `... token <value>`: the word after a secret noun goes.
fn redact_after_noun(line: &str) -> String {
    const NOUNS: [&str; 3] = ["token", "password", "secret"];
    let mut out: Vec<String> = Vec::new();
    let mut redact_next = false;
    for w in line.split(' ') {
        if redact_next && !w.is_empty() {
            let end = w.find([',', ';', ')', '"', '\'']).unwrap_or(w.len());
            out.push(format!("{REDACTED}{}", &w[end..]));
            redact_next = false;
            continue;
        }
        redact_next = NOUNS.contains(&w.to_ascii_lowercase().as_str());
        out.push(w.to_owned());
    }
    out.join(" ")
}

fn is_blob_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "+/=_-".contains(c)
}

fn looks_secret(word: &str) -> bool {
    // Bootstrap-token shape: 6 + '.' + 16 lowercase alphanumerics.
    let token_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    if let Some((a, b)) = word.split_once('.') {
        if a.len() == 6 && b.len() == 16 && a.chars().all(token_char) && b.chars().all(token_char) {
            return true;
        }
    }
    if word.len() < MIN_BLOB || !word.chars().all(is_blob_char) {
        return false;
    }
    let upper = word.chars().any(|c| c.is_ascii_uppercase());
    let lower = word.chars().any(|c| c.is_ascii_lowercase());
    let digit = word.chars().any(|c| c.is_ascii_digit());
    word.ends_with('=') || (upper && lower && digit)
}

fn redact_words(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if looks_secret(word) {
            out.push_str(REDACTED);
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in line.chars() {
        if is_blob_char(c) || c == '.' {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    // A blob glued to dots (e.g. `abc.<blob>`) is checked part by part as well.
    if out.contains('.') {
        out = out
            .split('.')
            .map(|p| if looks_secret(p) { REDACTED } else { p })
            .collect::<Vec<_>>()
            .join(".");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_replaced() {
        let cases = [
            (
                "    token: abcdef.0123456789abcdef",
                "    token: <redacted>",
            ),
            (
                "key: LS0tLS1CRUdJTiBFRDI1NTE5IFBSSVZBVEUgS0VZLS0tLS0K",
                "key: <redacted>",
            ),
            ("  crt: c2VjcmV0", "  crt: <redacted>"),
            ("client-key-data: QUJD", "client-key-data: <redacted>"),
            ("password=hunter2", "password=<redacted>"),
            (
                "Authorization: Bearer eyJhbGciOi.x.y",
                "Authorization: Bearer <redacted>",
            ),
            (
                "joined with abcdef.0123456789abcdef ok",
                "joined with <redacted> ok",
            ),
            (
                "blob MIIBkTCB+wIJAKHHIG5Q8Zx3MA0GCSqGSIb3DQEBCwUAMBQxEjAQ end",
                "blob <redacted> end",
            ),
            ("x dGVzdA== y", "x dGVzdA== y"),
            (
                "bootstrap requested; join token standin-secret-token-9c1d",
                "bootstrap requested; join token <redacted>",
            ),
            (
                "wrong password hunter2, retry",
                "wrong password <redacted>, retry",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(redact_line(input), want, "{input}");
        }
        // A short `=`-ended word is not a blob; a long one is.
        assert_eq!(
            redact_line("aGVsbG8gd29ybGQgaGVsbG8gd29ybGQgaGVsbG8gd29ybA=="),
            REDACTED
        );
    }

    #[test]
    fn ordinary_output_is_kept() {
        for line in [
            "generating PKI and tokens",
            "Created /tmp/x/controlplane.yaml",
            "waiting for etcd to be healthy: OK",
            "rpc error: code = Unavailable desc = connection error: desc = \"transport: Error while dialing: dial tcp 10.0.0.1:50000: connect: connection refused\"",
            "error executing bootstrap: rpc error: code = AlreadyExists desc = etcd data directory is not empty",
            "endpoint https://10.0.0.1:6443",
            "keys=2",
        ] {
            if line == "keys=2" {
                // `keys=` names a secret-ish key: its value goes, the key stays.
                assert_eq!(redact_line(line), "keys=<redacted>");
                continue;
            }
            assert_eq!(redact_line(line), line);
        }
        assert_eq!(redact("a\ntoken: x\nb"), "a\ntoken: <redacted>\nb");
    }
}
