//! Issue #16, an SP-TSM linked to several MNO-TSMs: `init_mno_as` writes a `[[mno_tsm]]`
//! section naming the operator's ICCID issuer prefixes; an SP-TSM's `tsm.toml` with two of
//! them loads, each SIM then served by exactly one; the one-operator `[mno_tsm]` table still
//! loads; ambiguous prefixes, a link without prefixes among several and a malformed prefix are
//! refused at load with what to change.

use card_wire::scp03::{CardKeys, Diversification, DiversifiedMaster, StaticKeys};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tsm_protocol::PartyId;
use tsm_server::setup::{self, MnoIdentity, Overrides, SetupError};

fn file_keys(_: &str, kvn: u8, scheme: Diversification) -> Result<Arc<dyn CardKeys>, String> {
    Ok(Arc::new(DiversifiedMaster {
        master: StaticKeys::default_test_keys(kvn),
        scheme,
        kvn,
    }) as Arc<dyn CardKeys>)
}

/// A directory with an SP-TSM (`sp/`) and two MNO-TSMs (`a/`: tsm:kagi-mobile serving
/// 898100, `b/`: tsm:kagi-mvno serving 898120 and 898121), each with its link file.
fn two_operators(name: &str) -> PathBuf {
    let base = std::env::temp_dir().join(format!("kagi-move16-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    setup::init(&base.join("sp"), "127.0.0.1:0", None).unwrap();
    let sp_tsm = PartyId::new("tsm:kagi").unwrap();
    for (dir, tsm, op, prefixes) in [
        ("a", "tsm:kagi-mobile", "mno:kagi-mobile", vec!["898100"]),
        (
            "b",
            "tsm:kagi-mvno",
            "mno:kagi-mvno",
            vec!["898120", "898121"],
        ),
    ] {
        setup::init_mno_as(
            &base.join(dir),
            "127.0.0.1:9",
            None,
            &sp_tsm,
            &base.join("sp/tsm.pub.pem"),
            None,
            &MnoIdentity {
                name: PartyId::new(tsm).unwrap(),
                operator: PartyId::new(op).unwrap(),
                iccid_prefixes: prefixes.into_iter().map(String::from).collect(),
            },
        )
        .unwrap();
    }
    base
}

/// The SP-TSM's tsm.toml as `kagi tsm init` wrote it, followed by `extra`; loaded.
fn load_with(base: &Path, extra: &str) -> Result<setup::Loaded, SetupError> {
    let path = base.join("sp/tsm.toml");
    let original = base.join("sp/tsm.toml.orig");
    if !original.exists() {
        std::fs::copy(&path, &original).unwrap();
    }
    let mut text = std::fs::read_to_string(&original).unwrap();
    text.push_str(extra);
    std::fs::write(&path, text).unwrap();
    setup::load(&path, &Overrides::default(), &file_keys)
}

fn link(base: &Path, dir: &str) -> String {
    std::fs::read_to_string(base.join(dir).join("sp-tsm-link.toml")).unwrap()
}

#[test]
fn two_links_load_with_their_prefixes_and_the_mno_tsms_their_own_names() {
    let base = two_operators("two");
    let text = format!("{}{}", link(&base, "a"), link(&base, "b"));
    assert_eq!(text.matches("[[mno_tsm]]").count(), 2, "{text}");
    let loaded = load_with(&base, &text).unwrap();
    let got: Vec<(String, Vec<String>)> = loaded
        .config
        .mno
        .iter()
        .map(|m| (m.party.0.clone(), m.iccid_prefixes.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("tsm:kagi-mobile".to_string(), vec!["898100".to_string()]),
            (
                "tsm:kagi-mvno".to_string(),
                vec!["898120".to_string(), "898121".to_string()]
            ),
        ]
    );
    // Each MNO-TSM is its own party with its own operator (not the development default).
    let b = setup::load_mno(
        &base.join("b/mno-tsm.toml"),
        &Overrides::default(),
        &file_keys,
    )
    .unwrap();
    assert_eq!(b.config.policy.me.0, "tsm:kagi-mvno");
    assert_eq!(
        b.config
            .operators
            .keys()
            .map(|p| p.0.clone())
            .collect::<Vec<_>>(),
        vec!["mno:kagi-mvno".to_string()]
    );
    let operator = std::fs::read_to_string(base.join("b/operator.toml")).unwrap();
    assert!(operator.contains("party = \"mno:kagi-mvno\""), "{operator}");
    assert!(
        operator.contains("tsm_party = \"tsm:kagi-mvno\""),
        "{operator}"
    );
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn the_one_table_form_still_loads_and_serves_every_sim() {
    let base = two_operators("one");
    // As README and users' files have it: `[mno_tsm]`, no prefixes.
    let old = link(&base, "a")
        .replace("[[mno_tsm]]", "[mno_tsm]")
        .lines()
        .filter(|l| !l.starts_with("iccid_prefixes"))
        .collect::<Vec<_>>()
        .join("\n");
    let loaded = load_with(&base, &format!("{old}\n")).unwrap();
    assert_eq!(loaded.config.mno.len(), 1);
    assert!(loaded.config.mno[0].iccid_prefixes.is_empty());
    assert_eq!(loaded.config.mno[0].party.0, "tsm:kagi-mobile");
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn ambiguous_missing_or_malformed_prefixes_are_refused_at_load() {
    let base = two_operators("bad");
    let (a, b) = (link(&base, "a"), link(&base, "b"));
    let refused = |extra: String| match load_with(&base, &extra) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("loaded: {extra}"),
    };
    // B also claims 8981: every SIM of A's 898100 would have two MNO-TSMs.
    let e = refused(format!(
        "{a}{}",
        b.replace("\"898120\", \"898121\"", "\"8981\"")
    ));
    assert!(
        e.contains("tsm:kagi-mobile (\"898100\") and tsm:kagi-mvno (\"8981\")"),
        "{e}"
    );
    assert!(e.contains("make the prefixes disjoint"), "{e}");
    // Without prefixes among two links.
    let e = refused(format!(
        "{a}{}",
        b.lines()
            .filter(|l| !l.starts_with("iccid_prefixes"))
            .collect::<Vec<_>>()
            .join("\n")
    ));
    assert!(e.contains("tsm:kagi-mvno: with several MNO-TSMs"), "{e}");
    // Not an ICCID issuer prefix (E.118: 89 first).
    let e = refused(a.replace("\"898100\"", "\"44\""));
    assert!(e.contains("is not an ICCID issuer prefix"), "{e}");
    // An unknown key in one of the links is still refused.
    let e = refused(a.replace("iccid_prefixes", "iccid_prefix"));
    assert!(e.contains("iccid_prefix"), "{e}");
    std::fs::remove_dir_all(&base).unwrap();
}
