//! Stable, dependency-free hashes (FNV-1a) for fingerprints and cache keys.
//!
//! These are not cryptographic: a fingerprint only lets people tell two tokens
//! apart in logs, and a cache key only names a slot (the record inside it
//! carries the full key description, which is compared on read).

const FNV64_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV64_PRIME: u64 = 0x0000_0100_0000_01b3;
const FNV128_OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
const FNV128_PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;

pub(crate) fn fnv1a_64(bytes: &[u8]) -> u64 {
    fnv1a_64_more(FNV64_OFFSET, bytes)
}

/// Continues `hash` (of earlier bytes) over `bytes`: the hash of both,
/// as if concatenated, without copying them together.
pub(crate) fn fnv1a_64_more(hash: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(hash, |h, b| (h ^ u64::from(*b)).wrapping_mul(FNV64_PRIME))
}

pub(crate) fn fnv1a_128(bytes: &[u8]) -> u128 {
    bytes.iter().fold(FNV128_OFFSET, |h, b| {
        (h ^ u128::from(*b)).wrapping_mul(FNV128_PRIME)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_64_more(fnv1a_64(b"ab"), b"cd"), fnv1a_64(b"abcd"));
        assert_eq!(fnv1a_128(b""), FNV128_OFFSET);
        assert_eq!(fnv1a_128(b"a"), 0xd228_cb69_6f1a_8caf_7891_2b70_4e4a_8964);
    }
}
