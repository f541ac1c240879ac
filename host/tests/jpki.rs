//! The JPKI-style applet through the host client, on a card personalised end to end through
//! GlobalPlatform: certificates without PIN, PIN rules, signatures that verify against the
//! certificate, exact status words for bad input, and tearing during VERIFY.

use card_wire::apdu::Command;
use card_wire::sw::StatusWord;
use card_wire::transport::ResetKind;
use kagi::channel::{ApduChannel, CardChannel};
use kagi::jpki::{self, Pin};
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::signature::Verifier;
use std::sync::OnceLock;
use zeroize::Zeroizing;

fn pin(s: &str) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(s.as_bytes().to_vec())
}

/// One personalised card image for all tests (RSA key generation is the slow part).
fn demo() -> &'static (applet_sim::Store, Vec<u8>, Vec<u8>) {
    static CARD: OnceLock<(applet_sim::Store, Vec<u8>, Vec<u8>)> = OnceLock::new();
    CARD.get_or_init(|| {
        let (card, id) = jpki::demo_card(Some(5)).unwrap();
        (
            card.store().clone(),
            id.auth_cert.clone(),
            id.sign_cert.clone(),
        )
    })
}

fn channel() -> CardChannel<applet_sim::SimCard> {
    let mut card = applet_sim::SimCard::from_store(demo().0.clone(), Some(6), true);
    card.power_on();
    CardChannel::new(card)
}

fn public_key(cert_der: &[u8]) -> rsa::PublicKey {
    use der::Decode;
    use rsa::pkcs8::DecodePublicKey;
    let cert = x509_cert::Certificate::from_der(cert_der).unwrap();
    let spki = der::Encode::to_der(cert.tbs_certificate().subject_public_key_info()).unwrap();
    rsa::PublicKey::from_public_key_der(&spki).unwrap()
}

#[test]
fn certificates_pins_and_signatures() {
    let (_, auth_cert, sign_cert) = demo();
    let mut ch = channel();
    jpki::select(&mut ch).unwrap();
    // The authentication certificate and the CAs need no PIN; the signature certificate does.
    assert_eq!(
        &jpki::read_der(&mut ch, jpki::EF_AUTH_CERT).unwrap(),
        auth_cert
    );
    assert!(jpki::read_der(&mut ch, jpki::EF_AUTH_CA).is_ok());
    assert!(jpki::read_der(&mut ch, jpki::EF_SIGN_CA).is_ok());
    let e = jpki::read_der(&mut ch, jpki::EF_SIGN_CERT).unwrap_err();
    assert_eq!(e.status(), Some(StatusWord::SECURITY_STATUS_NOT_SATISFIED));
    assert_eq!(
        &jpki::read_ef(&mut ch, jpki::EF_TOKEN_INFO).unwrap()[..15],
        b"JPKIAPICCTOKEN2"
    );
    // Tries are reported without spending one.
    assert_eq!(jpki::pin_tries(&mut ch, Pin::Auth).unwrap(), 3);
    assert_eq!(jpki::pin_tries(&mut ch, Pin::Auth).unwrap(), 3);
    assert_eq!(jpki::pin_tries(&mut ch, Pin::Sign).unwrap(), 5);
    // Signing needs the PIN.
    let digest = jpki::sha256_digest_info(b"login challenge");
    assert_eq!(
        jpki::sign(&mut ch, Pin::Auth, &digest)
            .unwrap_err()
            .status(),
        Some(StatusWord::SECURITY_STATUS_NOT_SATISFIED)
    );
    // A wrong PIN costs a try; the right one restores them.
    assert!(matches!(
        jpki::verify(&mut ch, Pin::Auth, &pin("9999")),
        Err(kagi::Error::WrongPin { tries_left: 2 })
    ));
    jpki::verify(&mut ch, Pin::Auth, &pin(jpki::DEMO_AUTH_PIN)).unwrap();
    assert_eq!(jpki::pin_tries(&mut ch, Pin::Auth).unwrap(), 3);
    let sig = jpki::sign(&mut ch, Pin::Auth, &digest).unwrap();
    assert_eq!(sig.len(), 256);
    // The signature verifies as sha256WithRSAEncryption against the certificate's key.
    VerifyingKey::<sha2::Sha256>::new(public_key(auth_cert))
        .verify(
            b"login challenge",
            &Signature::try_from(sig.as_slice()).unwrap(),
        )
        .unwrap();
    // The signature key needs the signature password, which also opens its certificate.
    assert_eq!(
        jpki::sign(&mut ch, Pin::Sign, &digest)
            .unwrap_err()
            .status(),
        Some(StatusWord::SECURITY_STATUS_NOT_SATISFIED)
    );
    jpki::verify(&mut ch, Pin::Sign, &pin(jpki::DEMO_SIGN_PIN)).unwrap();
    assert_eq!(
        &jpki::read_der(&mut ch, jpki::EF_SIGN_CERT).unwrap(),
        sign_cert
    );
    let sig = jpki::sign(&mut ch, Pin::Sign, &digest).unwrap();
    VerifyingKey::<sha2::Sha256>::new(public_key(sign_cert))
        .verify(
            b"login challenge",
            &Signature::try_from(sig.as_slice()).unwrap(),
        )
        .unwrap();
    // Re-selecting the AP clears the PIN state (OpenSC's logout).
    jpki::select(&mut ch).unwrap();
    assert_eq!(
        jpki::sign(&mut ch, Pin::Auth, &digest)
            .unwrap_err()
            .status(),
        Some(StatusWord::SECURITY_STATUS_NOT_SATISFIED)
    );
}

#[test]
fn blocked_pins_stay_blocked_across_resets() {
    let mut ch = channel();
    jpki::select(&mut ch).unwrap();
    for left in [2, 1] {
        assert!(
            matches!(jpki::verify(&mut ch, Pin::Auth, &pin("0000")), Err(kagi::Error::WrongPin { tries_left }) if tries_left == left)
        );
    }
    assert!(matches!(
        jpki::verify(&mut ch, Pin::Auth, &pin("0000")),
        Err(kagi::Error::PinBlocked)
    ));
    ch.reset(ResetKind::Cold).unwrap();
    jpki::select(&mut ch).unwrap();
    assert_eq!(jpki::pin_tries(&mut ch, Pin::Auth).unwrap(), 0);
    // Even the right PIN is refused now, with 6984.
    jpki::select_ef(&mut ch, 0x0018).unwrap();
    let r = ch
        .transmit(
            &Command::new(0, 0x20, 0, 0x80)
                .with_data(b"1234".to_vec())
                .unwrap(),
        )
        .unwrap();
    assert_eq!(r.sw, StatusWord::REFERENCE_DATA_NOT_USABLE);
    // The signature password is unaffected.
    assert_eq!(jpki::pin_tries(&mut ch, Pin::Sign).unwrap(), 5);
}

#[test]
fn change_pin_then_only_the_new_one_works() {
    let mut ch = channel();
    jpki::select(&mut ch).unwrap();
    jpki::select_ef(&mut ch, 0x0018).unwrap();
    // CHANGE REFERENCE DATA needs a verified PIN first.
    let change = |v: &[u8]| {
        Command::new(0, 0x24, 0x01, 0x80)
            .with_data(v.to_vec())
            .unwrap()
    };
    assert_eq!(
        ch.transmit(&change(b"4321")).unwrap().sw,
        StatusWord::SECURITY_STATUS_NOT_SATISFIED
    );
    jpki::verify(&mut ch, Pin::Auth, &pin("1234")).unwrap();
    // A new PIN of the wrong format is refused without a change.
    assert_eq!(
        ch.transmit(&change(b"12a4")).unwrap().sw,
        StatusWord::INCORRECT_DATA
    );
    assert_eq!(
        ch.transmit(&change(b"4321")).unwrap().sw,
        StatusWord::SUCCESS
    );
    jpki::select(&mut ch).unwrap();
    assert!(matches!(
        jpki::verify(&mut ch, Pin::Auth, &pin("1234")),
        Err(kagi::Error::WrongPin { .. })
    ));
    jpki::verify(&mut ch, Pin::Auth, &pin("4321")).unwrap();
}

#[test]
fn bad_input_gets_exact_status_words() {
    let mut ch = channel();
    let sw = |ch: &mut CardChannel<applet_sim::SimCard>, apdu: &str| {
        ch.transmit(&Command::parse(&hex::decode(apdu.replace(' ', "")).unwrap()).unwrap())
            .unwrap()
            .sw
            .0
    };
    // Unknown AID: 6A82 (and a foreign AID never gets 9000).
    assert_eq!(sw(&mut ch, "00A4040C 06 A00000000101"), 0x6A82);
    jpki::select(&mut ch).unwrap();
    assert_eq!(sw(&mut ch, "00A4020C 02 1234"), 0x6A82); // unknown EF
    assert_eq!(sw(&mut ch, "00A4020C 01 12"), 0x6700); // bad FID length
    assert_eq!(sw(&mut ch, "00B0000004"), 0x6986); // no current EF
    assert_eq!(sw(&mut ch, "00A4020C 02 0017"), 0x9000);
    assert_eq!(sw(&mut ch, "00B0000004"), 0x6981); // key EFs are never read
    assert_eq!(sw(&mut ch, "00A4020C 02 000A"), 0x9000);
    assert_eq!(sw(&mut ch, "00B07FFF01"), 0x6B00); // past the end
    assert_eq!(sw(&mut ch, "00A4020C 02 0018"), 0x9000);
    assert_eq!(
        sw(&mut ch, "0020008011 3131313131313131313131313131313131"),
        0x6700
    ); // 17 bytes
    assert_eq!(sw(&mut ch, "00200080"), 0x63C3); // no try was spent by the above
    assert_eq!(
        sw(
            &mut ch,
            "802A0180 20 00000000000000000000000000000000000000000000000000000000000000 00"
        ),
        0x6A86
    );
    assert_eq!(sw(&mut ch, "00FF0000"), 0x6D00);
    assert_eq!(sw(&mut ch, "0CB0000004"), 0x6882); // secure messaging is not offered here
    assert_eq!(sw(&mut ch, "0084000008"), 0x9000); // GET CHALLENGE
}

#[test]
fn tearing_during_verify_never_grants_a_free_try() {
    for n in 1..=2u64 {
        let mut ch = channel();
        jpki::select(&mut ch).unwrap();
        jpki::select_ef(&mut ch, 0x0018).unwrap();
        ch.transport_mut().tear_at(n);
        let r = ch.transmit(
            &Command::new(0, 0x20, 0, 0x80)
                .with_data(b"0000".to_vec())
                .unwrap(),
        );
        ch.reset(ResetKind::Cold).unwrap();
        jpki::select(&mut ch).unwrap();
        let tries = jpki::pin_tries(&mut ch, Pin::Auth).unwrap();
        match r {
            // The card answered: the wrong PIN was counted.
            Ok(resp) => assert_eq!((resp.sw, tries), (StatusWord(0x63C2), 2)),
            // Power was lost at the first write: the try was spent or nothing happened at all —
            // never a comparison without the count going down.
            Err(_) => assert!(tries == 3 || tries == 2, "n={n}: {tries}"),
        }
    }
}
