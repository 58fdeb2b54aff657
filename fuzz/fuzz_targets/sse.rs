//! The client's SSE reading ([`sse_messages`], over the eventsource-stream crate): any bytes,
//! fed in any chunking, never panic; split in two anywhere (inside a character too), the
//! messages are the same as fed at once.
#![no_main]

use futures_util::{FutureExt, StreamExt};
use guildnet_core::client::{sse_messages, SseMessage};
use libfuzzer_sys::fuzz_target;

/// The messages of `chunks` up to the first error.
fn parse(chunks: Vec<Vec<u8>>) -> Vec<SseMessage> {
    let body = futures_util::stream::iter(chunks.into_iter().map(Ok::<_, std::convert::Infallible>));
    sse_messages(body)
        .take_while(|r| std::future::ready(r.is_ok()))
        .filter_map(|r| std::future::ready(r.ok()))
        .collect::<Vec<_>>()
        .now_or_never()
        .unwrap_or_default()
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, body)) = data.split_first() else {
        return;
    };
    let all = parse(vec![body.to_vec()]);
    let at = (split as usize).min(body.len());
    let got = parse(vec![body[..at].to_vec(), body[at..].to_vec()]);
    if std::str::from_utf8(body).is_ok() {
        assert_eq!(all, got);
    }
    // Byte by byte.
    let _ = parse(body.iter().map(|b| vec![*b]).collect());
});
