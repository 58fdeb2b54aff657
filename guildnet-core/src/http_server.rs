//! GuildNet's HTTP/1.1 server loop: the orchestrator, the dashboard (plain and TLS), the
//! operator's metrics endpoint and the agent's health endpoint all serve their routers with it.
//!
//! `axum::serve` keeps an idle keep-alive connection open forever and has no timer, so a client
//! that opens connections and sends nothing (or sends a header a byte a minute) holds memory and
//! a task per connection indefinitely. This loop serves each connection with hyper's HTTP/1
//! builder directly, with a timer: a connection that has not sent a complete request head within
//! [`ServerOptions::idle_timeout`] (counted from the end of the previous response, or from the
//! accept) is closed. A response that streams (SSE) or an upgraded connection (the editor's
//! WebSocket) is not reading a head, so it is never cut by this timeout.
//!
//! Request bodies have a deadline too ([`MinRateBody`]): a client that announces a body and then
//! trickles it (a byte every few seconds) is cut once it falls behind
//! [`ServerOptions::min_body_rate`] after a grace of one idle timeout.
//!
//! Shutdown is graceful: the listener stops accepting, idle connections close at once, busy
//! ones finish their current request, and [`serve`] returns once they all ended or
//! [`ServerOptions::drain_timeout`] passed.

use axum::Router;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::watch;
use tower::ServiceExt as _;

/// The default [`ServerOptions::idle_timeout`].
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How [`serve`] treats connections.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// A connection is closed when no complete request head arrived within this long after the
    /// accept or the previous response (idle keep-alive connections and slow-header clients).
    pub idle_timeout: Duration,
    /// After shutdown began, how long busy connections (long requests, editor WebSockets) may
    /// run before [`serve`] returns anyway.
    pub drain_timeout: Duration,
    /// Slowest request body accepted, in bytes per second, after a grace of `idle_timeout`
    /// (see [`MinRateBody`]).
    pub min_body_rate: u64,
}

/// The default [`ServerOptions::min_body_rate`]: 1 KiB/s.
pub const DEFAULT_MIN_BODY_RATE: u64 = 1024;

impl Default for ServerOptions {
    /// 30 s idle (more than any agent's heartbeat interval would need to reuse a connection,
    /// little enough that abandoned connections do not pile up), 10 s drain.
    fn default() -> Self {
        Self {
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            drain_timeout: Duration::from_secs(10),
            min_body_rate: DEFAULT_MIN_BODY_RATE,
        }
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains (see the module docs).
///
/// Any [`axum::serve::Listener`] works: a [`tokio::net::TcpListener`] (whose accept errors,
/// e.g. out of file descriptors, are retried after a pause) or one that yields TLS streams.
pub async fn serve<L>(
    mut listener: L,
    app: Router,
    opts: &ServerOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug + Clone + Send + Sync + 'static,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(opts.idle_timeout)
        .keep_alive(true);
    // Shutdown signal to the connection tasks, and a receiver each task holds until it ends:
    // when every receiver is gone, `closed()` on the sender resolves.
    let (signal_tx, signal_rx) = watch::channel(());
    let (done_tx, done_rx) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            a = listener.accept() => a,
        };
        let (grace, rate) = (opts.idle_timeout, opts.min_body_rate);
        // Handlers can see who is calling (`ConnectInfo<L::Addr>`), e.g. to throttle logins.
        let info = axum::extract::ConnectInfo(peer.clone());
        let service = TowerToHyperService::new(app.clone().map_request(
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(info.clone());
                req.map(|b| axum::body::Body::new(MinRateBody::new(b, grace, rate)))
            },
        ));
        let conn = http
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let mut signal = signal_rx.clone();
        let done = done_rx.clone();
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let res = tokio::select! {
                r = conn.as_mut() => r,
                _ = signal.changed() => {
                    // Idle: closes now; busy: after the current response.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = res {
                tracing::debug!(?peer, error = %e, "connection ended with an error");
            }
            drop(done);
        });
    }
    drop(listener);
    drop(signal_rx);
    drop(done_rx);
    let _ = signal_tx.send(());
    if tokio::time::timeout(opts.drain_timeout, done_tx.closed())
        .await
        .is_err()
    {
        tracing::warn!(
            after = ?opts.drain_timeout,
            "connections still open after the drain timeout; stopping anyway"
        );
    }
    Ok(())
}

/// A response body already in memory, in pieces: written as they are (no copy into one
/// buffer), with its exact length (so the response carries `Content-Length`).
pub struct ChunksBody {
    chunks: std::collections::VecDeque<Bytes>,
    left: u64,
}

impl ChunksBody {
    /// The body made of `chunks`, in order.
    pub fn new(chunks: Vec<Bytes>) -> Self {
        let left = chunks.iter().map(|c| c.len() as u64).sum();
        Self {
            chunks: chunks.into_iter().filter(|c| !c.is_empty()).collect(),
            left,
        }
    }
}

impl HttpBody for ChunksBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let next = self.chunks.pop_front();
        if let Some(c) = &next {
            self.left -= c.len() as u64;
        }
        Poll::Ready(next.map(|c| Ok(Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

/// A request body with a deadline that grows with the data: it must be complete within
/// `grace + received / min_rate`. A normal upload never notices; a client that trickles a body
/// to hold a connection (and a task, and memory) open is cut after `grace`, and the handler
/// sees a body error (the connection then closes).
///
/// tower-http's `TimeoutBody` times out a single frame; a byte every few seconds passes that,
/// so the rate rule is written here.
pub struct MinRateBody<B> {
    inner: B,
    start: tokio::time::Instant,
    grace: Duration,
    min_rate: u64,
    received: u64,
    /// The deadline's timer, armed the first time the body is not ready at once (a body that
    /// arrived with its head, the common case, never registers a timer).
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> MinRateBody<B> {
    /// Wraps `inner`.
    pub fn new(inner: B, grace: Duration, min_rate: u64) -> Self {
        let start = tokio::time::Instant::now();
        Self {
            inner,
            start,
            grace,
            min_rate: min_rate.max(1),
            received: 0,
            sleep: None,
        }
    }

    fn deadline(&self) -> tokio::time::Instant {
        let earned = Duration::from_secs_f64(self.received as f64 / self.min_rate as f64);
        self.start + self.grace + earned
    }
}

/// The error a [`MinRateBody`] ends with when the client is too slow.
#[derive(Debug, thiserror::Error)]
#[error("request body too slow: {received} bytes in {elapsed:?} (at least {min_rate} bytes/s after {grace:?})")]
pub struct BodyTooSlow {
    received: u64,
    elapsed: Duration,
    min_rate: u64,
    grace: Duration,
}

impl<B> HttpBody for MinRateBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.received = this.received.saturating_add(d.len() as u64);
                    let deadline = this.deadline();
                    if let Some(sleep) = this.sleep.as_mut() {
                        sleep.as_mut().reset(deadline);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let deadline = this.deadline();
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTooSlow {
                        received: this.received,
                        elapsed: this.start.elapsed(),
                        min_rate: this.min_rate,
                        grace: this.grace,
                    })))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn start(
        opts: ServerOptions,
    ) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let app = Router::new().route("/", axum::routing::get(|| async { "hi" }));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = serve(listener, app, &opts, async {
                let _ = rx.await;
            })
            .await;
        });
        (addr, tx)
    }

    /// Reads until EOF or `limit`; returns what came and whether the peer closed.
    async fn read_all(s: &mut tokio::net::TcpStream, limit: Duration) -> (String, bool) {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        let closed = loop {
            match tokio::time::timeout(limit, s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break true,
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                Err(_) => break false,
            }
        };
        (String::from_utf8_lossy(&got).into_owned(), closed)
    }

    #[tokio::test]
    async fn a_trickled_body_is_cut_and_a_steady_one_is_read() {
        let app = Router::new().route(
            "/echo",
            axum::routing::post(|body: Bytes| async move { format!("got {}", body.len()) }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let opts = ServerOptions {
            idle_timeout: Duration::from_millis(300),
            drain_timeout: Duration::from_secs(1),
            min_body_rate: 1000,
        };
        tokio::spawn(async move { serve(listener, app, &opts, std::future::pending()).await });

        // 100,000 bytes announced, one byte every 100 ms: cut after the grace.
        let mut slow = tokio::net::TcpStream::connect(addr).await.expect("connect");
        slow.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
            .await
            .expect("head");
        let started = std::time::Instant::now();
        let mut closed = false;
        for _ in 0..40 {
            if slow.write_all(b"x").await.is_err() {
                closed = true;
                break;
            }
            let mut buf = [0u8; 512];
            match tokio::time::timeout(Duration::from_millis(100), slow.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    closed = true;
                    break;
                }
                Ok(Ok(_)) => {} // an error response; EOF follows
                Err(_) => {}
            }
        }
        assert!(closed, "a trickled body is cut");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );

        // 20,000 bytes in 10 chunks over ~0.5 s (40 KB/s) are read whole.
        let mut steady = tokio::net::TcpStream::connect(addr).await.expect("connect");
        steady
            .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 20000\r\n\r\n")
            .await
            .expect("head");
        for _ in 0..10 {
            steady.write_all(&[b'y'; 2000]).await.expect("chunk");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (resp, _) = read_all(&mut steady, Duration::from_secs(2)).await;
        assert!(resp.ends_with("got 20000"), "{resp}");
    }

    #[tokio::test]
    async fn idle_and_slow_header_connections_are_closed() {
        let opts = ServerOptions {
            idle_timeout: Duration::from_millis(300),
            drain_timeout: Duration::from_secs(1),
            ..Default::default()
        };
        let (addr, _stop) = start(opts).await;

        // Keep-alive: a request is answered, then the idle connection is closed by the server.
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let (resp, closed) = read_all(&mut s, Duration::from_secs(3)).await;
        assert!(
            resp.starts_with("HTTP/1.1 200") && resp.ends_with("hi"),
            "{resp}"
        );
        assert!(closed, "an idle keep-alive connection is closed");

        // A head sent a byte at a time, never finished: closed too.
        let mut slow = tokio::net::TcpStream::connect(addr).await.expect("connect");
        slow.write_all(b"GET / HT").await.expect("write");
        let (_, closed) = read_all(&mut slow, Duration::from_secs(3)).await;
        assert!(closed, "a never-finished head is cut");

        // A connection that keeps sending requests within the timeout stays open.
        let mut busy = tokio::net::TcpStream::connect(addr).await.expect("connect");
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            busy.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .expect("reused connection still open");
            let mut buf = [0u8; 256];
            let n = busy.read(&mut buf).await.expect("read");
            assert!(
                buf[..n].starts_with(b"HTTP/1.1 200"),
                "reused connection answers"
            );
        }
    }

    #[tokio::test]
    async fn streams_and_upgraded_connections_outlive_the_idle_timeout() {
        use axum::body::Body;
        use axum::http::{Request, Response, StatusCode};
        let app = Router::new()
            // A body that sends its second chunk after three idle timeouts (like SSE).
            .route(
                "/stream",
                axum::routing::get(|| async {
                    let chunks = async_stream_chunks();
                    Response::new(Body::from_stream(chunks))
                }),
            )
            // An upgrade whose peer is quiet for three idle timeouts, then echoes (like the
            // editor's WebSocket).
            .route(
                "/upgrade",
                axum::routing::get(|mut req: Request<Body>| async move {
                    let on = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        if let Ok(up) = on.await {
                            let mut io = hyper_util::rt::TokioIo::new(up);
                            let mut b = [0u8; 4];
                            if io.read_exact(&mut b).await.is_ok() {
                                let _ = io.write_all(&b).await;
                            }
                        }
                    });
                    Response::builder()
                        .status(StatusCode::SWITCHING_PROTOCOLS)
                        .header("connection", "upgrade")
                        .header("upgrade", "echo")
                        .body(Body::empty())
                        .expect("response")
                }),
            );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let opts = ServerOptions {
            idle_timeout: Duration::from_millis(200),
            drain_timeout: Duration::from_secs(1),
            ..Default::default()
        };
        tokio::spawn(async move { serve(listener, app, &opts, std::future::pending()).await });

        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let (got, _) = read_all(&mut s, Duration::from_secs(3)).await;
        assert!(got.contains("first") && got.contains("second"), "{got}");

        let mut u = tokio::net::TcpStream::connect(addr).await.expect("connect");
        u.write_all(
            b"GET /upgrade HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
        )
        .await
        .expect("write");
        let mut head = [0u8; 512];
        let n = u.read(&mut head).await.expect("read");
        assert!(
            head[..n].starts_with(b"HTTP/1.1 101"),
            "{:?}",
            String::from_utf8_lossy(&head[..n])
        );
        tokio::time::sleep(Duration::from_millis(600)).await;
        u.write_all(b"ping")
            .await
            .expect("upgraded connection still open");
        let mut echo = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(2), u.read_exact(&mut echo))
            .await
            .expect("echo in time")
            .expect("echo");
        assert_eq!(&echo, b"ping");
    }

    fn async_stream_chunks(
    ) -> impl futures_util::Stream<Item = Result<axum::body::Bytes, std::io::Error>> {
        futures_util::stream::unfold(0u8, |i| async move {
            match i {
                0 => Some((Ok(axum::body::Bytes::from_static(b"first\n")), 1)),
                1 => {
                    tokio::time::sleep(Duration::from_millis(600)).await;
                    Some((Ok(axum::body::Bytes::from_static(b"second\n")), 2))
                }
                _ => None,
            }
        })
    }

    #[tokio::test]
    async fn shutdown_stops_accepting_and_returns() {
        let app = Router::new().route("/", axum::routing::get(|| async { "hi" }));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let opts = ServerOptions::default();
        let server = tokio::spawn(async move {
            serve(listener, app, &opts, async {
                let _ = rx.await;
            })
            .await
        });
        // An idle connection does not hold the shutdown up.
        let _idle = tokio::net::TcpStream::connect(addr).await.expect("connect");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = tx.send(());
        let r = tokio::time::timeout(Duration::from_secs(3), server)
            .await
            .expect("serve returns promptly");
        assert!(matches!(r, Ok(Ok(()))), "{r:?}");
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "the listener is closed"
        );
    }
}
