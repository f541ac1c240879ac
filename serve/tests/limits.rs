//! The limits of kagi-serve against misbehaving clients over real sockets: slow headers, slow
//! bodies, idle connections, a flood of connections past the cap, a burst of logins. Small
//! configured limits; the only time bounds are generous "closed within" bounds.

use axum::Router;
use axum::body::Bytes;
use axum::routing::{get, post};
use kagi_serve::{Limits, peer_rate_limited, rate_limited};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Far more than any limit under test: a connection the server should have closed is still
/// open after this.
const BOUND: Duration = Duration::from_secs(15);

fn app(limits: &Limits) -> Router {
    let limited = rate_limited(
        Router::new().route("/v1/login", post(|| async { "welcome\n" })),
        limits,
    );
    let peers = peer_rate_limited(
        Router::new().route("/v1/peer", post(|| async { "signed\n" })),
        limits,
    );
    Router::new()
        .merge(peers)
        .route("/v1/health", get(|| async { "ok\n" }))
        .route(
            "/v1/echo",
            post(|b: Bytes| async move { format!("{}\n", b.len()) }),
        )
        .merge(limited)
}

async fn start(limits: Limits) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let router = app(&limits);
    tokio::spawn(async move {
        kagi_serve::serve_limited(
            router,
            listener,
            async move {
                let _ = rx.await;
            },
            None,
            &limits,
            Duration::from_secs(3600),
            || async {},
        )
        .await
        .unwrap();
    });
    (addr, tx)
}

/// Reads until the server closes the connection (EOF or reset), within `BOUND`: what it sent
/// before, or `None` if the connection was still open at the bound.
async fn closed_within(s: &mut TcpStream, bound: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let r = tokio::time::timeout(bound, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    r.ok().map(|_| got)
}

/// One request on a new connection: the raw answer (status line first), or `None` if the
/// connection was closed without one.
async fn request(addr: SocketAddr, raw: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw.as_bytes()).await.ok()?;
    let got = closed_within(&mut s, BOUND)
        .await
        .expect("answered and closed");
    (!got.is_empty()).then(|| String::from_utf8_lossy(&got).into_owned())
}

fn get_req(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: kagi\r\nConnection: close\r\n\r\n")
}

fn post_req(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: kagi\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn limits() -> Limits {
    Limits {
        header_read_timeout: Duration::from_secs(1),
        body_read_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(30),
        max_connections: 8,
        health_reserve: 2,
        rate_per_second: 1,
        rate_burst: 2,
        peer_rate_per_second: 1,
        peer_rate_burst: 4,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_header_connections_are_closed() {
    let (addr, _stop) = start(limits()).await;
    let mut conns = Vec::new();
    for _ in 0..6 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        // Half a header, never finished.
        s.write_all(b"GET /v1/health HTTP/1.1\r\nHost: ka")
            .await
            .unwrap();
        conns.push(s);
    }
    for (i, s) in conns.iter_mut().enumerate() {
        let got = closed_within(s, BOUND).await;
        assert!(
            got.is_some(),
            "slow-header connection {i} still open after {BOUND:?}"
        );
        // Nothing was answered to the unfinished request, beyond a possible 408.
        let text = String::from_utf8_lossy(got.as_deref().unwrap_or_default()).into_owned();
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 408"),
            "{text}"
        );
    }
    // The server still answers whole requests.
    let a = request(addr, &get_req("/v1/health")).await.unwrap();
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_body_and_idle_connections_are_closed() {
    let l = Limits {
        header_read_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(1),
        body_read_timeout: Duration::from_secs(1),
        ..limits()
    };
    let (addr, _stop) = start(l).await;
    // A connection that sends nothing at all (the header timeout is long here): the idle
    // timeout closes it.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let got = closed_within(&mut idle, BOUND).await;
    assert_eq!(got.as_deref(), Some(&[][..]), "idle connection still open");

    // A body announced as 100 bytes, 10 sent, then a byte every 300 ms (so the connection
    // is never idle): the body-read timeout ends the request.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(
        b"POST /v1/echo HTTP/1.1\r\nHost: kagi\r\nContent-Length: 100\r\n\r\n0123456789",
    )
    .await
    .unwrap();
    let (mut rd, mut wr) = slow.into_split();
    let dripper = tokio::spawn(async move {
        for _ in 0..80 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if wr.write_all(b"x").await.is_err() {
                return;
            }
        }
    });
    let mut got = Vec::new();
    let finished = tokio::time::timeout(BOUND, async {
        let mut buf = [0u8; 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    dripper.abort();
    assert!(
        finished.is_ok(),
        "slow body still being read after {BOUND:?}"
    );
    let text = String::from_utf8_lossy(&got);
    assert!(
        !text.starts_with("HTTP/1.1 200"),
        "a body that never arrived whole was served: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_cap_connections_are_refused_and_health_stays_reachable() {
    let l = Limits {
        header_read_timeout: Duration::from_secs(2),
        ..limits()
    };
    let (cap, reserve) = (l.max_connections, l.health_reserve);
    let (addr, _stop) = start(l).await;
    // 200 connections that send half a header and wait.
    let mut conns = Vec::new();
    for _ in 0..200 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /v1/health HTTP/1.1\r\n").await.unwrap();
        conns.push(s);
    }
    // Those past the cap and its reserve are closed at once, without an answer; those inside
    // are closed by the header timeout. Every one is closed within the bound.
    let mut unanswered = 0;
    for s in conns.iter_mut() {
        let got = closed_within(s, BOUND).await.expect("closed");
        if got.is_empty() {
            unanswered += 1;
        }
    }
    assert!(
        unanswered >= 200 - cap - reserve,
        "{unanswered} of 200 closed"
    );

    // Health answers once the slow clients are gone, and while the cap is full of slow
    // clients it still answers on the reserve, where other paths are refused with 503.
    // Fill the cap with slow clients, one more each time a request for another path is still
    // served in full, until such a request lands on the reserve (503). (The slow clients of
    // above give their slots back a little after their sockets close, hence the loop.)
    let mut hold = Vec::new();
    let mut last = None;
    for _ in 0..400 {
        last = request(addr, &post_req("/v1/echo", "hi")).await;
        match last.as_deref() {
            Some(a) if a.starts_with("HTTP/1.1 503") => break,
            Some(_) => {
                let mut s = TcpStream::connect(addr).await.unwrap();
                s.write_all(b"GET /v1/health HTTP/1.1\r\n").await.unwrap();
                hold.push(s);
            }
            None => {
                hold.clear();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let a = last.unwrap_or_default();
    assert!(
        a.starts_with("HTTP/1.1 503"),
        "an over-the-cap connection is served by the reserve: {a}"
    );
    assert!(a.contains("connection limit"), "{a}");
    assert!(a.to_ascii_lowercase().contains("retry-after: 1"), "{a}");
    let h = request(addr, &get_req("/v1/health")).await.unwrap();
    assert!(h.starts_with("HTTP/1.1 200") && h.ends_with("ok\n"), "{h}");
    drop(hold);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_answers_429_with_retry_after() {
    let (addr, _stop) = start(limits()).await;
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(request(addr, &post_req("/v1/login", "")).await.unwrap());
    }
    assert!(answers[0].starts_with("HTTP/1.1 200"), "{}", answers[0]);
    assert!(answers[1].starts_with("HTTP/1.1 200"), "{}", answers[1]);
    let over = answers
        .iter()
        .find(|a| a.starts_with("HTTP/1.1 429"))
        .expect("a burst past the limit gets 429");
    let retry = over
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("retry-after: ")
                .map(str::to_string)
        })
        .expect("Retry-After");
    let secs: u64 = retry.trim().parse().expect("Retry-After in seconds");
    assert!(secs <= 2, "wait {secs}s at one request a second");
    // Unlimited routes are not counted.
    for _ in 0..5 {
        let h = request(addr, &get_req("/v1/health")).await.unwrap();
        assert!(h.starts_with("HTTP/1.1 200"), "{h}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_rate_turns_the_limit_off() {
    let (addr, _stop) = start(Limits {
        rate_per_second: 0,
        ..limits()
    })
    .await;
    for _ in 0..6 {
        let a = request(addr, &post_req("/v1/login", "")).await.unwrap();
        assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    }
}

/// The services' signed endpoints have their own rate: a burst of logins does not spend it,
/// and past its own burst (4 here) a peer gets `429` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_have_their_own_rate() {
    let (addr, _stop) = start(limits()).await;
    for _ in 0..3 {
        request(addr, &post_req("/v1/login", "")).await.unwrap();
    }
    let mut answers = Vec::new();
    for _ in 0..6 {
        answers.push(request(addr, &post_req("/v1/peer", "")).await.unwrap());
    }
    for (i, a) in answers.iter().take(4).enumerate() {
        assert!(a.starts_with("HTTP/1.1 200"), "peer request {i}: {a}");
    }
    assert!(
        answers
            .iter()
            .skip(4)
            .any(|a| a.starts_with("HTTP/1.1 429")),
        "{answers:?}"
    );
    // Off at 0.
    let (addr, _stop2) = start(Limits {
        peer_rate_per_second: 0,
        ..limits()
    })
    .await;
    for _ in 0..8 {
        let a = request(addr, &post_req("/v1/peer", "")).await.unwrap();
        assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    }
}
