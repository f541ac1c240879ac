//! The issuer's CRL leaves a revoked certificate off one validity period after it expired.

use super::*;
use tsm_server::issuer::store;

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
    // Neither could be delivered: both withdrawn.
    for serial in &serials {
        let IssuerResponse::Status { .. } = w
            .send(&IssuerRequest::Withdraw {
                serial: serial.clone(),
                reason: "undeliverable".into(),
            })
            .await
        else {
            panic!("not withdrawn");
        };
    }
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
