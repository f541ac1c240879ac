//! LOAD of a load file in blocks as large as the card and the secure channel allow: the
//! card's maximum command data (tag `9F65` of its FCI or card data), less what secure
//! messaging adds (padding and MAC), in short APDUs or — when reader and card carry them —
//! extended ones.

use crate::apdu::Command;
use crate::gp::GpError;

/// What secure messaging adds to a command's data field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overhead {
    /// MAC bytes appended (SCP03: 8 in S8 mode, 16 in S16 mode; 0 without C-MAC).
    pub mac: usize,
    /// Block size the data is padded to when encrypted (SCP03 C-DECRYPTION: 16, padding
    /// always at least one byte), or `None` when the data travels in the clear.
    pub pad_to: Option<usize>,
}

impl Overhead {
    /// No secure messaging.
    pub const NONE: Overhead = Overhead {
        mac: 0,
        pad_to: None,
    };

    /// The largest plain data field whose secured form fits `limit` bytes.
    pub fn plain_limit(self, limit: usize) -> usize {
        let room = limit.saturating_sub(self.mac);
        match self.pad_to {
            // ISO padding adds 1..=block bytes: n + 1 rounded up to the block must fit.
            Some(b) if b > 0 => (room / b * b).saturating_sub(1),
            _ => room,
        }
    }
}

/// The LOAD block size: the card's maximum command data (`card_max`, from `9F65`; 255 when the
/// card does not say), capped at 255 unless `extended` (reader and card carry extended
/// APDUs, up to 65 535), less the secure channel's `overhead`.
pub fn block_size(card_max: Option<u32>, extended: bool, overhead: Overhead) -> usize {
    let cap = if extended { 65_535 } else { 255 };
    let limit = card_max
        .map(|m| usize::try_from(m).unwrap_or(usize::MAX))
        .unwrap_or(255)
        .min(cap);
    overhead.plain_limit(limit)
}

/// The LOAD commands for `load_file` (`C4 ‖ length ‖ data block`, plus any DAP blocks before
/// it) in blocks of `block` bytes: P1 `80` on the last, P2 the block number.
pub fn load_commands(load_file: &[u8], block: usize) -> Result<Vec<Command>, GpError> {
    if block == 0 {
        return Err(GpError::Malformed(
            "the card's maximum command length leaves no room for LOAD data".into(),
        ));
    }
    let blocks: Vec<&[u8]> = load_file.chunks(block).collect();
    if blocks.len() > 256 {
        return Err(GpError::Malformed(format!(
            "a load file of {} bytes needs {} LOAD blocks at {block} bytes each; GlobalPlatform numbers at most 256 (use extended length or a card with a larger maximum)",
            load_file.len(),
            blocks.len()
        )));
    }
    blocks
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let p1 = if i + 1 == blocks.len() { 0x80 } else { 0x00 };
            Ok(Command::new(0x80, 0xE8, p1, i as u8)
                .with_data(b.to_vec())?
                .with_le(256)?)
        })
        .collect()
}

/// What SCP03 secure messaging adds at `level` in `mode`: the MAC (8 bytes in S8, 16 in S16)
/// and, with C-DECRYPTION, padding to 16 bytes.
pub fn scp03_overhead(level: crate::scp03::SecurityLevel, mode: crate::scp03::Mode) -> Overhead {
    Overhead {
        mac: if level.c_mac() {
            match mode {
                crate::scp03::Mode::S8 => 8,
                crate::scp03::Mode::S16 => 16,
            }
        } else {
            0
        },
        pad_to: level.c_dec().then_some(16),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sizes() {
        // SCP03 S8 with C-DEC in a short APDU: 255 - 8 = 247 → 240 after padding → 239.
        let s8_enc = Overhead {
            mac: 8,
            pad_to: Some(16),
        };
        assert_eq!(block_size(None, false, s8_enc), 239);
        assert_eq!(block_size(Some(255), true, s8_enc), 239);
        // MAC only: 255 - 8.
        let mac = Overhead {
            mac: 8,
            pad_to: None,
        };
        assert_eq!(block_size(Some(0xFF), false, mac), 247);
        // A card announcing 1024, reader without extended length: still a short APDU.
        assert_eq!(block_size(Some(1024), false, Overhead::NONE), 255);
        // With extended length, S16 and C-DEC: 1024 - 16 = 1008 → 1008 - 1.
        let s16_enc = Overhead {
            mac: 16,
            pad_to: Some(16),
        };
        assert_eq!(block_size(Some(1024), true, s16_enc), 1007);
        // A tiny card maximum.
        assert_eq!(block_size(Some(8), false, s8_enc), 0);
        assert!(load_commands(&[0; 10], 0).is_err());
    }

    #[test]
    fn commands() {
        let cmds = load_commands(&[0xAB; 500], 239).unwrap();
        assert_eq!(cmds.len(), 3);
        assert_eq!(
            cmds.iter().map(|c| c.data().len()).collect::<Vec<_>>(),
            [239, 239, 22]
        );
        assert_eq!((cmds[0].p1(), cmds[0].p2()), (0x00, 0));
        assert_eq!((cmds[2].p1(), cmds[2].p2()), (0x80, 2));
        // The GP header: 80 E8 00 00 Lc.
        assert_eq!(&cmds[0].to_bytes()[..5], &[0x80, 0xE8, 0x00, 0x00, 239]);
        assert!(load_commands(&[0; 300], 1).is_err());
    }

    #[test]
    fn overheads() {
        let o = scp03_overhead(crate::scp03::SecurityLevel::FULL, crate::scp03::Mode::S8);
        assert_eq!((o.mac, o.pad_to), (8, Some(16)));
        let o = scp03_overhead(crate::scp03::SecurityLevel::CMAC, crate::scp03::Mode::S16);
        assert_eq!((o.mac, o.pad_to), (16, None));
        assert_eq!(
            scp03_overhead(crate::scp03::SecurityLevel::NONE, crate::scp03::Mode::S8),
            Overhead::NONE
        );
    }
}
