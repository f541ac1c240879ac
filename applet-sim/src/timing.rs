//! A timing model of a real card, so that what runs on the simulator (a download through the
//! relay, a personalisation) takes about the time it would take on a chip.
//!
//! The simulator answers in microseconds; a chip answers in milliseconds, and in seconds when
//! it generates an RSA key. With a [`TimingProfile`] on, every command is charged:
//!
//! - a fixed cost per command (the reader's and the card OS's turnaround for a short APDU),
//! - the wire time of every command and response byte at the interface's rate,
//! - the card's persistent-memory writes (bytes written, journal included),
//! - each cryptographic operation the applets did ([`CardOp`], reported through
//!   [`crate::Store::charge`]).
//!
//! The figures are published measurements of real chips (cited at each profile); operations
//! of other sizes scale from the measured size (RSA private-key operations with the cube of
//! the modulus length, RSA key generation with its fourth power, elliptic-curve operations
//! with the square of the field size). RSA key generation on a chip has a heavy tail (0.6 to
//! 17 s on the same JCOP4 card); the model charges the mean.
//!
//! The source of every figure is `../shared/research/perf-anchors.md` §2.2 of the project,
//! which took them from JCAlgTest's published performance profiles
//! (github.com/crocs-muni/jcalgtest_results, `javacard/Profiles/performance/fixed/`) and from
//! GlobalPlatformPro traces of real cards (github.com/martinpaljak/GlobalPlatformPro issues
//! 221 and 62; github.com/herlesupreeth/CoIMS_Wiki issue 9).

use std::time::Duration;

pub use kagi_jcvm::CardOp;

/// The costs of one kind of chip.
#[derive(Debug, Clone, PartialEq)]
pub struct TimingProfile {
    /// The profile's name (`--sim-timing NAME`).
    pub name: &'static str,
    /// What it models.
    pub about: &'static str,
    /// Fixed cost of one command: reader and card turnaround of a short APDU.
    pub command: Duration,
    /// Wire time of one byte (command or response) at the interface's rate.
    pub per_byte: Duration,
    /// Persistent-memory write time per byte.
    pub nvm_per_byte: Duration,
    /// RSA-2048 private-key operation (CRT).
    pub rsa2048_private: Duration,
    /// RSA-2048 key-pair generation (mean).
    pub rsa2048_keygen: Duration,
    /// ECDSA P-256 signature.
    pub p256_sign: Duration,
    /// P-256 key-pair generation.
    pub p256_keygen: Duration,
    /// P-256 ECDH.
    pub p256_ecdh: Duration,
    /// One AES-128 block.
    pub aes_block: Duration,
}

const fn us(n: u64) -> Duration {
    Duration::from_micros(n)
}

/// The profiles kagi knows, by name.
pub const PROFILES: &[TimingProfile] = &[
    // NXP JCOP4 (P71), the current generation (Infineon SECORA ID X is within 10 %).
    // JCAlgTest: RSA-2048 CRT sign 60.7-61.4 ms, keygen mean 4.7-5.2 s, ECDSA P-256 sign
    // 32.0-33.1 ms, P-256 keygen 26-27 ms, ECDH 20-22 ms, AES-128-CBC over 256 bytes 1.9 ms.
    // GlobalPlatformPro traces: GET DATA (45-byte answer) 13 ms, SELECT 20 ms (T=1 reader);
    // a 255-byte MACed LOAD block 46-48 ms of which ~7 ms is wire time at 412 kbit/s, so ~27 ms
    // of persistent writing (~105 us a byte) once the fixed cost and the MAC are taken off.
    TimingProfile {
        name: "modern",
        about: "a current secure element (NXP JCOP4 / Infineon SECORA ID X class), T=1 at 412 kbit/s",
        command: us(12_000),
        per_byte: us(24),
        nvm_per_byte: us(105),
        rsa2048_private: us(61_000),
        rsa2048_keygen: us(5_000_000),
        p256_sign: us(32_500),
        p256_keygen: us(26_500),
        p256_ecdh: us(21_000),
        aes_block: us(119),
    },
    // NXP JCOP3 (P60) crypto, the SIM-class chip of the last decade; a SIM's T=0 interface.
    // JCAlgTest: RSA-2048 CRT sign 200.9-210 ms, keygen mean 5.8 s, ECDSA P-256 sign 56.3 ms,
    // P-256 keygen 156 ms, ECDH 55 ms, AES-128-CBC over 256 bytes 9.0 ms. A sysmoISIM-SJA2 SIM
    // answers a failing SELECT in 8 ms and SELECT of its ISD in 24 ms (T=0); the wire at the
    // enhanced UICC rate (Fi 512, Di 32: ~223 kbit/s, 12 etu a byte in T=0) is ~54 us a byte.
    // No published figure for a SIM's persistent writes: the JCOP4 figure is used.
    TimingProfile {
        name: "sim",
        about: "a SIM-class chip (NXP JCOP3 P60 crypto), T=0 at ~223 kbit/s",
        command: us(8_000),
        per_byte: us(54),
        nvm_per_byte: us(105),
        rsa2048_private: us(205_000),
        rsa2048_keygen: us(5_800_000),
        p256_sign: us(56_300),
        p256_keygen: us(156_000),
        p256_ecdh: us(55_000),
        aes_block: us(563),
    },
];

/// Why a profile name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no card timing profile {0:?}: use one of modern, sim")]
pub struct UnknownProfile(pub String);

impl TimingProfile {
    /// The profile named `name`.
    pub fn named(name: &str) -> Result<&'static TimingProfile, UnknownProfile> {
        PROFILES
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| UnknownProfile(name.to_string()))
    }

    /// The time of one operation.
    pub fn op(&self, op: CardOp) -> Duration {
        let scale = |base: Duration, bits: u16, of: f64, power: i32| {
            base.mul_f64((f64::from(bits) / of).powi(power))
        };
        match op {
            CardOp::RsaPrivate { bits } => scale(self.rsa2048_private, bits, 2048.0, 3),
            CardOp::RsaKeyGen { bits } => scale(self.rsa2048_keygen, bits, 2048.0, 4),
            CardOp::EcSign { bits } => scale(self.p256_sign, bits, 256.0, 2),
            CardOp::EcKeyGen { bits } => scale(self.p256_keygen, bits, 256.0, 2),
            CardOp::Ecdh { bits } => scale(self.p256_ecdh, bits, 256.0, 2),
            CardOp::Aes { blocks } => self.aes_block * blocks,
        }
    }

    /// The time of one command: `wire_bytes` command and response bytes, `nvm_bytes` written
    /// to persistent memory, and the operations `ops`.
    pub fn command_time(&self, wire_bytes: usize, nvm_bytes: u64, ops: &[CardOp]) -> Duration {
        let wire = u32::try_from(wire_bytes).unwrap_or(u32::MAX);
        let nvm = u32::try_from(nvm_bytes).unwrap_or(u32::MAX);
        self.command
            + self.per_byte * wire
            + self.nvm_per_byte * nvm
            + ops.iter().map(|&o| self.op(o)).sum::<Duration>()
    }
}

/// Whether a card with a timing profile waits out the modelled time or only accounts for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Each command returns after its modelled time (a download then takes the card's time).
    Sleep,
    /// Each command's modelled time is added up ([`crate::SimCard::card_time`]); nobody waits.
    Account,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_add_up_as_the_cited_figures_say() {
        let m = TimingProfile::named("modern").unwrap();
        // A 255-byte MACed LOAD block on JCOP4 took 46-48 ms (GlobalPlatformPro traces):
        // 5 header + 255 data + 2 status bytes on the wire, 255 bytes written, 17 AES blocks
        // of C-MAC.
        let load = m.command_time(262, 255, &[CardOp::Aes { blocks: 17 }]);
        assert!(
            (Duration::from_millis(44)..=Duration::from_millis(50)).contains(&load),
            "{load:?}"
        );
        // GET DATA answering 45 bytes: 13 ms measured.
        let get = m.command_time(5 + 47, 0, &[]);
        assert!((Duration::from_millis(12)..=Duration::from_millis(14)).contains(&get));
        // RSA-4096 private key: 8 times RSA-2048 by the cube rule.
        assert_eq!(
            m.op(CardOp::RsaPrivate { bits: 4096 }),
            Duration::from_millis(488)
        );
        assert_eq!(TimingProfile::named("sim").unwrap().name, "sim");
        assert!(TimingProfile::named("fast").is_err());
    }
}
