//! The relay names its protocol version on every request (`kagi-relay-version`), and a TSM
//! that does not speak it says so in words before decoding anything: a phone app and the
//! servers are upgraded apart, and another version's messages may not even decode. The
//! header and the numbers are written out here, not taken from the code.

use super::*;
use tsm_protocol::relay::{AgentMsg, ServerMsg};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_of_another_protocol_version_is_told_what_to_update() {
    let world = World::new("relay-version");
    let (server, _backend, _sp, _mno) = world.serve().await;
    let hello = tsm_protocol::codec::encode(&AgentMsg::Hello {
        ticket: "no-such-ticket".into(),
        agent: "version test".into(),
        resume: None,
        credentials: None,
        prepared: None,
    })
    .unwrap();
    let http = reqwest::Client::new();
    let post = |version: Option<&str>| {
        let mut r = http
            .post(format!("{}/v1/relay", server.url))
            .header("content-type", "application/octet-stream")
            .body(hello.clone());
        if let Some(v) = version {
            r = r.header("kagi-relay-version", v);
        }
        r.send()
    };
    // Version 1: spoken; the unknown ticket gets the protocol's own refusal.
    let r = post(Some("1")).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["kagi-relay-version"], "1");
    match tsm_protocol::codec::decode::<ServerMsg>(&r.bytes().await.unwrap()).unwrap() {
        ServerMsg::Stop {
            outcome, message, ..
        } => {
            assert_eq!(outcome, StopOutcome::Refused);
            assert!(message.contains("ticket"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // No version, a newer one, an older one, not a number: a 400 that says what to do.
    for (version, says) in [
        (None, "update the app"),
        (Some("2"), "update the server"),
        (Some("0"), "update the app"),
        (Some("one"), "update the app"),
    ] {
        let r = post(version).await.unwrap();
        assert_eq!(r.status().as_u16(), 400, "{version:?}");
        let text = r.text().await.unwrap();
        assert!(
            text.contains("relay protocol version") && text.contains(says),
            "{version:?}: {text}"
        );
        assert!(text.contains("speaks 1"), "{version:?}: {text}");
    }
    server.stop().await;
}
