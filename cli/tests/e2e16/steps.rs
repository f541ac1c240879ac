//! Seed 004's 別紙1 ①–⑱, walked once through the three services: one named step each, in
//! the order the on-card mode takes them.

use crate::support::cli::{CONTACT, Scenario, kagi, ok, pin_named};
use crate::support::services::{
    self, Databases, Services, Setup, apply_code, check, mailed_code, phone_key_in_image,
};
use crate::{
    Walk, found_in, kept, openssl, openssl_serial, p, public_key_of, signature_verifies,
    sim_certificate, verifies_under,
};
use kagi_certs::application::Application;
use std::path::Path;

/// The provider's security domain (`kagi mno-tsm init`'s `[[provider]] security_domain`, the
/// SP-TSM's `security_domain`).
pub const PROVIDER_SD: &str = "A00000015153505001";
/// The JPKI user-authentication AP's AID (the published JPKI card's).
pub const JPKI_AID: &str = "D392F000260100000001";

/// The SIM image's registry: (AID, associated security domain) of every entry, upper-case
/// hex.
pub fn registry(image: &Path) -> Vec<(String, String)> {
    let card = applet_sim::SimCard::from_image(image, None).unwrap();
    applet_sim::registry::entries(card.store())
        .into_iter()
        .map(|e| {
            (
                hex::encode_upper(e.aid.as_ref()),
                e.sd.map(|a| hex::encode_upper(a.as_ref()))
                    .unwrap_or_default(),
            )
        })
        .collect()
}

/// The key version the security domain `sd` answers INITIALIZE UPDATE with (any key
/// version asked for: the one it has), by raw APDUs on the SIM image.
pub fn sd_key_version(image: &Path, sd: &str) -> u8 {
    use card_wire::apdu::Command as Apdu;
    use kagi::channel::ApduChannel;
    let mut card = applet_sim::SimCard::from_image(image, None).unwrap();
    card.power_on();
    let mut ch = kagi::channel::CardChannel::new(card);
    let select = Apdu::new(0x00, 0xA4, 0x04, 0x00)
        .with_data(hex::decode(sd).unwrap())
        .unwrap()
        .with_le(256)
        .unwrap();
    assert!(ch.transmit(&select).unwrap().sw.is_success());
    let iu = Apdu::new(0x80, 0x50, 0x00, 0x00)
        .with_data(vec![0x11; 8])
        .unwrap()
        .with_le(256)
        .unwrap();
    let r = ch.transmit(&iu).unwrap();
    assert!(r.sw.is_success(), "INITIALIZE UPDATE: {:?}", r.sw);
    // KDD (10 bytes), then the key version.
    r.data[10]
}

/// The SP-TSM's audit trail of operation `op` as `actor|event|detail` lines.
fn sp_audit(services: &Services, dir: &Path, op: &str) -> Vec<String> {
    let rows = services.sp_row(
        dir,
        &format!("SELECT actor, event, detail FROM audit WHERE op_id = '{op}' ORDER BY id"),
    );
    rows.lines().map(str::to_string).collect()
}

/// Walks ①–⑱ with the three services on SQLite, or each on a database of its own in the
/// private PostgreSQL `pg`.
pub fn walk(name: &str, pg: Option<&tsm_server::testing::PrivatePostgres>) {
    let w = Walk::begin();
    let s = Scenario::new(name, false);
    let dir = &s.dir;
    let db = pg.map(Databases::all_on).unwrap_or_default();
    let sv = services::start_with(
        &s,
        Setup {
            db,
            ..Default::default()
        },
    );
    let iccid = sv.iccid.clone();
    let image = dir.join("sim.img");
    assert!(
        registry(&image)
            .iter()
            .all(|(aid, _)| aid != PROVIDER_SD && aid != JPKI_AID),
        "the SIM is sold without the provider's domain and applet: {:?}",
        registry(&image)
    );

    // ①
    let s1 = w.step("① the user's application, signed with the simulated My Number card");
    let application = s.apply(&iccid);
    let app = Application::decode(&std::fs::read(&application).unwrap()).unwrap();
    assert_eq!(app.body.iccid, iccid, "{s1}: for this SIM");
    assert_eq!(app.body.provider, "sp:kagi-bank", "{s1}: to this provider");
    assert_eq!(app.body.contact, CONTACT, "{s1}: the user's mail address");
    let sign_der = dir.join("sign.der");
    std::fs::write(&sign_der, &app.certificate).unwrap();
    assert!(
        verifies_under(&sign_der, &dir.join("pki/sign-ca.crt.pem")),
        "{s1}: the signature certificate verifies under the signature CA (openssl)"
    );
    std::fs::write(dir.join("app.signed"), app.body.signed_bytes().unwrap()).unwrap();
    std::fs::write(dir.join("app.sig"), &app.signature).unwrap();
    assert!(
        signature_verifies(
            &public_key_of(&sign_der),
            &dir.join("app.sig"),
            &dir.join("app.signed")
        ),
        "{s1}: the application's signature verifies with the card's certificate (openssl)"
    );
    let sign_serial = openssl_serial(&sign_der);

    // ⑤ (② on its way: the provider passes the application on)
    let s5 = w.step("②⑤ the application through the provider to the SP-TSM: accepted");
    assert_eq!(
        apply_code(&s, &iccid, &application, "issue.json"),
        None,
        "{s5}"
    );
    let issued: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("issue.json")).unwrap()).unwrap();
    let op = issued["op"].as_str().unwrap().to_string();
    let ticket = issued["ticket"].as_str().unwrap().to_string();
    assert_eq!(
        sv.sp_row(
            dir,
            &format!("SELECT kind, party, state, iccid FROM ops WHERE id = '{op}'")
        ),
        format!("issue|sp:kagi-bank|awaiting-device|{iccid}"),
        "{s5}: the operation in the SP-TSM's database"
    );
    assert_eq!(
        sp_audit(&sv, dir, &op)[0],
        "sp:kagi-bank|accepted|issue",
        "{s5}"
    );

    // ②③ (the SP-TSM asked the issuer before it stored the operation: `negatives` shows a
    // refused application leaves nothing)
    let s23 =
        w.step("②③ the issuer checked the application at Apply: signature, CA, CRL, nonce unused");
    assert_eq!(
        sv.issuer_row(dir, "SELECT actor, event, detail FROM audit ORDER BY id"),
        format!(
            "tsm:kagi|application-checked|sign {sign_serial} sim {iccid} provider sp:kagi-bank"
        ),
        "{s23}: the issuer's audit: the check, for the card's certificate, and nothing else"
    );
    assert_eq!(
        sv.issuer_row(dir, "SELECT count(*) FROM applications"),
        "0",
        "{s23}: the nonce is not spent by the check (the Certify spends it)"
    );
    assert_eq!(
        std::fs::read_dir(dir.join("issuer/pin-mailer"))
            .map(|d| d.count())
            .unwrap_or(0),
        0,
        "{s23}: no certificate, no PIN letter: the key is not made yet"
    );

    // ④
    let s4 = w.step("④ the password registered and the access code made (at the SP-TSM)");
    assert_eq!(
        issued["access_code"],
        serde_json::Value::Null,
        "{s4}: the code is not the provider's"
    );
    let (mail, code) = mailed_code(&dir.join("tsm/outbox"));
    assert_eq!(
        sv.sp_row(
            dir,
            &format!("SELECT recipient FROM code_mail WHERE op_id = '{op}'")
        ),
        "",
        "{s4}: the address is blanked once the mail is sent"
    );

    // ⑪
    let s11 = w.step("⑪ the access code mailed to the user (the SP-TSM's maildir outbox)");
    let text = std::fs::read_to_string(&mail).unwrap();
    let message_id = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("Message-ID: ")
                .or_else(|| l.strip_prefix("Message-Id: "))
        })
        .unwrap_or_else(|| panic!("{s11}: no Message-ID: {text}"))
        .trim()
        .to_string();
    assert_eq!(
        sp_audit(&sv, dir, &op)[1],
        format!("tsm|code-sent|{message_id}"),
        "{s11}: the SP-TSM's audit names the mail sent"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&mail).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{s11}: the mail is the user's only");
    }
    std::fs::write(dir.join("ticket.txt"), &ticket).unwrap();
    std::fs::write(dir.join("code.txt"), &code).unwrap();

    // ⑫ … ⑱ in one relay run (its sessions as the phone's JPKI-UI app makes them).
    let s12 = w.step("⑫ the JPKI-UI app (kagi relay) asks for the download with the ticket");
    let out = ok(s
        .relay()
        .arg("--sim")
        .arg("--sim-image")
        .arg(&image)
        .arg("--capture")
        .arg(dir.join("relay.bin")));
    let relay: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(relay["outcome"], "completed", "{s12}: {out}");
    let trail = sp_audit(&sv, dir, &op);

    // ⑬
    let s13 = w.step("⑬ the access code and the password checked (at the SP-TSM)");
    assert_eq!(
        trail[2..4],
        [
            "relay|session-opened|kagi relay 0.1.0".to_string(),
            "relay|authorised|".to_string()
        ],
        "{s13}: {trail:?}"
    );
    assert!(
        !trail.iter().any(|l| l.contains("wrong-entries")),
        "{s13}: {trail:?}"
    );

    // ⑭
    let s14 = w.step("⑭ the SP-TSM asks the MNO-TSM to issue the JPKI applet");
    assert_eq!(
        trail[4],
        format!("tsm|sent-to-mno|http://127.0.0.1:{}", sv.mno_port),
        "{s14}: {trail:?}"
    );
    let mno_op = sv.mno_row(
        dir,
        &format!("SELECT id FROM ops WHERE iccid = '{iccid}' AND kind = 'prepare-sim'"),
    );
    assert_eq!(
        sv.mno_row(
            dir,
            &format!("SELECT party, state FROM ops WHERE id = '{mno_op}'")
        ),
        "tsm:kagi|completed",
        "{s14}: the request, signed by the SP-TSM, in the MNO-TSM's database"
    );
    // Asked once: the relay brought the MNO-TSM's receipt back to the SP-TSM, which checked
    // it instead of asking again, in both of its sessions (the key made, the credential
    // written). The SP-TSM's signed requests at the MNO-TSM: the SIM's record at the
    // application, the preparation.
    assert_eq!(
        sv.mno_row(dir, "SELECT count(*) FROM replay WHERE sender = 'tsm:kagi'"),
        "2",
        "{s14}: the SP-TSM's signed requests at the MNO-TSM"
    );

    // ⑮
    let s15 = w.step("⑮ the MNO-TSM creates the provider's domain and installs the JPKI applet");
    let mno_trail = sv.mno_row(
        dir,
        &format!("SELECT actor, event FROM audit WHERE op_id = '{mno_op}' ORDER BY id"),
    );
    assert_eq!(
        mno_trail.lines().collect::<Vec<_>>(),
        [
            "tsm:kagi|accepted",
            "relay|session-opened",
            "relay|authorised",
            "tsm|domain-installed",
            "tsm|completed"
        ],
        "{s15}"
    );
    let reg = registry(&image);
    let hex_sd = if sv.db.mno.is_some() {
        "upper(encode(sd_aid, 'hex'))"
    } else {
        "hex(sd_aid)"
    };
    assert!(
        reg.iter().any(|(aid, _)| aid == PROVIDER_SD),
        "{s15}: the provider's domain on the SIM: {reg:?}"
    );
    assert!(
        reg.iter()
            .any(|(aid, sd)| aid == JPKI_AID && sd == PROVIDER_SD),
        "{s15}: the JPKI applet in the provider's domain: {reg:?}"
    );
    assert_eq!(
        sv.mno_row(
            dir,
            &format!("SELECT {hex_sd} FROM cards WHERE iccid = '{iccid}'")
        ),
        PROVIDER_SD,
        "{s15}: the SIM registered for the provider's domain at the MNO-TSM"
    );
    // The operator's keys were replaced by the provider's (the SP-TSM's key version 31).
    assert_eq!(
        sd_key_version(&image, PROVIDER_SD),
        0x31,
        "{s15}: the provider's domain answers with the provider's key version"
    );

    // ⑥
    let s6 = w.step("⑥ the SP-TSM asks the issuer for the certificate: a challenge to the SIM");
    let challenge = sv.issuer_row(
        dir,
        "SELECT sp_tsm, iccid, upper(instance), state FROM challenges",
    );
    assert_eq!(
        challenge,
        format!("tsm:kagi|{iccid}|{JPKI_AID}|used"),
        "{s6}: one challenge, for this SIM's applet, spent by the Certify"
    );
    let issuer_trail = sv.issuer_row(dir, "SELECT actor, event, detail FROM audit ORDER BY id");
    let issuer_trail: Vec<&str> = issuer_trail.lines().collect();
    assert_eq!(
        issuer_trail[1],
        format!("tsm:kagi|challenge|SIM {iccid}"),
        "{s6}: after the application's check"
    );

    // ⑦
    let s7 = w.step("⑦ the key made — on the SIM, by its JPKI applet (on-card mode)");
    use p256::elliptic_curve::sec1::ToSec1Point;
    let key = phone_key_in_image(&image);
    let point = p256::SecretKey::from_slice(&key)
        .unwrap()
        .public_key()
        .to_sec1_point(false)
        .as_bytes()
        .to_vec();
    let auth = dir.join("auth.der");
    sim_certificate(&s, &auth);
    let spki = dir.join("auth.spki.der");
    let (_, err, good) = openssl(&[
        "pkey",
        "-pubin",
        "-in",
        p(&public_key_of(&auth)),
        "-outform",
        "DER",
        "-out",
        p(&spki),
    ]);
    assert!(good, "{s7}: {err}");
    assert!(
        std::fs::read(&spki).unwrap().ends_with(&point),
        "{s7}: the certificate is for the key the SIM holds"
    );

    // ②③ again at ⑯: the Certify checks the application as the Apply's check did, and
    // spends its nonce.
    let s23 = w.step("②③ checked again by the Certify (⑯), the application's nonce spent");
    assert_eq!(
        sv.issuer_row(dir, "SELECT sign_serial, nonce FROM applications"),
        format!("{sign_serial}|{}", hex::encode(app.body.nonce)),
        "{s23}: the application's nonce recorded against the card's certificate"
    );
    assert_eq!(
        sv.issuer_row(dir, "SELECT serial, revoked FROM sign_certs"),
        format!("{sign_serial}|0"),
        "{s23}: the card's certificate, not revoked"
    );

    // ⑧
    let s8 = w.step("⑧ registered: the phone certificate linked to the card's serial");
    let phone = openssl_serial(&auth);
    assert_eq!(
        sv.issuer_row(
            dir,
            &format!(
                "SELECT sign_serial, iccid, provider, sp_tsm, state FROM links WHERE serial = '{phone}'"
            )
        ),
        format!("{sign_serial}|{iccid}|sp:kagi-bank|tsm:kagi|active"),
        "{s8}"
    );
    // The phone certificate never outlives the card's.
    let end = |der: &Path| {
        let (out, err, good) = openssl(&[
            "x509",
            "-inform",
            "DER",
            "-noout",
            "-enddate",
            "-in",
            p(der),
        ]);
        assert!(good, "{s8}: {der:?} {err}");
        out
    };
    let (phone_end, card_end) = (end(&auth), end(&sign_der));
    let secs = |text: &str| {
        let date = text
            .lines()
            .find_map(|l| l.strip_prefix("notAfter="))
            .unwrap()
            .to_string();
        let o = std::process::Command::new("date")
            .args(["-u", "-d", &date, "+%s"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout)
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    assert!(
        secs(&phone_end) <= secs(&card_end),
        "{s8}: {phone_end} after {card_end}"
    );

    // ⑨ (⑩ is not drawn in 別紙1)
    let s9 = w.step("⑨ the registration reported to the SP-TSM");
    assert_eq!(
        sv.sp_row(
            dir,
            &format!(
                "SELECT iccid, party, state, serial, my_number_serial FROM credentials WHERE op_id = '{op}'"
            )
        ),
        format!("{iccid}|sp:kagi-bank|active|{phone}|{sign_serial}"),
        "{s9}: the SP-TSM's record"
    );
    let status = check(&s, &op);
    assert_eq!(status["state"], "active", "{s9}: {status}");
    assert_eq!(
        status["my_number_sign_serial"],
        sign_serial.as_str(),
        "{s9}"
    );

    // ⑯⑰
    let s16 = w.step("⑯⑰ the issuer certifies the key made on the SIM (UA CA)");
    assert_eq!(
        issuer_trail[2],
        format!(
            "tsm:kagi|issued|phone {phone} sign {sign_serial} sim {iccid} provider sp:kagi-bank"
        ),
        "{s16}"
    );
    assert_eq!(issuer_trail.len(), 3, "{s16}: {issuer_trail:?}");
    assert_eq!(
        trail[5..7],
        [
            "relay|session-resumed|kagi relay 0.1.0".to_string(),
            format!("tsm|key-certified|{phone}")
        ],
        "{s16}: {trail:?}"
    );
    assert!(
        verifies_under(&auth, &dir.join("pki/auth-ca.crt.pem")),
        "{s16}: the phone certificate verifies under the UA CA (openssl)"
    );
    assert!(
        !verifies_under(&auth, &dir.join("pki/sign-ca.crt.pem")),
        "{s16}: and not under the signature CA"
    );
    let letter = dir.join(format!("issuer/pin-mailer/{phone}.pin"));
    assert_eq!(
        std::fs::read_dir(dir.join("issuer/pin-mailer"))
            .unwrap()
            .count(),
        1,
        "{s16}: one PIN letter"
    );

    // ⑱
    let s18 = w.step("⑱ the SP-TSM writes the certificate through its own secure channel");
    assert_eq!(
        trail[7..],
        ["tsm|completed|10 card commands, 2 secure session(s)".to_string()],
        "{s18}: {trail:?}"
    );
    let msg = dir.join("msg.txt");
    std::fs::write(&msg, "seed 004, step 18").unwrap();
    ok(kagi()
        .args(["jpki", "sign", "--sim", "--sim-image"])
        .arg(&image)
        .arg("--pin-file")
        .arg(&letter)
        .arg("-i")
        .arg(&msg)
        .arg("-o")
        .arg(dir.join("msg.sig")));
    let raw = std::fs::read(dir.join("msg.sig")).unwrap();
    let der = p256::ecdsa::Signature::from_slice(&raw).unwrap().to_der();
    std::fs::write(dir.join("msg.sig.der"), der.as_bytes()).unwrap();
    assert!(
        signature_verifies(&public_key_of(&auth), &dir.join("msg.sig.der"), &msg),
        "{s18}: the SIM's JPKI applet signs with the certified key (openssl)"
    );

    // Who holds what: the private key on the SIM only; the PIN with the issuer's mailer and
    // the SIM; the access code with the user.
    let sk = w.step("the private key, the PIN and the access code are nowhere else");
    let pin = std::fs::read_to_string(&letter).unwrap().trim().to_string();
    assert_eq!(
        sv.sp_row(dir, "SELECT count(*) FROM sealed"),
        "0",
        "{sk}: the SP-TSM keeps no sealed value after the operation"
    );
    for table in ["credentials", "sealed", "code_mail", "keygen_challenges"] {
        assert_eq!(
            sv.mno_row(dir, &format!("SELECT count(*) FROM {table}")),
            "0",
            "{sk}: the MNO-TSM keeps no {table}"
        );
    }
    let pg_alive = pg.is_some();
    let mut sv = sv;
    let relay_capture = std::fs::read(dir.join("relay.bin")).unwrap();
    let stored = {
        // Stopped first: their files are complete (PostgreSQL keeps running for the dumps).
        sv._running.clear();
        let mut k = kept(&s, &sv);
        k.push(("relay: capture".into(), relay_capture));
        k
    };
    assert!(stored.len() >= if pg_alive { 7 } else { 10 }, "{sk}");
    // The search finds what is there: the key in the SIM image, the code in the capture.
    let sim = [("sim".to_string(), std::fs::read(&image).unwrap())];
    assert_eq!(found_in(&sim, &key), ["sim"], "{sk}: the search works");
    assert_eq!(
        found_in(&stored, code.as_bytes()),
        ["relay: capture"],
        "{sk}: the search works"
    );
    assert_eq!(found_in(&stored, &key), Vec::<String>::new(), "{sk}: key");
    // The user types the access code and the password into the relay (their phone), by
    // design: the services keep neither. The password does not even travel: the phone
    // derives it (Argon2id, server relief) and sends the key.
    let services_only = &stored[..stored.len() - 1];
    assert_eq!(
        found_in(services_only, code.as_bytes()),
        Vec::<String>::new(),
        "{sk}: access code"
    );
    assert_eq!(
        found_in(&stored, "a password".as_bytes()),
        Vec::<String>::new(),
        "{sk}: password (services and the relay's capture)"
    );
    // The PIN (four digits: a bare search would find timestamps) travels sealed to the
    // applet with a fresh nonce; in clear it would be named as a PIN. Nothing sealed is
    // kept once the operation is over.
    let named = |bytes: &[u8]| pin_named(bytes, &pin);
    assert!(
        named(format!("pin = \"{pin}\"").as_bytes()),
        "{sk}: the search works"
    );
    let places: Vec<&String> = stored
        .iter()
        .filter(|(_, b)| named(b))
        .map(|(n, _)| n)
        .collect();
    assert!(places.is_empty(), "{sk}: the PIN is named in {places:?}");
    // The link to the card's certificate is the issuer's and the SP-TSM's, not the
    // operator's.
    let mno_side: Vec<_> = stored
        .iter()
        .filter(|(n, _)| n.starts_with("mno-tsm") || n.starts_with("relay"))
        .cloned()
        .collect();
    assert_eq!(
        found_in(&mno_side, sign_serial.as_bytes()),
        Vec::<String>::new(),
        "{sk}: the card's serial"
    );
    drop(sv);
}
