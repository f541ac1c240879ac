//! One phone certificate per SIM and provider for keys made on the SIM: a Certify for the
//! SIM's new key revokes its earlier certificate (`superseded`, CRL reason superseded) in the
//! issuance's transaction — also when the issuer no longer remembers the earlier request (a
//! new request id) — and racing Certify requests for one SIM leave exactly one active
//! certificate, on SQLite and on PostgreSQL.

use super::*;
use der::Decode;
use tsm_server::issuer::store;

/// The CRL's entries (read back with x509-cert): (serial, reasonCode extension value).
fn crl_entries(der: &[u8]) -> Vec<(String, Vec<u8>)> {
    let crl: x509_cert::crl::CertificateList =
        x509_cert::crl::CertificateList::from_der(der).unwrap();
    crl.tbs_cert_list
        .revoked_certificates
        .unwrap_or_default()
        .into_iter()
        .map(|e| {
            let code = e.crl_entry_extensions.as_ref().unwrap()[0]
                .extn_value
                .as_bytes()
                .to_vec();
            (hex::encode_upper(e.serial_number.as_bytes()), code)
        })
        .collect()
}

/// A download's issuance: a challenge under a fresh request id, the key made on the SIM, the
/// Certify; its serial.
async fn download(
    w: &World,
    ch: &mut CardChannel<applet_sim::SimCard>,
    s: &Ids,
    sign: u32,
) -> String {
    let rid = IdempotencyKey::random().unwrap();
    let challenge = w.challenge(s, rid).await;
    let proof = generate_on_card(ch, &challenge);
    match w.certify(s, sign, rid, &challenge, proof).await {
        IssuerResponse::Issued { serial, .. } => serial,
        other => panic!("not issued: {other:?}"),
    }
}

/// A second download to the same SIM (a new request: the user applied again, or the earlier
/// request's record is gone): its key replaced the applet's earlier one, so the earlier
/// certificate is revoked as superseded (audited, reasonCode 4 on the CRL); a certificate of
/// another SIM stays active.
#[tokio::test]
async fn a_new_key_on_the_sim_supersedes_its_earlier_certificate() {
    let w = world("supersede").await;
    let (mut ch, s) = sim(&[0x16, 0x21]);
    let (mut other_ch, other) = sim(&[0x16, 0x22]);
    let first = download(&w, &mut ch, &s, 1621).await;
    let elsewhere = download(&w, &mut other_ch, &other, 1622).await;
    let second = download(&w, &mut ch, &s, 1621).await;
    assert_ne!(first, second);
    let link = |serial: String| {
        let w = &w;
        async move { store::link(w.issuer.db(), &serial).await.unwrap().unwrap() }
    };
    let old = link(first.clone()).await;
    assert_eq!(
        (old.state.as_str(), old.reason.as_deref()),
        ("revoked", Some("superseded"))
    );
    assert_eq!(link(second.clone()).await.state, "active");
    assert_eq!(link(elsewhere).await.state, "active");
    let trail = store::audit_trail(w.issuer.db()).await.unwrap();
    assert_eq!(
        trail
            .iter()
            .filter(|(_, _, e, d)| e == "revoked"
                && d.starts_with(&format!("phone {first} "))
                && d.contains(&format!("superseded by {second}")))
            .count(),
        1,
        "{trail:?}"
    );
    let (_, der) = w.issuer.crl().await.unwrap();
    assert_eq!(crl_entries(&der), vec![(first, vec![0x0A, 0x01, 4])]);
}

/// Eight Certify requests for one SIM at once, each under its own request and challenge (the
/// keys made one after the other, the requests racing): exactly one certificate stays
/// active, the other seven are superseded and on the CRL.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_certifies_for_one_sim_leave_one_active() {
    one_active(Arc::new(world("supersede-race").await), &[0x16, 0x23], 1623).await;
}

/// The same on PostgreSQL (READ COMMITTED: the SIM's row orders the transactions).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_certifies_for_one_sim_leave_one_active_on_postgres() {
    let pg = tsm_server::testing::PrivatePostgres::start("csr16-supersede").unwrap();
    let w = world_on("supersede-pg", kagi_db::Backend::Postgres(pg.url.clone())).await;
    assert_eq!(w.issuer.db().describe(), "postgresql");
    one_active(Arc::new(w), &[0x16, 0x24], 1624).await;
}

async fn one_active(w: Arc<World>, card: &[u8], sign: u32) {
    let (mut ch, s) = sim(card);
    let s = Arc::new(s);
    let mut asks = Vec::new();
    for _ in 0..8 {
        let rid = IdempotencyKey::random().unwrap();
        let challenge = w.challenge(&s, rid).await;
        let proof = generate_on_card(&mut ch, &challenge);
        asks.push((rid, challenge, proof));
    }
    let mut tasks = Vec::new();
    for (rid, challenge, proof) in asks {
        let (w, s) = (w.clone(), s.clone());
        tasks.push(tokio::spawn(async move {
            w.certify(&s, sign, rid, &challenge, proof).await
        }));
    }
    for t in tasks {
        assert!(
            matches!(t.await.unwrap(), IssuerResponse::Issued { .. }),
            "every Certify is issued"
        );
    }
    let links = store::links_of(w.issuer.db(), &format!("{sign:04X}"))
        .await
        .unwrap();
    assert_eq!(links.len(), 8, "{links:?}");
    assert_eq!(
        links.iter().filter(|l| l.state == "active").count(),
        1,
        "{links:?}"
    );
    assert!(
        links
            .iter()
            .filter(|l| l.state != "active")
            .all(|l| l.state == "revoked" && l.reason.as_deref() == Some("superseded")),
        "{links:?}"
    );
    let (_, der) = w.issuer.crl().await.unwrap();
    assert_eq!(crl_entries(&der).len(), 7);
}
