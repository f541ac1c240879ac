//! The MNO-TSM's receipt for a SIM preparation rides back with the relay: the SP-TSM checks
//! it (signed by the MNO-TSM serving the SIM, to this SP-TSM, for the MNO-TSM operation its
//! answer named, on this SIM) instead of asking the MNO-TSM a second time. A relay that
//! drops it, alters one byte of it or hands back another download's receipt does not break
//! the download: the SP-TSM asks, as before. Counted at the MNO-TSM: the SP-TSM's signed
//! requests in its replay table (the SIM's record at the issue, then one `PrepareSim` with
//! the receipt, two without).

use super::two_services::{MNO_TSM, at_mno, registered_blank_sim, start_two};
use super::*;
use std::sync::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tsm_protocol::Sealed;
use tsm_protocol::relay::AgentMsg;

/// What the relay's path to the SP-TSM does to the receipt it carries back.
#[derive(Clone)]
enum Tamper {
    Keep,
    Drop,
    FlipSignature,
    Substitute(Sealed),
}

/// A loopback HTTP/1.1 proxy in front of the SP-TSM's relay endpoint that applies a
/// [`Tamper`] to each `Hello` carrying a receipt and keeps the last receipt it saw.
struct Proxy {
    url: String,
    tamper: Arc<Mutex<Tamper>>,
    seen: Arc<Mutex<Option<Sealed>>>,
}

async fn forward(
    mut sock: tokio::net::TcpStream,
    target: String,
    tamper: Arc<Mutex<Tamper>>,
    seen: Arc<Mutex<Option<Sealed>>>,
) {
    let http = reqwest::Client::new();
    let mut buf = Vec::new();
    loop {
        // The request head, then its body (Content-Length).
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 4096];
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let mut body = buf[head_end..head_end + len].to_vec();
        buf.drain(..head_end + len);
        if let Ok(AgentMsg::Hello {
            ticket,
            agent,
            resume,
            credentials,
            prepared: Some(receipt),
        }) = tsm_protocol::codec::decode::<AgentMsg>(&body)
        {
            *seen.lock().unwrap() = Some(receipt.clone());
            let prepared = match tamper.lock().unwrap().clone() {
                Tamper::Keep => Some(receipt),
                Tamper::Drop => None,
                Tamper::FlipSignature => {
                    let mut r = receipt;
                    r.signature[10] ^= 1;
                    Some(r)
                }
                Tamper::Substitute(other) => Some(other),
            };
            body = tsm_protocol::codec::encode(&AgentMsg::Hello {
                ticket,
                agent,
                resume,
                credentials,
                prepared,
            })
            .unwrap();
        }
        // The relay's protocol version goes along (the TSM refuses a request without it).
        let version = head
            .lines()
            .find_map(|l| l.strip_prefix("kagi-relay-version:"))
            .map(str::trim)
            .unwrap_or("")
            .to_string();
        let answer = http
            .post(format!("{target}{path}"))
            .header("content-type", "application/octet-stream")
            .header("kagi-relay-version", version)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = answer.status().as_u16();
        let bytes = answer.bytes().await.unwrap();
        let reply = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\n\r\n",
            bytes.len()
        );
        if sock.write_all(reply.as_bytes()).await.is_err() || sock.write_all(&bytes).await.is_err()
        {
            return;
        }
    }
}

impl Proxy {
    async fn start(target: &str) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let tamper = Arc::new(Mutex::new(Tamper::Keep));
        let seen = Arc::new(Mutex::new(None));
        let (t, s, target) = (tamper.clone(), seen.clone(), target.to_string());
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(forward(sock, target.clone(), t.clone(), s.clone()));
            }
        });
        Proxy { url, tamper, seen }
    }
}

/// The SP-TSM's signed requests in the MNO-TSM's replay table.
async fn asked(mno: &Store, sp_tsm: &PartyId) -> i64 {
    mno.query(
        "SELECT count(*) FROM replay WHERE sender = $1",
        vec![sp_tsm.0.clone().into()],
    )
    .await
    .unwrap()[0][0]
        .int()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mno_tsm_receipt_comes_back_with_the_relay_and_a_tampered_one_is_not_trusted() {
    let _log = tsm_log();
    let name = "relayed-receipt";
    let world = World::new(name);
    let dir = std::env::temp_dir().join(format!("kagi-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (mno_backend, sp_backend) = (
        Backend::Sqlite(dir.join("mno.db")),
        Backend::Sqlite(dir.join("sp.db")),
    );
    let me = Signer::generate(party(MNO_TSM)).unwrap();
    let other = Signer::generate(party("tsm:other-sp")).unwrap();
    let (mno_server, sp_server) = start_two(&world, &me, &other, &mno_backend, &sp_backend).await;
    let sp = world.client_party(&world.sp, &sp_server.url);
    let operator = at_mno(&world.mno, &me, &mno_server.url);
    let proxy = Proxy::start(&sp_server.url).await;
    let mno_store = Store::open(&mno_backend).await.unwrap();
    let sp_tsm = world.tsm.party().clone();

    let mut first_receipt = None;
    for (i, label) in ["kept", "dropped", "altered", "another download's"]
        .into_iter()
        .enumerate()
    {
        let tamper = match (i, &first_receipt) {
            (0, _) => Tamper::Keep,
            (1, _) => Tamper::Drop,
            (2, _) => Tamper::FlipSignature,
            (_, Some(r)) => Tamper::Substitute(Sealed::clone(r)),
            (_, None) => unreachable!("the first download's receipt was seen"),
        };
        *proxy.tamper.lock().unwrap() = tamper;
        let mut sim = registered_blank_sim(&world, &operator, &format!("{name}-{i}")).await;
        let before = asked(&mno_store, &sp_tsm).await;
        let iss = issue(&world, &sp, &sim.iccid).await;
        let out = download(&proxy.url, &mut sim.card, &iss.ticket, &iss.code, None).await;
        assert_eq!(
            out.outcome,
            StopOutcome::Completed,
            "receipt {label}: {}",
            out.message
        );
        assert!(
            proxy.seen.lock().unwrap().is_some(),
            "the MNO-TSM's stop carried its receipt"
        );
        if i == 0 {
            first_receipt = proxy.seen.lock().unwrap().clone();
        }
        // The SIM record at the issue, the preparation, and — unless the receipt came back
        // intact — the preparation asked for again.
        let want = if i == 0 { 2 } else { 3 };
        assert_eq!(
            asked(&mno_store, &sp_tsm).await - before,
            want,
            "receipt {label}"
        );
        // The provider's keys open the domain: the SP-TSM wrote it either way.
        let v = operation(&sp, iss.op).await;
        assert_eq!(v.state, OpState::Completed, "receipt {label}");
        assert!(v.steps.iter().any(|s| s == "put-key:31"), "{:?}", v.steps);
    }
    // What the SP-TSM kept for the relay's return is gone once the sweep ran after the ends.
    let sp_store = Store::open(&sp_backend).await.unwrap();
    sp_store.purge_replay(0).await.unwrap();
    let left = sp_store
        .query("SELECT count(*) FROM mno_prepared", vec![])
        .await
        .unwrap()[0][0]
        .int();
    assert_eq!(left, 0);
    drop((mno_server, sp_server));
    let _ = std::fs::remove_dir_all(&dir);
}
