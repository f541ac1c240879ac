//! A provider's check of an execution receipt: each refusal is its own typed error, and the
//! on-card key proof is checked with the certificate's key (a P-256 card key here, signed
//! by the test with `p256` directly, so the expected signature does not come from kagi).

use der::Encode;
use p256::ecdsa::signature::Signer as _;
use sha2::{Digest, Sha256};
use tsm_protocol::receipt::{CertKeyError, ExecutionReceipt, ReceiptError};
use tsm_protocol::{MsgId, Nonce, OpId};

struct Case {
    receipt: ExecutionReceipt,
    certificate: Vec<u8>,
    other_certificate: Vec<u8>,
}

fn case() -> Case {
    use p256::elliptic_curve::Generate;
    let ca = test_pki::TestCa::new("receipt test").unwrap();
    let now = std::time::SystemTime::now();
    let until = now + std::time::Duration::from_secs(3600);
    let cert_of = |key: &p256::ecdsa::SigningKey, serial| {
        ca.issue_auth(key.verifying_key(), "KAGIRCPT", serial, now, until)
            .unwrap()
            .to_der()
            .unwrap()
    };
    let card_key = p256::ecdsa::SigningKey::try_generate().unwrap();
    let certificate = cert_of(&card_key, 7);
    let other_certificate = cert_of(&p256::ecdsa::SigningKey::try_generate().unwrap(), 8);
    let op = OpId([0x11; 16]);
    let nonce = [0x22; 32];
    // The message as card_wire documents it: tag, operation id, nonce.
    let mut message = b"kagi-tsm key proof\0".to_vec();
    message.extend_from_slice(&op.0);
    message.extend_from_slice(&nonce);
    let sig: p256::ecdsa::Signature = card_key.sign(&message);
    let receipt = ExecutionReceipt {
        op,
        kind: "issue".into(),
        request: (MsgId([0x33; 16]), Nonce([0x44; 16])),
        iccid: "8981000000000000001".into(),
        cin: "00".into(),
        certificate_sha256: Sha256::digest(&certificate).into(),
        my_number_sign_serial: "1".into(),
        key_proof_nonce: nonce,
        key_proof: sig.to_bytes().to_vec(),
        steps: vec![],
        completed_at: 0,
    };
    Case {
        receipt,
        certificate,
        other_certificate,
    }
}

#[test]
fn a_receipt_is_checked_and_each_refusal_says_why() {
    let c = case();
    let r = &c.receipt;
    assert_eq!(r.check(&r.op, r.request, &c.certificate), Ok(()));
    assert_eq!(
        r.check(&OpId([0x12; 16]), r.request, &c.certificate),
        Err(ReceiptError::OtherOperation)
    );
    assert_eq!(
        r.check(&r.op, (MsgId([0x34; 16]), r.request.1), &c.certificate),
        Err(ReceiptError::OtherOperation)
    );
    assert_eq!(
        r.check(&r.op, r.request, &c.other_certificate),
        Err(ReceiptError::OtherCertificate)
    );
    // A proof made by another key (the receipt re-pointed at the other certificate).
    let mut other = r.clone();
    other.certificate_sha256 = Sha256::digest(&c.other_certificate).into();
    assert_eq!(
        other.check(&r.op, r.request, &c.other_certificate),
        Err(ReceiptError::KeyProof(CertKeyError::BadSignature))
    );
    // A proof over another nonce.
    let mut moved = r.clone();
    moved.key_proof_nonce[0] ^= 1;
    assert_eq!(
        moved.check(&r.op, r.request, &c.certificate),
        Err(ReceiptError::KeyProof(CertKeyError::BadSignature))
    );
    // Bytes that are no certificate, even when the receipt names them.
    let junk = b"not a certificate".to_vec();
    let mut named = r.clone();
    named.certificate_sha256 = Sha256::digest(&junk).into();
    assert!(matches!(
        named.check(&r.op, r.request, &junk),
        Err(ReceiptError::KeyProof(CertKeyError::Certificate(_)))
    ));
}

/// An MNO-TSM's receipt for a SIM preparation passes the SP-TSM's check only for that
/// operation, of that kind (the string `prepare-sim` written out here), on that card.
#[test]
fn a_preparation_receipt_is_for_one_operation_kind_and_card() {
    let mut r = case().receipt;
    r.kind = "prepare-sim".into();
    let iccid = r.iccid.clone();
    assert_eq!(r.check_preparation(&r.op, &iccid), Ok(()));
    assert_eq!(
        r.check_preparation(&OpId([0x12; 16]), &iccid),
        Err(ReceiptError::OtherOperation)
    );
    assert_eq!(
        r.check_preparation(&r.op, "8981000000000000002"),
        Err(ReceiptError::OtherCard)
    );
    let mut issue = r.clone();
    issue.kind = "issue".into();
    assert_eq!(
        issue.check_preparation(&r.op, &iccid),
        Err(ReceiptError::OtherOperation)
    );
}
