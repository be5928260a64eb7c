//! Seeds derived from names, so that what depends on a tensor's name (generated weights,
//! random drop masks) does not depend on the order tensors are visited in.

/// FNV-1a of `text`, starting from the FNV offset basis mixed with `mix`.
pub fn fnv1a(mix: u64, text: &str) -> u64 {
    const PRIME: u64 = 0x100_0000_01b3;
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ mix;
    for b in text.bytes() {
        h = (h ^ b as u64).wrapping_mul(PRIME);
    }
    h
}
