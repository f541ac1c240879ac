//! One phone certificate per SIM and provider at the issuer: a newer issuance for the same SIM
//! revokes the older one (`superseded`, CRL reason superseded), also when they race; and the
//! CRL leaves a certificate off one validity period after it expired.

use super::*;
use tsm_server::issuer::store;

/// The signature serial `n` as kagi prints it (upper-case hex of whole bytes): the test's
/// serials are two bytes.
fn sign_hex(n: u32) -> String {
    format!("{n:04X}")
}

/// The CRL's number (read back with x509-cert) and its entries: (serial, reasonCode).
fn parse_crl(der: &[u8]) -> (Vec<u8>, Vec<(String, Vec<u8>)>) {
    let crl: x509_cert::crl::CertificateList =
        x509_cert::crl::CertificateList::from_der(der).unwrap();
    let number = crl
        .tbs_cert_list
        .crl_extensions
        .as_ref()
        .and_then(|e| {
            e.iter()
                .find(|x| x.extn_id == der::asn1::ObjectIdentifier::new_unwrap("2.5.29.20"))
                .map(|x| x.extn_value.as_bytes().to_vec())
        })
        .unwrap();
    let entries = crl
        .tbs_cert_list
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
        .collect();
    (number, entries)
}

/// A second certificate for the same SIM and provider (another download, or the same holder
/// again after a lost answer the issuer no longer remembers): the first is revoked in the
/// issuance's transaction, audited, and on the CRL with reasonCode superseded (4).
#[tokio::test]
async fn a_newer_certificate_for_the_sim_supersedes_the_older() {
    let w = world("supersede").await;
    let IssuerResponse::Issued { serial: first, .. } =
        w.send(&w.issue_request(valid_application(712), SP)).await
    else {
        panic!("not issued");
    };
    let IssuerResponse::Issued { serial: second, .. } =
        w.send(&w.issue_request(valid_application(713), SP)).await
    else {
        panic!("not issued");
    };
    assert_ne!(first, second);
    let old = store::link(w.issuer.db(), &first).await.unwrap().unwrap();
    assert_eq!(
        (old.state.as_str(), old.reason.as_deref()),
        ("revoked", Some("superseded"))
    );
    let new = store::link(w.issuer.db(), &second).await.unwrap().unwrap();
    assert_eq!(new.state, "active");
    let trail = store::audit_trail(w.issuer.db()).await.unwrap();
    assert_eq!(
        trail
            .iter()
            .filter(|(_, _, e, d)| e == "revoked"
                && d.starts_with(&format!("phone {first} "))
                && d.contains(&second))
            .count(),
        1,
        "{trail:?}"
    );
    let (_, der) = w.issuer.crl().await.unwrap();
    let (_, entries) = parse_crl(&der);
    assert_eq!(entries, vec![(first, vec![0x0A, 0x01, 4])]);
}

/// Eight issuances for one SIM and provider at once (eight holders' applications — the
/// SP-TSM downloading again while a download runs): exactly one certificate stays active, the
/// others are superseded, on SQLite and on PostgreSQL (READ COMMITTED: the SIM's row orders
/// them).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_issuances_for_one_sim_leave_one_active() {
    one_active(Arc::new(world("supersede-race").await), 720).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_issuances_for_one_sim_leave_one_active_on_postgres() {
    let pg = tsm_server::testing::PrivatePostgres::start("issuer-supersede").unwrap();
    let w = world_on("supersede-pg", kagi_db::Backend::Postgres(pg.url.clone())).await;
    assert_eq!(w.issuer.db().describe(), "postgresql");
    one_active(Arc::new(w), 740).await;
}

async fn one_active(w: Arc<World>, base: u32) {
    let mut tasks = Vec::new();
    for i in 0..8 {
        let w = w.clone();
        tasks.push(tokio::spawn(async move {
            w.send(&w.issue_request(valid_application(base + i), SP))
                .await
        }));
    }
    let mut serials = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            IssuerResponse::Issued { serial, .. } => serials.push(serial),
            other => panic!("{other:?}"),
        }
    }
    let mut states = Vec::new();
    for i in 0..8 {
        for l in store::links_of(w.issuer.db(), &sign_hex(base + i))
            .await
            .unwrap()
        {
            states.push((l.serial, l.state, l.reason));
        }
    }
    assert_eq!(states.len(), 8, "{states:?}");
    let active: Vec<_> = states.iter().filter(|s| s.1 == "active").collect();
    assert_eq!(active.len(), 1, "{states:?}");
    assert!(
        states
            .iter()
            .filter(|s| s.1 != "active")
            .all(|s| s.1 == "revoked" && s.2.as_deref() == Some("superseded")),
        "{states:?}"
    );
    let (_, der) = w.issuer.crl().await.unwrap();
    assert_eq!(parse_crl(&der).1.len(), 7);
}

/// A revoked certificate stays on the CRL until a day after it expired, then the sweep drops
/// it once (audited `crl-dropped`), raising the CRL number; one expired an hour ago stays.
#[tokio::test]
async fn the_crl_drops_certificates_a_day_after_they_expired() {
    let w = world("crl-expiry").await;
    std::fs::write(
        w.dir.join("sign-ca.crl.der"),
        cas().sign.crl(1, &[]).unwrap().to_der().unwrap(),
    )
    .unwrap();
    let mut serials = Vec::new();
    for n in [731, 732] {
        let IssuerResponse::Issued { serial, .. } =
            w.send(&w.issue_request(valid_application(n), SP)).await
        else {
            panic!("not issued");
        };
        serials.push(serial);
    }
    // The first was superseded by the second; withdraw the second too.
    let IssuerResponse::Status { .. } = w
        .send(&IssuerRequest::Withdraw {
            serial: serials[1].clone(),
            reason: "undeliverable".into(),
        })
        .await
    else {
        panic!("not withdrawn");
    };
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    // Pretend both expired: the first two days ago, the second an hour ago.
    for (serial, not_after) in [(&serials[0], now - 2 * 86_400), (&serials[1], now - 3600)] {
        w.issuer
            .db()
            .commit(vec![kagi_db::Stmt::one(
                "UPDATE links SET not_after = $1 WHERE serial = $2",
                vec![not_after.into(), serial.clone().into()],
            )])
            .await
            .unwrap();
    }
    let (before, _) = parse_crl(&w.issuer.crl().await.unwrap().1);
    w.issuer.sweep().await.unwrap();
    let (after, entries) = parse_crl(&w.issuer.crl().await.unwrap().1);
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].0, serials[1]);
    // DER INTEGERs of the same sign: the longer, or the same length and larger, is larger.
    assert!(
        (after.len(), after.clone()) > (before.len(), before.clone()),
        "{before:?} → {after:?}"
    );
    w.issuer.sweep().await.unwrap();
    let (again, _) = parse_crl(&w.issuer.crl().await.unwrap().1);
    assert_eq!(again, after, "a second sweep drops nothing new");
    let trail = store::audit_trail(w.issuer.db()).await.unwrap();
    let dropped: Vec<_> = trail
        .iter()
        .filter(|(_, _, e, _)| e == "crl-dropped")
        .map(|(_, _, _, d)| d.clone())
        .collect();
    assert_eq!(dropped, vec![serials[0].clone()]);
}
