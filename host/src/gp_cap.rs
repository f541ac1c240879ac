//! CAP files onto cards, in GlobalPlatformPro's spirit: INSTALL [for load] with the load file
//! data block hash, LOAD in blocks as large as card, reader and secure channel allow,
//! INSTALL [for install] of the CAP's applets, and DELETE of the package with its instances.
//! The same calls serve PC/SC readers and the simulator.

use crate::channel::ApduChannel;
use crate::error::{Error, Result, expect_success};
use crate::gp::manage::{self, InstallSpec};
use card_wire::gp_load;
use card_wire::sw::StatusWord;
pub use kagi_cap::{CapError, CapFile, HashAlg};
use serde::Serialize;

/// What NXP JCOP cards answer to LOAD of a CAP importing a package (or package version) the
/// card lacks; the simulator answers the same.
pub const SW_IMPORT_NOT_FOUND: StatusWord = StatusWord(0x6438);

pub use card_wire::gp_load::scp03_overhead;

/// How to load a CAP.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Load file data block hash in INSTALL [for load].
    pub hash: HashAlg,
    /// Send the Descriptor component (most cards want it; some small ones do not).
    pub descriptor: bool,
    /// The security domain the package is associated with (`None`: the selected one).
    pub sd: Option<Vec<u8>>,
    /// LOAD data bytes per command (see [`card_wire::gp_load::block_size`]).
    pub block: usize,
}

/// What a load cost.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LoadStats {
    /// The package AID.
    #[serde(serialize_with = "hex_ser")]
    pub package: Vec<u8>,
    /// Bytes of the load file (`C4`, length, data block).
    pub load_file_bytes: usize,
    /// LOAD data bytes per command.
    pub block: usize,
    /// Commands sent (INSTALL [for load] and the LOADs), before secure messaging.
    pub commands: usize,
    /// APDU bytes of those commands, before secure messaging.
    pub apdu_bytes: usize,
}

fn hex_ser<S: serde::Serializer>(v: &[u8], s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode_upper(v))
}

/// INSTALL [for load] of the CAP's package with its hash, then its load file in LOAD blocks.
pub fn load(ch: &mut impl ApduChannel, cap: &CapFile, opts: &LoadOptions) -> Result<LoadStats> {
    load_with_dap(ch, cap, opts, &[])
}

/// [`load`] with a DAP block for each `(security domain AID, signer)`: the signature over the
/// load file data block hash (which must not be `none`) in front of the data block.
pub fn load_with_dap(
    ch: &mut impl ApduChannel,
    cap: &CapFile,
    opts: &LoadOptions,
    dap: &[(Vec<u8>, &dyn crate::dap::DapSigner)],
) -> Result<LoadStats> {
    load_signed(ch, cap, opts, dap, None).map(|(stats, _)| stats)
}

/// [`load_with_dap`] that may also carry a delegated-management `token` signer on INSTALL
/// [for load]; returns the last LOAD's answer too (a delegated load's confirmation, for
/// [`card_wire::dm::verify_receipt`]).
pub fn load_signed(
    ch: &mut impl ApduChannel,
    cap: &CapFile,
    opts: &LoadOptions,
    dap: &[(Vec<u8>, &dyn crate::dap::DapSigner)],
    token: Option<&dyn crate::dap::DapSigner>,
) -> Result<(LoadStats, Vec<u8>)> {
    let hash = cap.hash(opts.hash, opts.descriptor);
    let blocks = dap
        .iter()
        .map(|(sd, signer)| crate::dap::dap_block(sd, *signer, &hash))
        .collect::<Result<Vec<_>>>()?;
    let load_file = card_wire::dap::with_dap_blocks(&cap.load_file(opts.descriptor), &blocks);
    let mut install = card_wire::gp::install_for_load(
        cap.package_aid(),
        opts.sd.as_deref().unwrap_or_default(),
        &hash,
    )?;
    if let Some(signer) = token {
        install = manage::with_token(install, signer)?;
    }
    let mut cmds = vec![install];
    cmds.extend(gp_load::load_commands(&load_file, opts.block)?);
    let mut stats = LoadStats {
        package: cap.package_aid().to_vec(),
        load_file_bytes: load_file.len(),
        block: opts.block,
        commands: 0,
        apdu_bytes: 0,
    };
    let mut last = Vec::new();
    for (i, c) in cmds.iter().enumerate() {
        let name = if i == 0 { "INSTALL [for load]" } else { "LOAD" };
        stats.commands += 1;
        stats.apdu_bytes += c.to_bytes().len();
        let r = ch.transmit(c)?;
        if r.sw == SW_IMPORT_NOT_FOUND {
            return Err(Error::Status {
                command: "LOAD: the card lacks a package the CAP imports, or has an older version of it (rebuild the CAP against the card's Java Card API; `kagi gp cap-info FILE.cap` lists the imports)",
                sw: r.sw,
            });
        }
        last = expect_success(name, r)?;
    }
    Ok((stats, last))
}

/// INSTALL [for install and make selectable] of one of the CAP's applets. A card that cannot
/// run the applet's class refuses with `6A81`: that becomes an error that says so.
pub fn install(ch: &mut impl ApduChannel, spec: &InstallSpec) -> Result<()> {
    install_signed(ch, spec, None).map(|_| ())
}

/// [`install`] that may carry a delegated-management `token` signer; returns the card's
/// answer (a delegated install's confirmation, for [`card_wire::dm::verify_receipt`]).
pub fn install_signed(
    ch: &mut impl ApduChannel,
    spec: &InstallSpec,
    token: Option<&dyn crate::dap::DapSigner>,
) -> Result<Vec<u8>> {
    let r = match token {
        Some(signer) => manage::install_delegated(ch, spec, signer),
        None => manage::install(ch, spec).map(|()| vec![0x00]),
    };
    match r {
        Err(Error::Status { sw, .. }) if sw == StatusWord::FUNCTION_NOT_SUPPORTED => {
            Err(Error::Status {
                command: "INSTALL [for install]: this card cannot run the applet's class (function not supported); the package stays loaded: delete it or install another of its applets",
                sw,
            })
        }
        other => other,
    }
}

/// The applet (module) AID to install: `wanted` when given (it must be one of the CAP's),
/// else the CAP's only applet.
pub fn pick_applet(cap: &CapFile, wanted: Option<&[u8]>) -> Result<Vec<u8>> {
    let applets: Vec<&[u8]> = cap.applets().iter().map(|a| a.aid.as_slice()).collect();
    match (wanted, applets.as_slice()) {
        (Some(w), list) if list.contains(&w) => Ok(w.to_vec()),
        (Some(w), list) => Err(Error::CapApplet(format!(
            "the CAP has no applet {}; its applets: {}",
            hex::encode_upper(w),
            list.iter()
                .map(hex::encode_upper)
                .collect::<Vec<_>>()
                .join(", ")
        ))),
        (None, [one]) => Ok(one.to_vec()),
        (None, []) => Err(Error::CapApplet(
            "the CAP is a library package without applets: load it, there is nothing to install"
                .into(),
        )),
        (None, list) => Err(Error::CapApplet(format!(
            "the CAP has {} applets ({}): choose one with --applet",
            list.len(),
            list.iter()
                .map(hex::encode_upper)
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Privileges by name (GP Card Specification Table 6-1, GlobalPlatformPro's names), comma
/// separated, or 1 or 3 bytes of hex. Returns 3 bytes.
pub fn parse_privileges(s: &str) -> std::result::Result<Vec<u8>, String> {
    const NAMES: &[(&str, usize, u8)] = &[
        ("security-domain", 0, 0x80),
        ("dap-verification", 0, 0xC0),
        ("delegated-management", 0, 0xA0),
        ("card-lock", 0, 0x10),
        ("card-terminate", 0, 0x08),
        ("card-reset", 0, 0x04),
        ("default-selected", 0, 0x04),
        ("cvm-management", 0, 0x02),
        ("mandated-dap-verification", 0, 0xC1),
        ("trusted-path", 1, 0x80),
        ("authorized-management", 1, 0x40),
        ("token-verification", 1, 0x20),
        ("global-delete", 1, 0x10),
        ("global-lock", 1, 0x08),
        ("global-registry", 1, 0x04),
        ("final-application", 1, 0x02),
        ("global-service", 1, 0x01),
        ("receipt-generation", 2, 0x80),
        ("ciphered-load-file-data-block", 2, 0x40),
        ("contactless-activation", 2, 0x20),
        ("contactless-self-activation", 2, 0x10),
    ];
    let s = s.trim();
    if s.is_empty() {
        return Ok(vec![0, 0, 0]);
    }
    if let Ok(v) = hex::decode(s) {
        return match v.len() {
            1 => Ok(vec![v[0], 0, 0]),
            3 => Ok(v),
            n => Err(format!("privileges are 1 or 3 bytes, not {n}")),
        };
    }
    let mut out = vec![0u8; 3];
    for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let (_, byte, bits) = NAMES
            .iter()
            .find(|(n, ..)| n.eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                format!(
                    "unknown privilege '{name}'; known: {}",
                    NAMES.iter().map(|n| n.0).collect::<Vec<_>>().join(", ")
                )
            })?;
        out[*byte] |= bits;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn privileges_by_name() {
        // GP Card Specification v2.3 Table 6-1.
        assert_eq!(
            parse_privileges("security-domain,dap-verification").unwrap(),
            [0xC0, 0, 0]
        );
        assert_eq!(
            parse_privileges("security-domain, authorized-management").unwrap(),
            [0x80, 0x40, 0]
        );
        assert_eq!(
            parse_privileges("card-reset,receipt-generation").unwrap(),
            [0x04, 0, 0x80]
        );
        assert_eq!(parse_privileges("9EFE80").unwrap(), [0x9E, 0xFE, 0x80]);
        assert_eq!(parse_privileges("04").unwrap(), [0x04, 0, 0]);
        assert!(parse_privileges("root").is_err());
        assert!(parse_privileges("0102").is_err());
    }
}
