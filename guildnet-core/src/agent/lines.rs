//! Turning a byte stream (a runner's stdout or stderr) into log lines: split on `\n` over
//! bytes, any bytes (invalid UTF-8 becomes U+FFFD), with bounded memory: a line longer than
//! [`MAX_LINE_BYTES`] keeps its beginning and says how many bytes were cut, however long it
//! runs before its newline.

use crate::orchestrator::MAX_LOG_LINE_BYTES;

/// Longest line sent to the orchestrator (its own limit), marker included.
pub const MAX_LINE_BYTES: usize = MAX_LOG_LINE_BYTES;

/// Room kept for the marker ` …[cut 18446744073709551615 bytes]`.
const MARKER_ROOM: usize = 48;

/// The longest lossy-UTF-8 prefix of `raw` that fits in `budget` bytes: (text, raw bytes it
/// stands for, whether that is all of `raw`).
fn lossy_prefix(raw: &[u8], budget: usize) -> (String, usize, bool) {
    let mut out = String::new();
    let mut consumed = 0usize;
    for chunk in raw.utf8_chunks() {
        let valid = chunk.valid();
        if out.len() + valid.len() <= budget {
            out.push_str(valid);
            consumed += valid.len();
        } else {
            for ch in valid.chars() {
                if out.len() + ch.len_utf8() > budget {
                    return (out, consumed, false);
                }
                out.push(ch);
                consumed += ch.len_utf8();
            }
        }
        if !chunk.invalid().is_empty() {
            if out.len() + '\u{FFFD}'.len_utf8() > budget {
                return (out, consumed, false);
            }
            out.push('\u{FFFD}');
            consumed += chunk.invalid().len();
        }
    }
    (out, consumed, true)
}

/// Renders `raw` (plus `cut_after` bytes already dropped) as one line of at most
/// [`MAX_LINE_BYTES`]: lossy UTF-8, and when anything is left out, a marker saying how many
/// bytes of the original line were cut.
fn render(raw: &[u8], cut_after: u64) -> String {
    if cut_after == 0 {
        let (text, _, full) = lossy_prefix(raw, MAX_LINE_BYTES);
        if full {
            return text;
        }
    }
    let (mut text, shown, _) = lossy_prefix(raw, MAX_LINE_BYTES - MARKER_ROOM);
    let cut = (raw.len() - shown) as u64 + cut_after;
    text.push_str(&format!(" …[cut {cut} bytes]"));
    text
}

/// Shortens a line (e.g. an agent-made system line) to [`MAX_LINE_BYTES`] with the same marker.
pub fn clip(line: String) -> String {
    if line.len() <= MAX_LINE_BYTES {
        return line;
    }
    render(line.as_bytes(), 0)
}

/// Splits a byte stream into lines with bounded memory.
#[derive(Debug, Default)]
pub struct LineSplitter {
    cur: Vec<u8>,
    cut: u64,
}

impl LineSplitter {
    /// Feeds bytes; returns the lines they completed (without the `\n`, and a `\r` before it).
    pub fn feed(&mut self, mut bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            match bytes.iter().position(|b| *b == b'\n') {
                Some(i) => {
                    self.take(&bytes[..i]);
                    out.push(self.emit());
                    bytes = &bytes[i + 1..];
                }
                None => {
                    self.take(bytes);
                    break;
                }
            }
        }
        out
    }

    /// The last line, if the stream ended without a newline.
    pub fn finish(&mut self) -> Option<String> {
        (!self.cur.is_empty() || self.cut > 0).then(|| self.emit())
    }

    fn take(&mut self, bytes: &[u8]) {
        // Keep one byte more than a line can show, so `render` knows the line was cut.
        let room = (MAX_LINE_BYTES + 1).saturating_sub(self.cur.len());
        let keep = room.min(bytes.len());
        self.cur.extend_from_slice(&bytes[..keep]);
        self.cut += (bytes.len() - keep) as u64;
    }

    fn emit(&mut self) -> String {
        if self.cut == 0 && self.cur.last() == Some(&b'\r') {
            self.cur.pop();
        }
        let line = render(&self.cur, self.cut);
        self.cur.clear();
        self.cut = 0;
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_bytes_and_keeps_invalid_utf8_as_replacement() {
        let mut s = LineSplitter::default();
        assert_eq!(s.feed(b"a\xffb\nsecond"), vec!["a\u{FFFD}b".to_owned()]);
        assert_eq!(
            s.feed(b" half\r\n\n"),
            vec!["second half".to_owned(), String::new()]
        );
        assert_eq!(s.finish(), None);
        assert_eq!(s.feed(b"tail"), Vec::<String>::new());
        assert_eq!(s.finish().as_deref(), Some("tail"));
    }

    #[test]
    fn long_lines_are_cut_with_a_count_and_memory_stays_bounded() {
        let mut s = LineSplitter::default();
        // 100 MB without a newline, fed in 1 MiB chunks.
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..100 {
            assert!(s.feed(&chunk).is_empty());
            assert!(s.cur.len() <= MAX_LINE_BYTES + 1);
        }
        let lines = s.feed(b"\nnext\n");
        assert_eq!(lines.len(), 2);
        let first = &lines[0];
        assert!(first.len() <= MAX_LINE_BYTES, "{}", first.len());
        let shown = first.find(" …[cut ").unwrap();
        let cut: u64 = first[shown + " …[cut ".len()..]
            .trim_end_matches(" bytes]")
            .parse()
            .unwrap();
        assert_eq!(shown as u64 + cut, 100 << 20);
        assert_eq!(lines[1], "next");
    }

    #[test]
    fn a_line_just_over_the_limit_and_invalid_bytes_stay_within_it() {
        let mut s = LineSplitter::default();
        let mut line = vec![b'y'; MAX_LINE_BYTES + 10];
        line.push(b'\n');
        let out = s.feed(&line);
        assert!(out[0].len() <= MAX_LINE_BYTES);
        assert!(
            out[0].ends_with("bytes]"),
            "{}",
            &out[0][out[0].len() - 40..]
        );
        let shown = out[0].find(" …[cut ").unwrap();
        assert!(out[0].ends_with(&format!("[cut {} bytes]", MAX_LINE_BYTES + 10 - shown)));
        // Invalid bytes triple in size as U+FFFD: still within the limit.
        let mut bad = vec![0xffu8; MAX_LINE_BYTES];
        bad.push(b'\n');
        let out = s.feed(&bad);
        assert!(out[0].len() <= MAX_LINE_BYTES, "{}", out[0].len());
        assert!(out[0].starts_with('\u{FFFD}'));
        // Exactly at the limit: unchanged.
        let mut exact = vec![b'z'; MAX_LINE_BYTES];
        exact.push(b'\n');
        assert_eq!(s.feed(&exact)[0].len(), MAX_LINE_BYTES);
        assert!(clip("é".repeat(MAX_LINE_BYTES)).len() <= MAX_LINE_BYTES);
    }
}
