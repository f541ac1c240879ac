//! The per-client password backoff over HTTP, on a real server: one client address spraying
//! wrong passwords over many holders waits, and meanwhile gets the same refusal even for
//! another holder's right password; a second address with the right password still logs in.
//! The broker's clock is injected, so nothing sleeps.

use super::*;
use broker_protocol::api::PasswordLogin;
use broker_server::http::{Limits, serve_limited};
use kagi_signed::password;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// 2026-01-01 10:30:00 UTC, in milliseconds.
const T0: i64 = 1_767_263_400_000;

/// A password login sent from the local address `from` over a new connection: the status
/// code and the body.
async fn login_from(from: &str, server: SocketAddr, holder: &str, pw: &str) -> (u16, String) {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut s = sock.connect(server).await.unwrap();
    let body = serde_json::to_string(&PasswordLogin {
        holder: holder.into(),
        password: pw.into(),
    })
    .unwrap();
    let req = format!(
        "POST /v1/holder/login-password HTTP/1.1\r\nHost: kagi\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_spraying_passwords_waits_and_another_still_logs_in() {
    let w = World::new("http-backoff", 1);
    let clock = ManualClock::at(T0);
    let b = w.broker_with(&clock, PwPolicy::cheap_for_tests()).await;
    let verifier = password::new_verifier("correct horse", &PwPolicy::cheap_for_tests().new);
    w.admin(
        &b,
        AdminRequest::EnrolCard {
            card: "CARD-HTTP".into(),
            holder: "alice".into(),
            password: Some(verifier.unwrap()),
        },
    )
    .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // The per-address rate limit off: only the backoff answers here.
    let limits = Limits {
        rate_per_second: 0,
        ..Limits::default()
    };
    let server = tokio::spawn(async move {
        serve_limited(
            b,
            listener,
            async {
                let _ = stopped.await;
            },
            None,
            Duration::from_secs(3600),
            &limits,
        )
        .await
    });

    // 127.0.0.2 tries 20 holders with wrong passwords: each refused alike.
    let (status, wrong) = login_from("127.0.0.2", addr, "guess-0", "x").await;
    assert_eq!(status, 401, "{wrong}");
    assert!(wrong.contains("login.wrong-password"), "{wrong}");
    for i in 1..20 {
        let got = login_from("127.0.0.2", addr, &format!("guess-{i}"), "x").await;
        assert_eq!(got, (401, wrong.clone()), "try {i}");
    }
    // Now it waits: alice's right password from it gets the very same refusal.
    for _ in 0..3 {
        let got = login_from("127.0.0.2", addr, "alice", "correct horse").await;
        assert_eq!(
            got,
            (401, wrong.clone()),
            "a right password during the wait"
        );
    }
    // Another address is not held up: alice logs in from 127.0.0.3.
    let (status, session) = login_from("127.0.0.3", addr, "alice", "correct horse").await;
    assert_eq!(status, 200, "{session}");
    assert!(session.contains("\"assurance\""), "{session}");
    // The wait is over after its time (1 s for the first): no lasting lock.
    clock.advance(1_000);
    let (status, session) = login_from("127.0.0.2", addr, "alice", "correct horse").await;
    assert_eq!(status, 200, "{session}");

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
