//! The testbed's nginx (Debian's binary) in front of two small HTTP servers on loopback:
//! round-robin over both, a dead server skipped, primary/backup, and a streamed response passed
//! through chunk by chunk (not buffered), as server-sent events need.

use guildnet_testbed::nginx::Nginx;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

type Chunk = Result<String, std::convert::Infallible>;

/// A server answering `GET /who` with `name`, and `GET /stream` with a body whose chunks the
/// test sends through the returned channel's receiver (one stream at a time).
async fn server(
    name: &'static str,
) -> (
    SocketAddr,
    tokio::task::JoinHandle<()>,
    Arc<Mutex<Option<mpsc::Sender<Chunk>>>>,
) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let slot: Arc<Mutex<Option<mpsc::Sender<Chunk>>>> = Arc::default();
    let s = slot.clone();
    let app = axum::Router::new()
        .route("/who", axum::routing::get(move || async move { name }))
        .route(
            "/stream",
            axum::routing::get(move || {
                let s = s.clone();
                async move {
                    let (tx, rx) = mpsc::channel::<Chunk>(8);
                    *s.lock().unwrap() = Some(tx);
                    axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                }
            }),
        );
    let h = tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    (addr, h, slot)
}

async fn who(http: &reqwest::Client, url: &str) -> String {
    let r = http.get(format!("{url}/who")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{url}");
    r.text().await.unwrap()
}

#[tokio::test]
async fn round_robin_skips_a_dead_server_and_backup_serves_only_when_primary_is_down() {
    let (a, ha, _) = server("a").await;
    let (b, _hb, _) = server("b").await;
    let rr = Nginx::round_robin(&[a, b])
        .await
        .expect("the testbed's nginx must start (install it: scripts/testbed/install.sh nginx)");
    let pb = Nginx::primary_backup(a, b).await.unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();

    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(who(&http, &rr.url()).await);
    }
    assert!(
        seen.contains(&"a".to_owned()) && seen.contains(&"b".to_owned()),
        "{seen:?}"
    );
    for _ in 0..4 {
        assert_eq!(who(&http, &pb.url()).await, "a");
    }

    // Server a goes away: its port refuses connections.
    ha.abort();
    let _ = ha.await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..6 {
        assert_eq!(who(&http, &rr.url()).await, "b", "{}", rr.log_tail());
        assert_eq!(who(&http, &pb.url()).await, "b", "{}", pb.log_tail());
    }
}

#[tokio::test]
async fn a_streamed_response_passes_chunk_by_chunk() {
    let (a, _ha, slot) = server("a").await;
    let lb = Nginx::round_robin(&[a]).await.unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut resp = http
        .get(format!("{}/stream", lb.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let tx = slot
        .lock()
        .unwrap()
        .take()
        .expect("the stream reached the server");
    // Each chunk must arrive before the next is sent: a buffering proxy would hold the first
    // one back and this would time out.
    for i in 0..3 {
        tx.send(Ok(format!("data: {i}\n\n"))).await.unwrap();
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .expect("the chunk was not held back")
            .unwrap()
            .unwrap();
        assert_eq!(chunk, format!("data: {i}\n\n").as_bytes());
    }
    drop(tx);
    assert!(resp.chunk().await.unwrap().is_none());
}
