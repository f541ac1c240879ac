//! PIN-less eligibility reads: verdicts for a valid, revoked (CRL and list), expired,
//! foreign-issued and non-JPKI card, in one short session that never sends a VERIFY.

use kagi::channel::CardChannel;
use kagi::eligibility::{self, Trust, Verdict};
use kagi::trace::MemoryTrace;
use kagi_fixtures::jpki::DemoIdentity;
use std::time::{Duration, SystemTime};

fn card(identity: &DemoIdentity) -> CardChannel<applet_sim::SimCard> {
    CardChannel::new(kagi_fixtures::jpki::demo_card_for(Some(1), identity).unwrap())
}

fn trust(identity: &DemoIdentity) -> Trust {
    Trust {
        cas: vec![identity.auth_ca.certificate().clone()],
        ..Trust::default()
    }
}

#[test]
fn verdicts() {
    let id = DemoIdentity::generate().unwrap();
    let trace = MemoryTrace::default();
    let mut ch = card(&id).with_trace(Box::new(trace.clone()));
    let now = SystemTime::now();

    let r = eligibility::read(&mut ch, &trust(&id), now).unwrap();
    assert_eq!(r.verdict, Verdict::Eligible, "{:?}", r.reasons);
    assert_eq!(
        u64::from_str_radix(r.serial.as_deref().unwrap(), 16).unwrap(),
        u64::from(id.auth_serial)
    );
    // The minimum: SELECT AP, SELECT EF, and one READ BINARY per 256 bytes of certificate.
    assert_eq!(
        r.commands,
        2 + id.auth_cert.len().div_ceil(256),
        "{} commands",
        r.commands
    );
    // No VERIFY (INS 20) or any other PIN command ever reached the card.
    assert!(
        !trace
            .lines()
            .iter()
            .any(|l| l.starts_with(">> ") && matches!(&l[5..7], "20" | "21" | "24" | "2C"))
    );

    // Revoked through the issuer's CRL.
    let mut t = trust(&id);
    use der::Encode;
    let crl = id
        .auth_ca
        .crl(1, &[id.auth_serial])
        .unwrap()
        .to_der()
        .unwrap();
    t.add_crl_file(&crl).unwrap();
    assert_eq!(
        eligibility::read(&mut ch, &t, now).unwrap().verdict,
        Verdict::Revoked
    );
    // A CRL signed by someone else is ignored.
    let other = test_pki::TestCa::new("someone else").unwrap();
    let mut t = trust(&id);
    t.add_crl_file(&other.crl(1, &[id.auth_serial]).unwrap().to_der().unwrap())
        .unwrap();
    let r = eligibility::read(&mut ch, &t, now).unwrap();
    assert_eq!(r.verdict, Verdict::Eligible, "{:?}", r.reasons);
    // Revoked through a plain list.
    let mut t = trust(&id);
    t.add_revoked_list(&format!("# lost cards\n{}\n", id.auth_serial))
        .unwrap();
    assert_eq!(
        eligibility::read(&mut ch, &t, now).unwrap().verdict,
        Verdict::Revoked
    );
    // Expired, by the clock.
    let later = now + Duration::from_secs(2 * 365 * 86400);
    assert_eq!(
        eligibility::read(&mut ch, &trust(&id), later)
            .unwrap()
            .verdict,
        Verdict::Expired
    );
    // Unknown issuer.
    let stranger = Trust {
        cas: vec![other.certificate().clone()],
        ..Trust::default()
    };
    assert_eq!(
        eligibility::read(&mut ch, &stranger, now).unwrap().verdict,
        Verdict::UnknownIssuer
    );
    // A plain GP card is not a JPKI card.
    let mut plain = CardChannel::new(applet_sim::SimCard::powered(
        applet_sim::SimConfig::default(),
    ));
    assert_eq!(
        eligibility::read(&mut plain, &trust(&id), now)
            .unwrap()
            .verdict,
        Verdict::NotAJpkiCard
    );
}

#[test]
fn an_expired_certificate_on_the_card() {
    let ca = test_pki::TestCa::new("JPKI for user authentication").unwrap();
    let sign_ca = test_pki::TestCa::new("JPKI for digital signature").unwrap();
    let long_ago = SystemTime::now() - Duration::from_secs(3 * 365 * 86400);
    let id =
        DemoIdentity::generate_with(ca, sign_ca, long_ago, long_ago + Duration::from_secs(86400))
            .unwrap();
    let mut ch = card(&id);
    let r = eligibility::read(&mut ch, &trust(&id), SystemTime::now()).unwrap();
    assert_eq!(r.verdict, Verdict::Expired, "{:?}", r.reasons);
}
