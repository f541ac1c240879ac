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

/// The card image, the two end-entity certificates and the two CA certificates (DER).
type Demo = (applet_sim::Store, Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>);

/// One personalised card image for all tests (RSA key generation is the slow part).
fn demo() -> &'static Demo {
    static CARD: OnceLock<Demo> = OnceLock::new();
    CARD.get_or_init(|| {
        let (card, id) = kagi_fixtures::jpki::demo_card(Some(5)).unwrap();
        (
            card.store().clone(),
            id.auth_cert.clone(),
            id.sign_cert.clone(),
            id.auth_ca.certificate_der().unwrap(),
            id.sign_ca.certificate_der().unwrap(),
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
    let (_, auth_cert, sign_cert, auth_ca, sign_ca) = demo();
    let mut ch = channel();
    jpki::select(&mut ch).unwrap();
    // The authentication certificate and the CAs need no PIN; the signature certificate does.
    assert_eq!(
        &jpki::read_der(&mut ch, jpki::EF_AUTH_CERT).unwrap(),
        auth_cert
    );
    // The CA files hold exactly the certificates of the CAs that issued the two certificates.
    assert_ne!(auth_ca, sign_ca);
    assert_eq!(&jpki::read_der(&mut ch, jpki::EF_AUTH_CA).unwrap(), auth_ca);
    assert_eq!(&jpki::read_der(&mut ch, jpki::EF_SIGN_CA).unwrap(), sign_ca);
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
    jpki::verify(&mut ch, Pin::Auth, &pin(kagi_fixtures::jpki::DEMO_AUTH_PIN)).unwrap();
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
    jpki::verify(&mut ch, Pin::Sign, &pin(kagi_fixtures::jpki::DEMO_SIGN_PIN)).unwrap();
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

mod provisioning {
    use super::*;
    use card_wire::scp03::{HostOptions, SecurityLevel, StaticKeys};
    use card_wire::tlv::tlv;
    use der::Decode;
    use kagi::gp::manage::{self, InstallSpec};
    use kagi::secure::SecureChannel;
    use kagi::trace::MemoryTrace;
    use rsa::pkcs1::{DecodeRsaPublicKey, EncodeRsaPrivateKey};

    const PACKAGE: [u8; 7] = [0xD3, 0x92, 0xF0, 0x00, 0x26, 0x01, 0x00];

    /// Loads and installs the JPKI class with `params`; returns the open channel's card.
    fn fresh(params: Vec<u8>, trace: MemoryTrace) -> CardChannel<applet_sim::SimCard> {
        fresh_card(
            applet_sim::SimCard::powered(applet_sim::SimConfig::default().seeded(4)),
            params,
            trace,
        )
    }

    /// A UICC (`serial` makes its ICCID) whose key agreement key the fixtures' manufacturer CA
    /// certified, with the JPKI class installed; the channel, ICCID and card certificate.
    fn fresh_sim(
        serial: &[u8],
        trace: MemoryTrace,
    ) -> (CardChannel<applet_sim::SimCard>, String, Vec<u8>) {
        let config = applet_sim::SimConfig::preset("uicc")
            .unwrap()
            .with_serial(serial);
        let iccid = config.iccid.as_ref().unwrap().to_string();
        let mut card = applet_sim::SimCard::powered(config);
        let ca = kagi_fixtures::sim::manufacturer_ca().unwrap();
        let cert = kagi_fixtures::sim::certify_card_key(&mut card, &iccid, ca).unwrap();
        (fresh_card(card, vec![], trace), iccid, cert)
    }

    fn fresh_card(
        card: applet_sim::SimCard,
        params: Vec<u8>,
        trace: MemoryTrace,
    ) -> CardChannel<applet_sim::SimCard> {
        let mut ch = CardChannel::new(card).with_trace(Box::new(trace));
        let sd = kagi::gp::select_domain(&mut ch, None).unwrap();
        let opts = HostOptions {
            level: SecurityLevel::FULL,
            ..HostOptions::default()
        };
        let mut sc = SecureChannel::open(
            &mut ch,
            StaticKeys::default_test_keys(0x30),
            opts,
            Some(&sd.aid),
        )
        .unwrap();
        let file = manage::sim_load_file(&PACKAGE, &[(jpki::JPKI_AID.to_vec(), "jpki.ap".into())]);
        manage::load(&mut sc, &PACKAGE, None, &file, true).unwrap();
        let spec = InstallSpec {
            package: PACKAGE.to_vec(),
            module: jpki::JPKI_AID.to_vec(),
            instance: jpki::JPKI_AID.to_vec(),
            params,
            selectable: true,
            ..InstallSpec::default()
        };
        manage::install(&mut sc, &spec).unwrap();
        drop(sc);
        ch
    }

    fn perso(
        ch: &mut CardChannel<applet_sim::SimCard>,
        script: &[u8],
        sensitive: bool,
    ) -> kagi::Result<Vec<u8>> {
        perso_to(ch, &jpki::JPKI_AID, script, sensitive)
    }

    /// Installs one more instance of the JPKI class at `instance`.
    fn install_instance(ch: &mut CardChannel<applet_sim::SimCard>, instance: &[u8]) {
        let sd = kagi::gp::select_domain(ch, None).unwrap();
        let opts = HostOptions {
            level: SecurityLevel::FULL,
            ..HostOptions::default()
        };
        let mut sc =
            SecureChannel::open(ch, StaticKeys::default_test_keys(0x30), opts, Some(&sd.aid))
                .unwrap();
        let spec = InstallSpec {
            package: PACKAGE.to_vec(),
            module: jpki::JPKI_AID.to_vec(),
            instance: instance.to_vec(),
            selectable: true,
            ..InstallSpec::default()
        };
        manage::install(&mut sc, &spec).unwrap();
    }

    fn perso_to(
        ch: &mut CardChannel<applet_sim::SimCard>,
        instance: &[u8],
        script: &[u8],
        sensitive: bool,
    ) -> kagi::Result<Vec<u8>> {
        let sd = kagi::gp::select_domain(ch, None)?;
        let opts = HostOptions {
            level: SecurityLevel::FULL,
            ..HostOptions::default()
        };
        let mut sc =
            SecureChannel::open(ch, StaticKeys::default_test_keys(0x30), opts, Some(&sd.aid))?;
        let blocks: Vec<Vec<u8>> = script.chunks(manage::BLOCK).map(|c| c.to_vec()).collect();
        manage::personalize(&mut sc, instance, &blocks, sensitive)
    }

    fn item(tag: u32, fid: u16, body: &[u8]) -> Vec<u8> {
        tlv(tag, &[&fid.to_be_bytes()[..], body].concat())
    }

    fn sign_and_check(ch: &mut CardChannel<applet_sim::SimCard>, key: rsa::PublicKey) {
        jpki::select(ch).unwrap();
        jpki::verify(ch, Pin::Auth, &pin("2468")).unwrap();
        let sig = jpki::sign(ch, Pin::Auth, &jpki::sha256_digest_info(b"m")).unwrap();
        VerifyingKey::<sha2::Sha256>::new(key)
            .verify(b"m", &Signature::try_from(sig.as_slice()).unwrap())
            .unwrap();
    }

    /// An AP with the user-authentication PIN alone (a phone's credential, no signature
    /// function): the signature PIN EF selects, reports no tries (63C0) and refuses a VERIFY
    /// as blocked (6984, ISO 7816-4 "reference data not usable"); the authentication PIN
    /// keeps its three tries.
    #[test]
    fn an_ap_without_a_signature_pin_reports_it_blocked() {
        let mut ch = fresh(vec![], MemoryTrace::default());
        perso(&mut ch, &item(0xC3, 0x0018, b"2468"), false).unwrap();
        let sw = |ch: &mut CardChannel<applet_sim::SimCard>, apdu: &str| {
            ch.transmit(&Command::parse(&hex::decode(apdu.replace(' ', "")).unwrap()).unwrap())
                .unwrap()
                .sw
                .0
        };
        jpki::select(&mut ch).unwrap();
        assert_eq!(sw(&mut ch, "00A4020C 02 001B"), 0x9000);
        assert_eq!(sw(&mut ch, "00200080"), 0x63C0);
        assert_eq!(sw(&mut ch, "0020008006 414243313233"), 0x6984);
        assert_eq!(sw(&mut ch, "0020009B"), 0x63C0); // P2 80|1B names the PIN EF
        assert_eq!(sw(&mut ch, "00A4020C 02 0018"), 0x9000);
        assert_eq!(sw(&mut ch, "00200080"), 0x63C3);
        // Another unknown EF still does not exist.
        assert_eq!(sw(&mut ch, "00A4020C 02 001C"), 0x6A82);
    }

    #[test]
    fn key_generated_on_the_card_then_certified() {
        let mut ch = fresh(vec![], MemoryTrace::default());
        // Generate on the card: only the public key comes back.
        let out = perso(&mut ch, &item(0xC4, 0x0017, &[]), false).unwrap();
        let c4 = card_wire::tlv::parse_single(&out).unwrap();
        let public = rsa::PublicKey::from_pkcs1_der(c4.value).unwrap();
        // Certify it and write the certificate and the PIN.
        let ca = test_pki::TestCa::new("JPKI for user authentication").unwrap();
        let now = std::time::SystemTime::now();
        let cert = ca
            .issue_auth(
                &public,
                "KAGITESTONCARD",
                7,
                now,
                now + std::time::Duration::from_secs(3600),
            )
            .unwrap();
        let mut script = item(0xC1, 0x000A, &der::Encode::to_der(&cert).unwrap());
        script.extend(item(0xC3, 0x0018, b"2468"));
        perso(&mut ch, &script, false).unwrap();
        sign_and_check(&mut ch, public);
    }

    #[test]
    fn on_card_generation_is_tearing_safe() {
        // Cut power at each write of a generation + PIN script: afterwards the applet has
        // both the key and the PIN, or neither, and generation works again.
        let mut script = item(0xC4, 0x0017, &[0x02]);
        script.extend(item(0xC3, 0x0018, b"2468"));
        let total = {
            let mut ch = fresh(vec![], MemoryTrace::default());
            let w0 = ch.transport().store().writes();
            perso(&mut ch, &script, false).unwrap();
            ch.transport().store().writes() - w0
        };
        assert!(total >= 5, "{total} writes");
        for n in 1..=total {
            let mut ch = fresh(vec![], MemoryTrace::default());
            ch.transport_mut().tear_at(n);
            let torn = perso(&mut ch, &script, false).is_err();
            ch.reset(ResetKind::Cold).unwrap();
            let store = ch.transport().store();
            let keys = store.keys("app/D392F000260100000001/key/").len();
            let pins = store.keys("app/D392F000260100000001/pin/").len();
            assert!(
                (keys, pins) == (0, 0) || (keys, pins) == (1, 1),
                "n={n}: {keys} keys, {pins} PINs"
            );
            if torn {
                perso(&mut ch, &script, false).unwrap();
            }
            jpki::select(&mut ch).unwrap();
            jpki::verify(&mut ch, Pin::Auth, &pin("2468")).unwrap();
        }
    }

    #[test]
    fn p256_key_generated_on_the_card_for_sim_profiles() {
        use p256::ecdsa::signature::hazmat::PrehashVerifier;
        let mut ch = fresh(vec![], MemoryTrace::default());
        let out = perso(&mut ch, &item(0xC4, 0x0017, &[0x02]), false).unwrap();
        let point = card_wire::tlv::parse_single(&out).unwrap().value.to_vec();
        assert_eq!(
            (point.len(), point[0]),
            (65, 0x04),
            "an uncompressed P-256 point"
        );
        let public = p256::PublicKey::from_sec1_bytes(&point).unwrap();
        let ca = test_pki::TestCa::new("JPKI for user authentication").unwrap();
        let now = std::time::SystemTime::now();
        let cert = ca
            .issue_auth(
                &public,
                "KAGITESTP256",
                9,
                now,
                now + std::time::Duration::from_secs(3600),
            )
            .unwrap();
        let mut script = item(0xC1, 0x000A, &der::Encode::to_der(&cert).unwrap());
        script.extend(item(0xC3, 0x0018, b"2468"));
        perso(&mut ch, &script, false).unwrap();
        jpki::select(&mut ch).unwrap();
        jpki::verify(&mut ch, Pin::Auth, &pin("2468")).unwrap();
        use sha2::Digest;
        let hash = sha2::Sha256::digest(b"m");
        let sig = jpki::sign(&mut ch, Pin::Auth, &hash).unwrap();
        let sig = p256::ecdsa::Signature::from_slice(&sig).unwrap();
        // Verified with the key from the certificate read back from the card.
        let cert =
            x509_cert::Certificate::from_der(&jpki::read_der(&mut ch, jpki::EF_AUTH_CERT).unwrap())
                .unwrap();
        let spki = der::Encode::to_der(cert.tbs_certificate().subject_public_key_info()).unwrap();
        use p256::pkcs8::DecodePublicKey;
        let vk = p256::ecdsa::VerifyingKey::from_public_key_der(&spki).unwrap();
        vk.verify_prehash(&hash, &sig).unwrap();
        // A P-256 key signs only a 32-byte hash.
        let e = jpki::sign(&mut ch, Pin::Auth, &jpki::sha256_digest_info(b"m")).unwrap_err();
        assert_eq!(e.status(), Some(StatusWord::WRONG_LENGTH));
    }

    const RID: [u8; 16] = [0x42; 16];

    /// Seals `value` to the card whose certificate is `cert` (checked against the fixtures'
    /// manufacturer CA), for `instance` and `role`, under [`RID`]; the item body.
    fn sealed_for(
        cert: &[u8],
        iccid: &str,
        instance: &[u8],
        role: card_wire::content::Role,
        value: &[u8],
    ) -> Vec<u8> {
        let ca = kagi_fixtures::sim::manufacturer_ca().unwrap().certificate();
        let c = kagi_certs::card_key::check_card_certificate(
            ca,
            cert,
            iccid,
            std::time::SystemTime::now(),
        )
        .unwrap();
        let binding = card_wire::content::Binding {
            iccid,
            card_serial: &c.serial,
            instance,
            role,
            request_id: &RID,
        };
        let key = card_wire::content::card_public_key(&c.public_key).unwrap();
        let sealed = card_wire::content::seal(&key, &binding, value).unwrap();
        card_wire::jpki::sealed_item_body(&RID, &sealed)
    }

    #[test]
    fn sealed_key_import_is_unreadable_on_the_way() {
        use card_wire::content::Role;
        let trace = MemoryTrace::default();
        let (mut ch, iccid, cert) = fresh_sim(b"sealed-import", trace.clone());
        let key = test_pki::generate_rsa_key().unwrap();
        let der = key.to_pkcs1_der().unwrap();
        let sealed = sealed_for(
            &cert,
            &iccid,
            &jpki::JPKI_AID,
            Role::KeyEf(0x17),
            der.as_bytes(),
        );
        // Sealed for the PIN file's role: refused, nothing written.
        let wrong = sealed_for(
            &cert,
            &iccid,
            &jpki::JPKI_AID,
            Role::PinEf(0x17),
            der.as_bytes(),
        );
        let e = perso(&mut ch, &item(0xC6, 0x0017, &wrong), false).unwrap_err();
        assert_eq!(e.status(), Some(StatusWord::INCORRECT_DATA));
        let mut script = item(0xC6, 0x0017, &sealed);
        script.extend(item(0xC3, 0x0018, b"2468"));
        // Not even marked secret: the security domain's plain view holds only the sealed form.
        perso(&mut ch, &script, false).unwrap();
        let text = trace.lines().join("\n");
        let probe = hex::encode_upper(&der.as_bytes()[40..72]);
        assert!(
            !text.contains(&probe),
            "private key bytes visible on the way"
        );
        assert!(
            text.contains(&hex::encode_upper(&sealed[..32])),
            "the sealed form is what travels"
        );
        sign_and_check(&mut ch, key.to_public_key());
    }

    /// A PIN sealed for card A opens neither on card B nor in another instance of the same
    /// applet on A; on A, for its own instance, it opens and the PIN verifies.
    #[test]
    fn a_value_sealed_for_one_card_and_instance_opens_nowhere_else() {
        use card_wire::content::Role;
        let (mut a, iccid_a, cert_a) = fresh_sim(b"card-a", MemoryTrace::default());
        let (mut b, iccid_b, _) = fresh_sim(b"card-b", MemoryTrace::default());
        assert_ne!(iccid_a, iccid_b);
        let other: Vec<u8> = [&jpki::JPKI_AID[..9], &[0x02]].concat();
        install_instance(&mut a, &other);
        let for_a = item(
            0xC8,
            0x0018,
            &sealed_for(
                &cert_a,
                &iccid_a,
                &jpki::JPKI_AID,
                Role::PinEf(0x18),
                b"7391",
            ),
        );
        // Card B (its own key; the same instance AID and PIN file): does not open.
        let e = perso(&mut b, &for_a, false).unwrap_err();
        assert_eq!(e.status(), Some(StatusWord::INCORRECT_DATA));
        // Another instance on card A: does not open there either.
        let e = perso_to(&mut a, &other, &for_a, false).unwrap_err();
        assert_eq!(e.status(), Some(StatusWord::INCORRECT_DATA));
        // The instance it was sealed for: opens, and the PIN is set.
        perso(&mut a, &for_a, false).unwrap();
        jpki::select(&mut a).unwrap();
        jpki::verify(&mut a, Pin::Auth, &pin("7391")).unwrap();
        // A card provisioned without a key agreement key cannot open anything.
        let mut plain = fresh(vec![], MemoryTrace::default());
        let e = perso(&mut plain, &for_a, false).unwrap_err();
        assert_eq!(e.status(), Some(StatusWord::CONDITIONS_NOT_SATISFIED));
    }
}

#[test]
fn text_ap_facts_behind_their_own_pin() {
    let mut ch = channel();
    // Without the PIN the facts are not readable.
    ch.transmit(
        &Command::new(0, 0xA4, 4, 0x0C)
            .with_data(jpki::TEXT_AID.to_vec())
            .unwrap(),
    )
    .unwrap();
    jpki::select_ef(&mut ch, 0x0002).unwrap();
    let r = ch
        .transmit(&Command::new(0, 0xB0, 0, 0).with_le(256).unwrap())
        .unwrap();
    assert_eq!(r.sw, StatusWord::SECURITY_STATUS_NOT_SATISFIED);
    // A wrong text PIN counts against the text PIN only.
    assert!(matches!(
        jpki::read_text(&mut ch, &pin("0000")),
        Err(kagi::Error::WrongPin { tries_left: 2 })
    ));
    let facts = jpki::read_text(&mut ch, &pin(kagi_fixtures::jpki::DEMO_TEXT_PIN)).unwrap();
    assert_eq!(facts.my_number.len(), 12);
    assert!(facts.name.contains("TEST ONLY") && facts.address.contains("TEST ONLY"));
    assert_eq!(
        (facts.birth_date.as_str(), facts.sex.as_str()),
        ("20000101", "9")
    );
    jpki::select(&mut ch).unwrap();
    assert_eq!(jpki::pin_tries(&mut ch, Pin::Auth).unwrap(), 3);
}

/// Cutting power at every persistent write of the JPKI load + install + personalisation
/// leaves the card with the state of before or after the interrupted command — never a
/// half-personalised applet — and it can be personalised again afterwards.
#[test]
fn personalisation_is_tearing_safe() {
    use applet_sim::tearing::{RecordingCard, old_or_new};
    use card_wire::scp03::{HostOptions, SecurityLevel, StaticKeys};
    use kagi::secure::SecureChannel;
    fn run(
        ch: &mut CardChannel<RecordingCard>,
        id: &kagi_fixtures::jpki::DemoIdentity,
    ) -> kagi::Result<()> {
        let sd = kagi::gp::select_domain(ch, None)?;
        let opts = HostOptions {
            level: SecurityLevel::FULL,
            ..HostOptions::default()
        };
        let mut sc =
            SecureChannel::open(ch, StaticKeys::default_test_keys(0x30), opts, Some(&sd.aid))?;
        kagi_fixtures::jpki::personalise_sim(&mut sc, id, "1234", "ABC123")
    }
    let fresh = || {
        RecordingCard::new(applet_sim::SimCard::powered(
            applet_sim::SimConfig::default().seeded(8),
        ))
    };
    let id = kagi_fixtures::jpki::DemoIdentity::generate().unwrap();
    let mut reference = CardChannel::new(fresh());
    let w0 = reference.transport().card.store().writes();
    run(&mut reference, &id).unwrap();
    let total = reference.transport().card.store().writes() - w0;
    let snapshots = std::mem::take(&mut reference.transport_mut().snapshots);
    // The authentication failure counter is raised before each check by design.
    const FAIL: &str = "sd/A000000151000000/fail";
    for n in 1..=total {
        let mut ch = CardChannel::new(fresh());
        ch.transport_mut().card.tear_at(n);
        assert!(run(&mut ch, &id).is_err(), "n={n}: power was cut");
        let answered = ch.transport().answered();
        ch.reset(ResetKind::Cold).unwrap();
        let after = ch.transport().card.store().clone();
        assert!(
            old_or_new(&after, &snapshots, answered, &[FAIL]),
            "write {n}: mixed state"
        );
        // Personalised or not, never half: the auth key exists exactly when the PINs do.
        let keys = after.keys("app/D392F000260100000001/key/").len();
        let pins = after.keys("app/D392F000260100000001/pin/").len();
        assert!(
            (keys, pins) == (0, 0) || (keys, pins) == (2, 2),
            "write {n}: {keys} keys, {pins} PINs"
        );
    }
}

/// The card timing model (`applet_sim::timing`, profile "modern": NXP JCOP4 figures published
/// by JCAlgTest and GlobalPlatformPro traces): an RSA-2048 signature through the JPKI applet
/// costs what the chip would take — two commands (SELECT of the key EF, 7 command and 2
/// response bytes; COMPUTE DIGITAL SIGNATURE with a 51-byte DigestInfo and Le, 57 command and
/// 258 response bytes), each 12 ms of turnaround plus 24 us a wire byte, and 61 ms of RSA-2048
/// CRT signing; neither writes persistent memory.
#[test]
fn the_timing_model_charges_a_signature_as_a_chip() {
    let mut card = applet_sim::SimCard::from_store(demo().0.clone(), Some(6), true);
    card.power_on();
    let profile = applet_sim::timing::TimingProfile::named("modern").unwrap();
    card.set_timing(profile.clone(), applet_sim::timing::Pace::Account);
    let mut ch = CardChannel::new(card);
    jpki::select(&mut ch).unwrap();
    jpki::verify(&mut ch, Pin::Auth, &pin(kagi_fixtures::jpki::DEMO_AUTH_PIN)).unwrap();
    let before = ch.transport().card_time();
    let digest = jpki::sha256_digest_info(b"login challenge");
    assert_eq!(digest.len(), 51);
    jpki::sign(&mut ch, Pin::Auth, &digest).unwrap();
    let spent = ch.transport().card_time() - before;
    let expected = std::time::Duration::from_micros(2 * 12_000 + (9 + 57 + 258) * 24 + 61_000);
    assert_eq!(spent, expected);
    // Without the model nothing is charged.
    let mut plain = channel();
    jpki::select(&mut plain).unwrap();
    assert_eq!(plain.transport().card_time(), std::time::Duration::ZERO);
}
