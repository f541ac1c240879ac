//! What the chip computed during a command, reported to the card ([`crate::Persist::charge`])
//! for its timing model.

/// A cryptographic operation a chip spends time on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardOp {
    /// An RSA private-key operation (signature or decryption) with a `bits`-bit modulus.
    RsaPrivate {
        /// Modulus length.
        bits: u16,
    },
    /// An RSA key-pair generation.
    RsaKeyGen {
        /// Modulus length.
        bits: u16,
    },
    /// An ECDSA signature over a `bits`-bit prime field.
    EcSign {
        /// Field size.
        bits: u16,
    },
    /// An elliptic-curve key-pair generation.
    EcKeyGen {
        /// Field size.
        bits: u16,
    },
    /// An ECDH key agreement.
    Ecdh {
        /// Field size.
        bits: u16,
    },
    /// AES over `blocks` 16-byte blocks (encryption, decryption or a MAC).
    Aes {
        /// Number of blocks.
        blocks: u32,
    },
}
