//! Seeds of the clusterings, derived from one base seed.

/// A seed for one clustering derived from a base seed and identifying parts (layer, KV
/// head, clustering number), mixed with SplitMix64 so that nearby inputs give unrelated
/// seeds. It never depends on a sequence's place in a batch.
pub fn derive_seed(base: u64, parts: &[u64]) -> u64 {
    parts.iter().fold(splitmix64(base), |acc, &p| splitmix64(acc ^ splitmix64(p)))
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
