//! One accepted connection: the connection cap (with a reserve for `/v1/health`), the idle
//! timeout on the socket, the body-read deadline and the peer's address for the rate limit.

use crate::Limits;
use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response, StatusCode};
use axum::routing::future::RouteFuture;
use hyper::body::Incoming;
use std::convert::Infallible;
use std::future::{Future, Ready};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// The path answered on the reserve connections.
pub const HEALTH: &str = "/v1/health";

/// Takes a slot for each new connection: a full one (every route), else a reserve one
/// (`/v1/health` only), else refuses the connection (it is closed at once).
#[derive(Clone)]
pub(crate) struct CapAcceptor {
    full: Router,
    health_only: Router,
    slots: Arc<Semaphore>,
    reserve: Arc<Semaphore>,
    idle: Duration,
    body: Duration,
    refusals: Arc<Refusals>,
}

/// Connections refused at the cap, logged as one summary line per second at most, so a flood
/// of connections cannot flood the log too.
#[derive(Default)]
struct Refusals {
    /// Refused since the last line.
    pending: std::sync::atomic::AtomicU64,
    /// When the last line was written (milliseconds since `start`).
    last_ms: std::sync::atomic::AtomicU64,
    start: std::sync::OnceLock<std::time::Instant>,
}

impl Refusals {
    /// Counts one refusal; returns how many to report now, if a line is due.
    fn refused(&self) -> Option<u64> {
        use std::sync::atomic::Ordering::{AcqRel, Relaxed};
        self.pending.fetch_add(1, AcqRel);
        let now = u64::try_from(
            self.start
                .get_or_init(std::time::Instant::now)
                .elapsed()
                .as_millis(),
        )
        .unwrap_or(u64::MAX)
        .saturating_add(1000);
        let last = self.last_ms.load(Relaxed);
        if now.saturating_sub(last) < 1000 {
            return None;
        }
        // One writer wins the line for this second; the others keep counting.
        self.last_ms
            .compare_exchange(last, now, AcqRel, Relaxed)
            .ok()
            .map(|_| self.pending.swap(0, AcqRel))
    }
}

impl CapAcceptor {
    pub(crate) fn new(router: Router, limits: &Limits) -> CapAcceptor {
        let health_only = router.clone().layer(axum::middleware::from_fn(
            |req: Request<Body>, next: axum::middleware::Next| async move {
                if req.uri().path() == HEALTH {
                    next.run(req).await
                } else {
                    busy()
                }
            },
        ));
        CapAcceptor {
            full: router,
            health_only,
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            reserve: Arc::new(Semaphore::new(limits.health_reserve)),
            refusals: Arc::default(),
            idle: limits.idle_timeout,
            body: limits.body_read_timeout,
        }
    }
}

fn busy() -> Response<Body> {
    let mut r = Response::new(Body::from(
        "the server is at its connection limit: retry later\n",
    ));
    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    r.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from_static("1"),
    );
    r
}

impl<S> axum_server::accept::Accept<TcpStream, S> for CapAcceptor {
    type Stream = Guarded<TcpStream>;
    type Service = Conn;
    type Future = Ready<io::Result<(Guarded<TcpStream>, Conn)>>;

    fn accept(&self, stream: TcpStream, _service: S) -> Self::Future {
        let (permit, router) = match self.slots.clone().try_acquire_owned() {
            Ok(p) => (p, self.full.clone()),
            Err(_) => match self.reserve.clone().try_acquire_owned() {
                Ok(p) => (p, self.health_only.clone()),
                Err(_) => {
                    if let Some(n) = self.refusals.refused() {
                        tracing::warn!(
                            refused = n,
                            "connections refused: at the connection cap and its reserve (one line per second at most)"
                        );
                    }
                    return std::future::ready(Err(io::Error::other("at the connection cap")));
                }
            },
        };
        let peer = match stream.peer_addr() {
            Ok(a) => a,
            Err(e) => return std::future::ready(Err(e)),
        };
        let _ = stream.set_nodelay(true);
        std::future::ready(Ok((
            Guarded::new(stream, permit, self.idle),
            Conn {
                router,
                peer,
                body: self.body,
            },
        )))
    }
}

/// A socket holding its connection slot (given back when the connection ends), closed with
/// `TimedOut` when no byte has moved either way for the idle timeout.
pub(crate) struct Guarded<T> {
    inner: T,
    _slot: OwnedSemaphorePermit,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
}

impl<T> Guarded<T> {
    fn new(inner: T, slot: OwnedSemaphorePermit, idle: Duration) -> Guarded<T> {
        Guarded {
            inner,
            _slot: slot,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
        }
    }

    fn moved(&mut self) {
        let at = Instant::now() + self.idle;
        self.timer.as_mut().reset(at);
    }

    /// On a pending read or write: an error once the idle time has passed.
    fn check(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                "idle connection closed",
            )),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.moved();
                }
                Poll::Ready(r)
            }
            Poll::Pending => self.check(cx).map(Err),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    self.moved();
                }
                Poll::Ready(r)
            }
            Poll::Pending => self.check(cx).map(Err),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    self.moved();
                }
                Poll::Ready(r)
            }
            Poll::Pending => self.check(cx).map(Err),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Ready(r) => Poll::Ready(r),
            Poll::Pending => self.check(cx).map(Err),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The service of one connection: the router, told the peer's address ([`ConnectInfo`], for
/// the rate limit), with a deadline on reading each request's body.
#[derive(Clone)]
pub(crate) struct Conn {
    router: Router,
    peer: SocketAddr,
    body: Duration,
}

impl tower::Service<Request<Incoming>> for Conn {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = RouteFuture<Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let deadline = self.body;
        let mut req = req.map(|b| Body::new(DeadlineBody::new(b, deadline)));
        req.extensions_mut().insert(ConnectInfo(self.peer));
        tower::Service::call(&mut self.router, req)
    }
}

/// A request body that fails once its deadline (set when the request arrived) has passed.
struct DeadlineBody {
    inner: Incoming,
    deadline: Pin<Box<Sleep>>,
}

impl DeadlineBody {
    fn new(inner: Incoming, within: Duration) -> DeadlineBody {
        DeadlineBody {
            inner,
            deadline: Box::pin(tokio::time::sleep(within)),
        }
    }
}

/// The body did not arrive whole in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within the body-read timeout")]
struct BodyTimeout;

impl http_body::Body for DeadlineBody {
    type Data = axum::body::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyTimeout))));
        }
        let r = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        Poll::Ready(r.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod refusal_tests {
    use super::Refusals;

    /// A burst of refusals gives one line, counting the whole burst, not one line each.
    #[test]
    fn a_burst_of_refusals_is_one_line() {
        let r = Refusals::default();
        let lines: Vec<u64> = (0..500).filter_map(|_| r.refused()).collect();
        assert_eq!(
            lines,
            vec![1],
            "the first refusal is reported at once, the rest wait"
        );
        assert_eq!(r.pending.load(std::sync::atomic::Ordering::Relaxed), 499);
    }
}
