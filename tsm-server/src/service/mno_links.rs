//! An SP-TSM's links to several MNO-TSMs (one per operator, MVNOs included): which SIMs each
//! serves, by the ICCID's **issuer identification number**. An ICCID (ITU-T E.118, "The
//! international telecommunication charge card", §4.2 and Annex A) starts with the major
//! industry identifier `89` (telecommunications), then the country code (E.164, one to three
//! digits: `81` Japan) and the issuer identifier (one to four digits): that prefix names the
//! SIM's issuer, i.e. its operator. Each `[[mno_tsm]]` of `tsm.toml` lists the prefixes of its
//! operators' SIMs (`iccid_prefixes = ["898110"]`); a SIM is served by the one link with a
//! prefix of its ICCID. Ambiguity is a configuration error ([`check`]: no prefix of one link may
//! be a prefix of another link's, so "longest prefix wins" never decides), and a SIM no link
//! serves is refused. A single link without prefixes serves every SIM (the one-operator form).

use super::MnoLink;
use tsm_protocol::{ErrorReport, Layer};

/// The shortest prefix accepted: `89` and at least one digit of the country code.
const MIN_PREFIX: usize = 3;
/// The longest prefix accepted: an ICCID has 19 or 20 digits with its check digit.
const MAX_PREFIX: usize = 18;

/// Why a set of links is refused: each prefix is `89…` digits ([`MIN_PREFIX`]–[`MAX_PREFIX`]);
/// with several links every one names its prefixes; no two links share a party; no prefix of
/// one link is a prefix of (or equal to) another link's.
pub fn check(links: &[MnoLink]) -> Result<(), String> {
    for l in links {
        for p in &l.iccid_prefixes {
            if !(MIN_PREFIX..=MAX_PREFIX).contains(&p.len())
                || !p.bytes().all(|b| b.is_ascii_digit())
                || !p.starts_with("89")
            {
                return Err(format!(
                    "[[mno_tsm]] {}: iccid_prefixes entry \"{p}\" is not an ICCID issuer prefix: write {MIN_PREFIX} to {MAX_PREFIX} digits starting with 89 (ITU-T E.118: 89, the country code, the issuer), e.g. \"898110\"",
                    l.party
                ));
            }
        }
        if links.len() > 1 && l.iccid_prefixes.is_empty() {
            return Err(format!(
                "[[mno_tsm]] {}: with several MNO-TSMs each names the SIMs it serves: add iccid_prefixes = [\"89…\"] (its operators' ICCID issuer prefixes)",
                l.party
            ));
        }
    }
    for (i, a) in links.iter().enumerate() {
        for b in &links[i + 1..] {
            if a.party == b.party {
                return Err(format!(
                    "[[mno_tsm]] {} appears twice: merge its iccid_prefixes into one entry",
                    a.party
                ));
            }
            for p in &a.iccid_prefixes {
                for q in &b.iccid_prefixes {
                    if p.starts_with(q.as_str()) || q.starts_with(p.as_str()) {
                        return Err(format!(
                            "[[mno_tsm]] {} (\"{p}\") and {} (\"{q}\") would both serve SIMs starting {}: a SIM must have exactly one MNO-TSM — make the prefixes disjoint",
                            a.party,
                            b.party,
                            if p.len() >= q.len() { p } else { q }
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// The link serving SIM `iccid` among `links` (checked by [`check`]: at most one matches).
pub fn serving<'a>(links: &'a [MnoLink], iccid: &str) -> Option<&'a MnoLink> {
    links.iter().find(|l| {
        (links.len() == 1 && l.iccid_prefixes.is_empty())
            || l.iccid_prefixes
                .iter()
                .any(|p| iccid.starts_with(p.as_str()))
    })
}

/// The refusal for a SIM no link serves.
pub fn no_link(links: &[MnoLink], iccid: &str) -> ErrorReport {
    let served: Vec<String> = links
        .iter()
        .map(|l| format!("{} ({})", l.party, l.iccid_prefixes.join(", ")))
        .collect();
    ErrorReport::new(
        Layer::Business,
        "business.no-mno-for-sim",
        false,
        format!(
            "no MNO-TSM linked to this SP-TSM serves SIM {iccid} (linked: {}): the SIM's operator must be linked first ([[mno_tsm]] with its iccid_prefixes in tsm.toml)",
            served.join("; ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tsm_protocol::PartyId;

    fn link(party: &str, prefixes: &[&str]) -> MnoLink {
        let mut l = MnoLink::new(PartyId::new(party).unwrap(), "http://127.0.0.1:9");
        l.iccid_prefixes = prefixes.iter().map(|p| p.to_string()).collect();
        l
    }

    #[test]
    fn one_link_without_prefixes_serves_every_sim() {
        let links = [link("tsm:a", &[])];
        check(&links).unwrap();
        // The simulator's ICCID and one of another country (44: the United Kingdom).
        for iccid in ["8981000000000000011", "8944000000000000000"] {
            assert_eq!(serving(&links, iccid).unwrap().party.0, "tsm:a");
        }
    }

    #[test]
    fn disjoint_prefixes_route_each_sim_to_its_operator() {
        let links = [
            link("tsm:a", &["898100", "898101"]),
            link("tsm:b", &["898120"]),
        ];
        check(&links).unwrap();
        assert_eq!(
            serving(&links, "8981010000000000003").unwrap().party.0,
            "tsm:a"
        );
        assert_eq!(
            serving(&links, "8981200000000000002").unwrap().party.0,
            "tsm:b"
        );
        assert!(serving(&links, "8981300000000000001").is_none());
        let e = no_link(&links, "8981300000000000001");
        assert_eq!(e.code, "business.no-mno-for-sim");
        assert!(e.detail.contains("tsm:b (898120)"), "{}", e.detail);
    }

    #[test]
    fn overlapping_or_missing_prefixes_are_refused() {
        // 8981 contains 898120: "longest prefix wins" would decide; refused instead.
        let e = check(&[link("tsm:a", &["8981"]), link("tsm:b", &["898120"])]).unwrap_err();
        assert!(e.contains("tsm:a (\"8981\") and tsm:b (\"898120\")"), "{e}");
        let e = check(&[link("tsm:a", &["898120"]), link("tsm:b", &["898120"])]).unwrap_err();
        assert!(e.contains("make the prefixes disjoint"), "{e}");
        let e = check(&[link("tsm:a", &["898100"]), link("tsm:b", &[])]).unwrap_err();
        assert!(e.contains("tsm:b: with several MNO-TSMs"), "{e}");
        let e = check(&[link("tsm:a", &["898100"]), link("tsm:a", &["898120"])]).unwrap_err();
        assert!(e.contains("appears twice"), "{e}");
        for bad in ["12345", "89", "89x1", "8981000000000000000000"] {
            let e = check(&[link("tsm:a", &[bad])]).unwrap_err();
            assert!(e.contains("is not an ICCID issuer prefix"), "{bad}: {e}");
        }
    }
}
