//! Issue #16 across operators: an SP-TSM linked to two MNO-TSMs (`[[mno_tsm]]` with ICCID
//! issuer prefixes), every service a process of its own. A SIM of each operator is prepared
//! by its own MNO-TSM only (the other one stores and logs nothing of it); a SIM no link
//! serves is refused when the application comes; a notice from the MNO-TSM that does not
//! serve the SIM is refused and audited, and changes nothing. Transfers to a new SIM, across
//! operators and within one: `transfer`; the provider's domain then deleted on the old SIM
//! with the operator's ticket: `retire`.

#[path = "../support/mod.rs"]
mod support;

mod retire;
mod transfer;
mod two_mnos;

use std::path::Path;
use std::process::Command;
use support::cli::{Scenario, kagi, ok};
use tsm_protocol::PartyId;
use tsm_protocol::control::{ControlRequest, ControlResponse};
use tsm_protocol::signing::{Signer, Trust};

/// The access code in the newest mail of the maildir `maildir`.
pub fn newest_code(maildir: &Path) -> String {
    let mut mails: Vec<_> = std::fs::read_dir(maildir.join("new"))
        .unwrap()
        .flatten()
        .map(|e| (e.metadata().unwrap().modified().unwrap(), e.path()))
        .collect();
    mails.sort();
    let text = std::fs::read_to_string(&mails.last().expect("a mail").1).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("Access code: "))
        .unwrap_or_else(|| panic!("no access code line: {text}"))
        .trim()
        .to_string()
}

/// `req` signed by the MNO-TSM of `dir` (its own key, as it signs its notices), POSTed to
/// the SP-TSM; the SP-TSM's answer, checked against its key.
fn notice_from(s: &Scenario, dir: &str, party: &str, req: &ControlRequest) -> ControlResponse {
    let signer = Signer::from_pkcs8_pem(
        PartyId::new(party).unwrap(),
        &std::fs::read_to_string(s.dir.join(dir).join("mno-tsm.key.pem")).unwrap(),
    )
    .unwrap();
    let sp = PartyId::new("tsm:kagi").unwrap();
    let now = tsm_protocol::signing::now_ms();
    let out = tsm_protocol::control::sign_request(&signer, &sp, req, None, now, 120_000).unwrap();
    let body = s.dir.join("notice.bin");
    std::fs::write(&body, &out.bytes).unwrap();
    let o = Command::new("curl")
        .args(["-sf", "-H", "content-type: application/octet-stream"])
        .arg("--data-binary")
        .arg(format!("@{}", body.display()))
        .arg(format!("{}/v1/control", s.url()))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut trust = Trust::new();
    trust
        .add_pem(
            sp,
            &std::fs::read_to_string(s.dir.join("tsm/tsm.pub.pem")).unwrap(),
        )
        .unwrap();
    tsm_protocol::control::open_answer_as::<ControlResponse>(
        &o.stdout,
        &out.header,
        &trust,
        tsm_protocol::signing::now_ms(),
    )
    .unwrap()
}

fn code(r: &ControlResponse) -> String {
    match r {
        ControlResponse::Rejected(e) => e.code.clone(),
        other => format!("not refused: {other:?}"),
    }
}

#[test]
fn each_operator_prepares_its_own_sims_and_speaks_only_for_them() {
    let s = Scenario::new("move16-route", false);
    let dir = &s.dir;
    let two = two_mnos::start(&s, "on-card");
    let (a, b) = (&two.a, &two.b);

    // A download to the MVNO's SIM: through its MNO-TSM, which makes the provider's domain
    // and the applet there.
    let application = s.apply(&b.iccid);
    let op = two_mnos::apply(&s, &b.iccid, &application).unwrap();
    assert_eq!(two_mnos::relay(&s, &b.image), "completed");
    let status = two_mnos::check(&s, &op);
    assert_eq!(status["state"], "active", "{status}");
    assert_eq!(status["iccid"], b.iccid.as_str());
    assert_eq!(
        b.row(
            &s,
            &format!(
                "SELECT kind, state, party FROM ops WHERE iccid = '{}'",
                b.iccid
            )
        ),
        "prepare-sim|completed|tsm:kagi"
    );
    // The other operator's MNO-TSM never heard of that SIM.
    let everything = a.everything(&s);
    assert!(!everything.contains(&b.iccid), "MNO-TSM A saw SIM B");
    assert_eq!(a.row(&s, "SELECT count(*) FROM ops"), "0");
    // And the SP-TSM sent it nothing: its log names only the MVNO's MNO-TSM for the SIM.
    let sp_log = std::fs::read_to_string(dir.join("sp.log")).unwrap();
    assert!(
        !sp_log.contains(&format!("127.0.0.1:{}", a.port)),
        "the SP-TSM spoke to MNO-TSM A"
    );

    // A SIM of a third operator (issuer 30) no link serves: refused before anything is
    // asked of anyone.
    let c = ok(kagi()
        .args(["sim", "provision", "--json", "--no-domain", "--serial", "c"])
        .args(["--iccid-prefix", "898130", "--image"])
        .arg(dir.join("sim-c.img"))
        .arg("--manufacturer-ca")
        .arg(dir.join("maker")));
    let c_iccid = support::cli::field(&c, "iccid");
    let issued_before = two_mnos::row(
        &dir.join("issuer/jpki-issuer.db"),
        "SELECT count(*) FROM links",
    );
    let application = s.apply(&c_iccid);
    assert_eq!(
        two_mnos::apply(&s, &c_iccid, &application).unwrap_err(),
        "business.no-mno-for-sim"
    );
    assert_eq!(
        two_mnos::row(
            &dir.join("issuer/jpki-issuer.db"),
            "SELECT count(*) FROM links"
        ),
        issued_before,
        "the issuer was not asked"
    );
    for o in [a, b] {
        assert!(!o.everything(&s).contains(&c_iccid));
    }

    // The MVNO's MNO-TSM reports the other operator's SIM lost, and the other way round:
    // refused, audited at the SP-TSM, nothing revoked.
    for (from, about) in [(b, &a.iccid), (a, &b.iccid)] {
        let r = notice_from(
            &s,
            from.dir,
            from.mno_tsm,
            &ControlRequest::CardLost {
                iccid: about.clone(),
            },
        );
        assert_eq!(code(&r), "business.not-your-sim");
        assert_eq!(
            two.sp_row(
                &s,
                &format!(
                    "SELECT actor, event FROM audit WHERE op_id = 'sim:{about}' ORDER BY id DESC LIMIT 1"
                )
            ),
            format!("{}|sim-notice-refused", from.mno_tsm)
        );
    }
    assert_eq!(two_mnos::check(&s, &op)["state"], "active");
    let r = notice_from(
        &s,
        b.dir,
        b.mno_tsm,
        &ControlRequest::SimChanged {
            old_iccid: b.iccid.clone(),
            new_iccid: a.iccid.clone(),
        },
    );
    assert_eq!(
        code(&r),
        "not refused: Ok",
        "B's word on its own SIM is taken"
    );
    assert_eq!(two_mnos::check(&s, &op)["state"], "revoked");
    drop(two);
}
