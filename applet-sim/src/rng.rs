//! The card's random source: the operating system's in normal use, or a seeded deterministic
//! generator (AES-128 in counter mode) so that tests replay byte for byte.

use card_wire::scp03::crypto::{Aes, AesKey};

/// Random bytes for card challenges and key generation.
pub enum CardRng {
    /// The operating system's generator.
    Os,
    /// A deterministic generator from a seed.
    Seeded {
        /// The expanded seed key.
        aes: Box<Aes>,
        /// Next counter block.
        counter: u128,
    },
}

impl CardRng {
    /// A deterministic generator: the same seed gives the same bytes.
    pub fn seeded(seed: u64) -> Self {
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&seed.to_be_bytes());
        k[8..].copy_from_slice(b"kagi-sim");
        // 16 bytes is a valid AES key length.
        let key = AesKey::new(&k).unwrap_or_else(|_| unreachable!());
        CardRng::Seeded {
            aes: Box::new(Aes::new(&key)),
            counter: 0,
        }
    }

    /// Fills `out` with random bytes.
    pub fn fill(&mut self, out: &mut [u8]) {
        match self {
            CardRng::Os => {
                if getrandom::fill(out).is_err() {
                    // Without an OS generator there is nothing safe to fall back to; a card would
                    // go mute. Make the failure loud rather than predictable.
                    panic!("the operating system's random generator failed");
                }
            }
            CardRng::Seeded { aes, counter } => {
                for chunk in out.chunks_mut(16) {
                    let mut block = counter.to_be_bytes();
                    *counter = counter.wrapping_add(1);
                    aes.encrypt_block(&mut block);
                    chunk.copy_from_slice(&block[..chunk.len()]);
                }
            }
        }
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_is_reproducible_and_seed_dependent() {
        let a = CardRng::seeded(7).bytes(40);
        assert_eq!(a, CardRng::seeded(7).bytes(40));
        assert_ne!(a, CardRng::seeded(8).bytes(40));
        assert_ne!(a[..16], a[16..32]);
        assert_ne!(CardRng::Os.bytes(16), CardRng::Os.bytes(16));
    }
}
