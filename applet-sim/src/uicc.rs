//! The part of a UICC's file system the simulator models: the MF and `EF.ICCID` (ETSI TS 102
//! 221 §13.2), selected by file identifier or path on any logical channel where no applet
//! handles file selection itself, and read with READ BINARY. Present only on cards made as a
//! UICC ([`crate::SimConfig::uicc`]).

use crate::store::Store;
use card_wire::apdu::{Command, Response};
use card_wire::sw::StatusWord;
use card_wire::tlv::tlv;
use card_wire::uicc::{FID_ICCID, FID_MF};

/// Where the card keeps `EF.ICCID`'s content.
pub const ICCID_KEY: &str = "card/iccid";

/// Whether the card has a UICC file system.
pub fn present(store: &Store) -> bool {
    store.get(ICCID_KEY).is_some()
}

/// Whether `cmd` is a file-system command this module answers: SELECT by file identifier
/// (`P1 = 00`) or by path from the MF (`P1 = 08`), or READ BINARY of the current EF.
pub fn is_file_command(cmd: &Command, file_selected: bool) -> bool {
    let plain = !cmd.class().is_proprietary() && !cmd.class().has_secure_messaging();
    plain
        && match cmd.ins() {
            0xA4 => matches!(cmd.p1(), 0x00 | 0x08),
            0xB0 => file_selected,
            _ => false,
        }
}

/// The file control parameters of a file (`62` template, TS 102 221 §11.1.1.3).
fn fcp(fid: u16, store: &Store) -> Vec<u8> {
    let mut body = Vec::new();
    if fid == FID_MF {
        body.extend(tlv(0x82, &[0x78, 0x21]));
    } else {
        body.extend(tlv(0x82, &[0x41, 0x21]));
    }
    body.extend(tlv(0x83, &fid.to_be_bytes()));
    if fid != FID_MF {
        let size = store.get(ICCID_KEY).map(|v| v.len()).unwrap_or(0) as u16;
        body.extend(tlv(0x80, &size.to_be_bytes()));
    }
    body.extend(tlv(0x8A, &[0x05]));
    tlv(0x62, &body)
}

/// Answers a file-system command; `current` is the channel's current file.
pub fn process(cmd: &Command, store: &Store, current: &mut Option<u16>) -> Response {
    match cmd.ins() {
        0xA4 => {
            let d = cmd.data();
            let target = match (cmd.p1(), d) {
                (0x00, []) | (0x00, [0x3F, 0x00]) => Some(FID_MF),
                (0x00, [0x2F, 0xE2]) if current.is_some() => Some(FID_ICCID),
                (0x08, [0x2F, 0xE2]) => Some(FID_ICCID),
                _ => None,
            };
            let Some(fid) = target else {
                return Response::status(StatusWord::NOT_FOUND);
            };
            *current = Some(fid);
            match cmd.p2() & 0x0C {
                0x04 => Response::success(fcp(fid, store)),
                _ => Response::status(StatusWord::SUCCESS),
            }
        }
        0xB0 => {
            if *current != Some(FID_ICCID) {
                return Response::status(StatusWord::CONDITIONS_NOT_SATISFIED);
            }
            if cmd.p1() & 0x80 != 0 {
                return Response::status(StatusWord::INCORRECT_P1P2);
            }
            let data = store.get(ICCID_KEY).unwrap_or_default();
            let off = usize::from(u16::from_be_bytes([cmd.p1(), cmd.p2()]));
            if off >= data.len() {
                return Response::status(StatusWord::WRONG_P1P2);
            }
            let n = cmd.ne().unwrap_or(256).min(data.len() - off);
            Response::success(data[off..off + n].to_vec())
        }
        _ => Response::status(StatusWord::INS_NOT_SUPPORTED),
    }
}
