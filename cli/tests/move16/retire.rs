//! The provider's domain deleted on the old SIM after a transfer (issue #16's lifecycle, on
//! the card): the MNO-TSM that accepted the SP-TSM's `DeleteProviderDomain` holds a
//! `retire-domain` operation for the old SIM; its operator fetches the ticket (`kagi tsm mno
//! retire-ticket`), the relay runs it with the old SIM image, and the image — read with
//! applet-sim, not through kagi's TSM — no longer holds the provider's domain, its JPKI
//! instance or its load file, while the issuer domain and every other applet stay. A used
//! ticket is refused; a fresh ticket on the cleaned SIM ends completed, deleting nothing; a
//! repeated `DeleteProviderDomain` is acknowledged; the new SIM still signs; a credential
//! moving back to a SIM before its ticket ran is refused, after it ran it moves and that SIM's
//! new domain gets no ticket; a lost SIM gets no ticket.

use crate::support::cli::{Scenario, field, kagi, ok};
use crate::two_mnos::{self, Operator, Two};
use card_wire::Transport;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use tsm_protocol::PartyId;
use tsm_protocol::control::{ControlRequest, ControlResponse};
use tsm_protocol::signing::{Signer, Trust};

/// The provider's domain (`kagi tsm init`'s `security_domain`).
const SD: &str = "A00000015153505001";

/// What the SIM image holds, read with applet-sim: its applications and domains (AID hex,
/// with the AID of the domain each is associated with) and its load files (AID hex).
struct Contents {
    apps: BTreeSet<(String, String)>,
    load_files: BTreeSet<String>,
    isd: String,
}

fn contents(image: &Path) -> Contents {
    let card = applet_sim::SimCard::from_image(image, None).unwrap();
    let store = card.store();
    let apps = applet_sim::registry::entries(store)
        .iter()
        .map(|e| {
            (
                hex::encode_upper(e.aid.as_bytes()),
                e.sd.as_ref()
                    .map(|s| hex::encode_upper(s.as_bytes()))
                    .unwrap_or_default(),
            )
        })
        .collect();
    let isd = applet_sim::registry::entries(store)
        .iter()
        .find(|e| e.is_isd())
        .map(|e| hex::encode_upper(e.aid.as_bytes()))
        .unwrap();
    let load_files = applet_sim::registry::load_files(store)
        .iter()
        .map(|l| hex::encode_upper(l.aid.as_bytes()))
        .collect();
    Contents {
        apps,
        load_files,
        isd,
    }
}

/// The status word of SELECT by AID `aid` (hex) on the SIM in `image` (nothing saved).
fn select_sw(image: &Path, aid: &str) -> String {
    let mut card = applet_sim::SimCard::from_image(image, None).unwrap();
    let aid = hex::decode(aid).unwrap();
    let mut apdu = vec![0x00, 0xA4, 0x04, 0x00, aid.len() as u8];
    apdu.extend(&aid);
    apdu.push(0x00);
    let r = card.transmit(&apdu).unwrap();
    hex::encode_upper(&r[r.len() - 2..])
}

/// `kagi --json tsm mno … retire-ticket --iccid ICCID --out FILE` as operator `o`: the
/// ticket file (the ticket alone in it, for `kagi relay --ticket-file`), or the refusal code.
fn retire_ticket(s: &Scenario, o: &Operator, iccid: &str) -> Result<PathBuf, String> {
    let out = s.dir.join("retire.json");
    let got = kagi()
        .args(["--json", "tsm", "mno", "--config"])
        .arg(s.dir.join(o.dir).join("operator.toml"))
        .args(["retire-ticket", "--iccid", iccid, "--out"])
        .arg(&out)
        .output()
        .unwrap();
    if !got.status.success() {
        let v: serde_json::Value = serde_json::from_slice(&got.stdout).unwrap_or_else(|e| {
            panic!(
                "not a JSON error ({e}): {}{}",
                String::from_utf8_lossy(&got.stdout),
                String::from_utf8_lossy(&got.stderr)
            )
        });
        return Err(v["error"]["code"].as_str().unwrap().to_string());
    }
    crate::support::schema::document("tsm.provider.issue", &got.stdout);
    let doc = std::fs::read_to_string(&out).unwrap();
    assert!(
        field(&doc, "access_code").is_empty(),
        "no access code: {doc}"
    );
    let file = s.dir.join("retire-ticket.txt");
    std::fs::write(&file, field(&doc, "ticket")).unwrap();
    Ok(file)
}

/// `kagi --json relay` of the ticket in `ticket` at the MNO-TSM of `o` with the SIM in
/// `image`: its outcome.
fn relay_at(o: &Operator, ticket: &Path, image: &Path) -> String {
    let mut c = kagi();
    c.args(["relay", "--json", "--tsm"])
        .arg(format!("http://127.0.0.1:{}", o.port))
        .arg("--ticket-file")
        .arg(ticket);
    outcome(c.args(["--sim", "--sim-image"]).arg(image))
}

/// The outcome the relay `c` reports, whether or not it completed.
fn outcome(c: &mut Command) -> String {
    let got = c.output().unwrap();
    // The first JSON document on stdout is the relay's report (a failure adds an error).
    let first = serde_json::Deserializer::from_slice(&got.stdout)
        .into_iter::<serde_json::Value>()
        .next()
        .unwrap_or_else(|| {
            panic!(
                "no JSON from the relay: {}",
                String::from_utf8_lossy(&got.stderr)
            )
        })
        .unwrap();
    first["outcome"].as_str().unwrap_or_default().to_string()
}

/// The SP-TSM's `DeleteProviderDomain` for `iccid`, signed with its key, sent to the MNO-TSM
/// of `o`; the MNO-TSM's answer, checked against its key.
fn delete_again(s: &Scenario, o: &Operator, iccid: &str) -> ControlResponse {
    let signer = Signer::from_pkcs8_pem(
        PartyId::new("tsm:kagi").unwrap(),
        &std::fs::read_to_string(s.dir.join("tsm/tsm.key.pem")).unwrap(),
    )
    .unwrap();
    let mno = PartyId::new(o.mno_tsm).unwrap();
    let req = ControlRequest::DeleteProviderDomain {
        iccid: iccid.into(),
        provider: PartyId::new("sp:kagi-bank").unwrap(),
        sd_aid: hex::decode(SD).unwrap(),
    };
    let now = tsm_protocol::signing::now_ms();
    let out = tsm_protocol::control::sign_request(&signer, &mno, &req, None, now, 120_000).unwrap();
    let body = s.dir.join("delete.bin");
    std::fs::write(&body, &out.bytes).unwrap();
    let got = Command::new("curl")
        .args(["-sf", "-H", "content-type: application/octet-stream"])
        .arg("--data-binary")
        .arg(format!("@{}", body.display()))
        .arg(format!("http://127.0.0.1:{}/v1/control", o.port))
        .output()
        .unwrap();
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    let mut trust = Trust::new();
    trust
        .add_pem(
            mno,
            &std::fs::read_to_string(s.dir.join(o.dir).join("mno-tsm.pub.pem")).unwrap(),
        )
        .unwrap();
    tsm_protocol::control::open_answer_as::<ControlResponse>(
        &got.stdout,
        &out.header,
        &trust,
        tsm_protocol::signing::now_ms(),
    )
    .unwrap()
}

/// The events under `sim:ICCID` in the MNO-TSM of `o`, oldest first, one per line.
fn sim_events(s: &Scenario, o: &Operator, iccid: &str) -> Vec<String> {
    o.row(
        s,
        &format!("SELECT event FROM audit WHERE op_id = 'sim:{iccid}' ORDER BY id"),
    )
    .lines()
    .map(str::to_string)
    .collect()
}

/// Credential `op` moved from SIM `from` to SIM `to` (image `image`) on a fresh transfer
/// application; the new credential's operation, once the SP-TSM's domain deletion for
/// `from` was acknowledged.
fn move_to(s: &Scenario, two: &Two, op: &str, from: &str, to: &str, image: &Path) -> String {
    let application =
        crate::transfer::transfer_application(s, "mynumber.img", from, to, "transfer.bin");
    let new_op = two_mnos::apply_transfer(s, op, to, &application).unwrap();
    assert_eq!(two_mnos::relay(s, image), "completed");
    assert_eq!(two_mnos::check(s, op)["state"], "revoked");
    let deletion = |iccid: &str| {
        two.sp_row(
            s,
            &format!("SELECT state FROM domain_deletions WHERE iccid = '{iccid}'"),
        )
    };
    for _ in 0..600 {
        if deletion(from) == "done" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(deletion(from), "done");
    new_op
}

#[test]
fn the_old_sims_provider_domain_is_deleted_on_the_card_with_the_operators_ticket() {
    let s = Scenario::new("move16-retire", false);
    let two = two_mnos::start(&s, "issuer");
    let (a, b) = (&two.a, &two.b);

    let application = s.apply(&a.iccid);
    let op = two_mnos::apply(&s, &a.iccid, &application).unwrap();
    assert_eq!(two_mnos::relay(&s, &a.image), "completed");
    // Nothing moved off SIM A yet: nothing to delete there.
    assert_eq!(
        retire_ticket(&s, a, &a.iccid).unwrap_err(),
        "business.nothing-to-retire"
    );

    // What SIM A holds with the credential: the provider's domain with the JPKI instance in
    // it (and its load file), the issuer domain, the SIM's own applets.
    let before = contents(&a.image);
    let in_sd: BTreeSet<String> = before
        .apps
        .iter()
        .filter(|(_, sd)| sd == SD)
        .map(|(aid, _)| aid.clone())
        .collect();
    let jpki = hex::encode_upper(card_wire::jpki::JPKI_AID);
    let package = hex::encode_upper(card_wire::jpki::JPKI_PACKAGE);
    assert_eq!(in_sd, BTreeSet::from([jpki.clone()]), "{:?}", before.apps);
    assert!(before.apps.iter().any(|(aid, _)| aid == SD));
    assert!(before.load_files.contains(&package));
    let others: BTreeSet<_> = before
        .apps
        .iter()
        .filter(|(aid, sd)| aid != SD && sd != SD)
        .cloned()
        .collect();
    assert!(
        others.iter().any(|(aid, _)| aid == &before.isd) && others.len() > 1,
        "the issuer domain and at least one other applet: {others:?}"
    );
    assert_eq!(select_sw(&a.image, &jpki), "9000");

    // The credential moves to SIM B (the MVNO's): MNO-TSM A queues the deletion on SIM A.
    let moved = move_to(&s, &two, &op, &a.iccid, &b.iccid, &b.image);
    let events = sim_events(&s, a, &a.iccid);
    assert!(
        events.ends_with(&[
            "domain-deleted".to_string(),
            "domain-deletion-on-card-queued".to_string()
        ]),
        "{events:?}"
    );
    // The SIM is unchanged until the subscriber's phone runs the ticket.
    assert_eq!(contents(&a.image).apps, before.apps);

    // The operator's ticket, run by the relay with the old SIM.
    let ticket = retire_ticket(&s, a, &a.iccid).unwrap();
    assert_eq!(relay_at(a, &ticket, &a.image), "completed");
    let after = contents(&a.image);
    let expected: BTreeSet<_> = others.clone();
    assert_eq!(
        after.apps, expected,
        "only the domain and its instance went"
    );
    let mut lfs = before.load_files.clone();
    lfs.remove(&package);
    assert_eq!(after.load_files, lfs, "only the JPKI load file went");
    assert_eq!(select_sw(&a.image, SD), "6A82");
    assert_eq!(select_sw(&a.image, &jpki), "6A82");
    assert_eq!(
        a.row(
            &s,
            &format!(
                "SELECT actor, event FROM audit WHERE op_id = 'sim:{}' ORDER BY id DESC LIMIT 1",
                a.iccid
            )
        ),
        "tsm|domain-deleted-on-card"
    );
    assert_eq!(
        a.row(
            &s,
            &format!(
                "SELECT kind, state FROM ops WHERE iccid = '{}' ORDER BY created_at DESC LIMIT 1",
                a.iccid
            )
        ),
        "retire-domain|completed"
    );

    // The same ticket again: refused (spent), and the SIM as it was.
    assert_eq!(relay_at(a, &ticket, &a.image), "refused");
    // A fresh ticket on the cleaned SIM: completed, nothing deleted.
    let used = std::fs::read_to_string(&ticket).unwrap();
    let again = retire_ticket(&s, a, &a.iccid).unwrap();
    assert_ne!(std::fs::read_to_string(&again).unwrap(), used);
    assert_eq!(relay_at(a, &again, &a.image), "completed");
    assert_eq!(contents(&a.image).apps, expected);
    assert_eq!(
        a.row(
            &s,
            &format!(
                "SELECT detail FROM audit WHERE op_id = 'sim:{}' AND event = 'domain-deleted-on-card' ORDER BY id DESC LIMIT 1",
                a.iccid
            )
        ),
        format!("sp:kagi-bank's domain {SD} was not on the SIM any more")
    );
    // The SP-TSM's deletion again: acknowledged, and no new operation for the SIM.
    let ops_before = a.row(&s, "SELECT count(*) FROM ops");
    let answer = delete_again(&s, a, &a.iccid);
    assert!(matches!(answer, ControlResponse::Ok), "{answer:?}");
    assert_eq!(a.row(&s, "SELECT count(*) FROM ops"), ops_before);

    // The new SIM still signs with the moved credential.
    let serial = two_mnos::check(&s, &moved)["serial"]
        .as_str()
        .unwrap()
        .to_string();
    crate::transfer::new_sim_signs(&s, &b.image, &serial);

    // Within the MVNO, SIM B to B2: SIM B's deletion queued. Back to SIM B before its
    // ticket ran: refused at the MNO-TSM (the old domain must go first), nothing moves.
    let (b2, b2_image) = two_mnos::another_sim(&s, b, "b2");
    let on_b2 = move_to(&s, &two, &moved, &b.iccid, &b2, &b2_image);
    assert!(sim_events(&s, b, &b.iccid).contains(&"domain-deletion-on-card-queued".to_string()));
    let application =
        crate::transfer::transfer_application(&s, "mynumber.img", &b2, &b.iccid, "back.bin");
    let early_back = two_mnos::apply_transfer(&s, &on_b2, &b.iccid, &application).unwrap();
    assert_eq!(
        outcome(s.relay().arg("--sim").arg("--sim-image").arg(&b.image)),
        "failed"
    );
    assert_eq!(two_mnos::check(&s, &on_b2)["state"], "active");
    assert_eq!(
        two.sp_row(
            &s,
            &format!("SELECT state FROM ops WHERE id = '{early_back}'")
        ),
        "failed"
    );
    // The ticket runs on SIM B; then the credential moves back to it, and SIM B's domain,
    // made anew, is not deleted again: no ticket for it.
    let ticket = retire_ticket(&s, b, &b.iccid).unwrap();
    assert_eq!(relay_at(b, &ticket, &b.image), "completed");
    assert!(!contents(&b.image).apps.iter().any(|(aid, _)| aid == SD));
    let back = move_to(&s, &two, &on_b2, &b2, &b.iccid, &b.image);
    assert_eq!(
        retire_ticket(&s, b, &b.iccid).unwrap_err(),
        "business.nothing-to-retire"
    );
    assert!(contents(&b.image).apps.iter().any(|(aid, _)| aid == SD));
    let serial = two_mnos::check(&s, &back)["serial"]
        .as_str()
        .unwrap()
        .to_string();
    crate::transfer::new_sim_signs(&s, &b.image, &serial);

    // SIM B2, now the old one, is reported lost: no ticket for it, and the ticket fetched
    // before the loss opens nothing on it either.
    let early = retire_ticket(&s, b, &b2).unwrap();
    ok(kagi()
        .args(["tsm", "mno", "--config"])
        .arg(s.dir.join(b.dir).join("operator.toml"))
        .args(["card-lost", "--iccid", &b2]));
    assert_eq!(
        retire_ticket(&s, b, &b2).unwrap_err(),
        "business.card-not-active"
    );
    assert_eq!(relay_at(b, &early, &b2_image), "failed");
    assert!(contents(&b2_image).apps.iter().any(|(aid, _)| aid == SD));
    // Another operator's SIM is as unknown to it.
    assert_eq!(
        retire_ticket(&s, b, &a.iccid).unwrap_err(),
        "business.unknown-card"
    );
    drop(two);
}
