//! The client's incremental SSE parser: any bytes, fed in any chunking, never panic; fed in two
//! chunks split at a character boundary, the messages are the same as fed at once.
#![no_main]

use guildnet_core::client::SseParser;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, body)) = data.split_first() else {
        return;
    };
    let mut whole = SseParser::default();
    let all = whole.feed(body);
    let at = (split as usize).min(body.len());
    let mut parts = SseParser::default();
    let mut got = parts.feed(&body[..at]);
    got.extend(parts.feed(&body[at..]));
    // A split inside a multi-byte character is a known limitation (see docs/BENCHMARKS.md).
    let boundary = std::str::from_utf8(&body[..at]).is_ok() && std::str::from_utf8(body).is_ok();
    if boundary {
        assert_eq!(all, got);
    }
    // Byte by byte.
    let mut bytes = SseParser::default();
    for b in body {
        let _ = bytes.feed(std::slice::from_ref(b));
    }
});
