//! The block layouts of each type and their scalar dequantization: the reference the
//! integer kernels are tested against (and the tiles of the prefill products).

use half::{bf16, f16};

use super::GgmlType;

/// The f16 at `bytes[at..at + 2]`, as `f32`.
#[inline(always)]
pub(crate) fn half_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// Byte offsets inside a Q4_K / Q5_K super-block.
pub(crate) mod k4 {
    /// The packed 6-bit sub-scales and sub-minimums (12 bytes).
    pub(crate) const SCALES: usize = 4;
    /// Q5_K: the fifth bits (32 bytes).
    pub(crate) const Q5_HIGH: usize = 16;
    /// Q4_K: the 4-bit values (128 bytes).
    pub(crate) const Q4_VALUES: usize = 16;
    /// Q5_K: the low 4 bits of the values (128 bytes).
    pub(crate) const Q5_VALUES: usize = 48;
}

/// Byte offsets inside a Q6_K super-block.
pub(crate) mod k6 {
    /// The low 4 bits of the values (128 bytes).
    pub(crate) const LOW: usize = 0;
    /// The high 2 bits (64 bytes).
    pub(crate) const HIGH: usize = 128;
    /// Sixteen signed 8-bit sub-scales.
    pub(crate) const SCALES: usize = 192;
    /// The f16 scale.
    pub(crate) const D: usize = 208;
}

/// The eight `(scale, minimum)` pairs (6 bits each) of a Q4_K / Q5_K super-block, one per
/// sub-block of 32, from their 12 packed bytes.
#[inline]
pub(crate) fn k4_scales(packed: &[u8]) -> [(u8, u8); 8] {
    std::array::from_fn(|j| {
        if j < 4 {
            (packed[j] & 63, packed[j + 4] & 63)
        } else {
            (
                (packed[j + 4] & 0x0F) | ((packed[j - 4] >> 6) << 4),
                (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4),
            )
        }
    })
}

/// The 5th bits of a Q5_0 / Q5_1 block: bit `e` belongs to element `e`.
#[inline]
pub(crate) fn q5_high(block: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([block[at], block[at + 1], block[at + 2], block[at + 3]])
}

/// The value (0..=63, before the offset of 32) of element `e` (0..128) of a 128-element half
/// of a Q6_K super-block, from its 64 low-bit bytes `low` and 32 high-bit bytes `high`.
#[inline]
pub(crate) fn q6_value(low: &[u8], high: &[u8], e: usize) -> u8 {
    let (quarter, l) = (e / 32, e % 32);
    let low = low[l + 32 * (quarter & 1)];
    let low = if quarter < 2 { low & 0x0F } else { low >> 4 };
    low | (((high[l] >> (2 * quarter)) & 3) << 4)
}

/// Dequantizes whole blocks: `bytes` holds exactly `out.len()` elements of `dtype`.
pub(super) fn dequantize_blocks(dtype: GgmlType, bytes: &[u8], out: &mut [f32]) {
    let Some((per_block, block_bytes)) = dtype.block() else { return };
    let blocks = bytes.chunks_exact(block_bytes).zip(out.chunks_exact_mut(per_block));
    match dtype {
        GgmlType::F32 => blocks.for_each(|(b, o)| o[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        GgmlType::F16 => blocks.for_each(|(b, o)| o[0] = half_at(b, 0)),
        GgmlType::BF16 => blocks.for_each(|(b, o)| o[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        GgmlType::Q4_0 => blocks.for_each(|(b, o)| {
            let d = half_at(b, 0);
            for (j, &q) in b[2..18].iter().enumerate() {
                o[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
                o[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
            }
        }),
        GgmlType::Q4_1 => blocks.for_each(|(b, o)| {
            let (d, m) = (half_at(b, 0), half_at(b, 2));
            for (j, &q) in b[4..20].iter().enumerate() {
                o[j] = (q & 0x0F) as f32 * d + m;
                o[j + 16] = (q >> 4) as f32 * d + m;
            }
        }),
        GgmlType::Q5_0 => blocks.for_each(|(b, o)| {
            let (d, high) = (half_at(b, 0), q5_high(b, 2));
            for (j, &q) in b[6..22].iter().enumerate() {
                let (lo, hi) = q5_pair(q, high, j);
                o[j] = (lo as i32 - 16) as f32 * d;
                o[j + 16] = (hi as i32 - 16) as f32 * d;
            }
        }),
        GgmlType::Q5_1 => blocks.for_each(|(b, o)| {
            let (d, m, high) = (half_at(b, 0), half_at(b, 2), q5_high(b, 4));
            for (j, &q) in b[8..24].iter().enumerate() {
                let (lo, hi) = q5_pair(q, high, j);
                o[j] = lo as f32 * d + m;
                o[j + 16] = hi as f32 * d + m;
            }
        }),
        GgmlType::Q8_0 => blocks.for_each(|(b, o)| {
            let d = half_at(b, 0);
            for (x, &q) in o.iter_mut().zip(&b[2..34]) {
                *x = q as i8 as f32 * d;
            }
        }),
        GgmlType::Q4_K | GgmlType::Q5_K => blocks.for_each(|(b, o)| {
            let (d, dmin) = (half_at(b, 0), half_at(b, 2));
            let scales = k4_scales(&b[k4::SCALES..k4::SCALES + 12]);
            for (j, o) in o.chunks_exact_mut(32).enumerate() {
                let (sc, m) = scales[j];
                let (scale, min) = (d * sc as f32, dmin * m as f32);
                for (l, o) in o.iter_mut().enumerate() {
                    *o = scale * k4_value(dtype, b, j * 32 + l) as f32 - min;
                }
            }
        }),
        GgmlType::Q6_K => blocks.for_each(|(b, o)| {
            let d = half_at(b, k6::D);
            for (half, o) in o.chunks_exact_mut(128).enumerate() {
                let low = &b[k6::LOW + 64 * half..];
                let high = &b[k6::HIGH + 32 * half..];
                for (e, o) in o.iter_mut().enumerate() {
                    let sc = b[k6::SCALES + 8 * half + e / 16] as i8;
                    *o = d * sc as f32 * (q6_value(low, high, e) as i32 - 32) as f32;
                }
            }
        }),
        GgmlType::Other(_) => {}
    }
}

/// The two 5-bit values of byte `j` of a Q5_0 / Q5_1 block: elements `j` and `j + 16`.
#[inline]
pub(crate) fn q5_pair(q: u8, high: u32, j: usize) -> (u8, u8) {
    let bit = |e: usize| (((high >> e) & 1) as u8) << 4;
    ((q & 0x0F) | bit(j), (q >> 4) | bit(j + 16))
}

/// The value (0..=15 for Q4_K, 0..=31 for Q5_K) of element `e` (0..256) of a super-block.
#[inline]
pub(crate) fn k4_value(dtype: GgmlType, block: &[u8], e: usize) -> u8 {
    let (chunk, l) = (e / 64, e % 32);
    let upper = (e / 32) % 2 == 1;
    let values = if dtype == GgmlType::Q5_K { k4::Q5_VALUES } else { k4::Q4_VALUES };
    let q = block[values + 32 * chunk + l];
    let q = if upper { q >> 4 } else { q & 0x0F };
    if dtype == GgmlType::Q5_K {
        let bit = (block[k4::Q5_HIGH + l] >> (e / 32)) & 1;
        q | (bit << 4)
    } else {
        q
    }
}

#[cfg(test)]
mod tests {
    use super::super::dequantize;
    use super::*;

    fn f16_bytes(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn q4_0_q4_1_q8_0_blocks() {
        // Q4_0: scale 0.5, nibbles j (low) and 15 - j (high).
        let mut q4_0 = f16_bytes(0.5).to_vec();
        q4_0.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut out = [0.0f32; 32];
        assert!(dequantize(GgmlType::Q4_0, &q4_0, &mut out));
        for j in 0..16 {
            assert_eq!(out[j], (j as f32 - 8.0) * 0.5);
            assert_eq!(out[j + 16], (7.0 - j as f32) * 0.5);
        }
        // Q4_1: scale 2, minimum -3.
        let mut q4_1 = f16_bytes(2.0).to_vec();
        q4_1.extend(f16_bytes(-3.0));
        q4_1.extend((0..16u8).map(|j| j | (j << 4)));
        assert!(dequantize(GgmlType::Q4_1, &q4_1, &mut out));
        assert_eq!((out[5], out[21]), (7.0, 7.0));
        // Q8_0: scale 0.25, values -16..16.
        let mut q8_0 = f16_bytes(0.25).to_vec();
        q8_0.extend((0..32).map(|j| (j as i8 - 16) as u8));
        assert!(dequantize(GgmlType::Q8_0, &q8_0, &mut out));
        assert_eq!((out[0], out[31]), (-4.0, 3.75));
    }

    #[test]
    fn q5_blocks_take_their_fifth_bit_by_element() {
        // Q5_0: scale 1, low nibbles 0, fifth bit set for elements 1 and 17 only.
        let mut q5_0 = f16_bytes(1.0).to_vec();
        q5_0.extend(((1u32 << 1) | (1 << 17)).to_le_bytes());
        q5_0.extend([0u8; 16]);
        let mut out = [0.0f32; 32];
        assert!(dequantize(GgmlType::Q5_0, &q5_0, &mut out));
        assert_eq!((out[0], out[1], out[16], out[17]), (-16.0, 0.0, -16.0, 0.0));
    }

    #[test]
    fn k_quant_values_by_hand() {
        // Q6_K: d = 1, every sub-scale 2, every value's bits 0 except element 0 of the second
        // half (low nibble 5, high bits 1: value 21, minus 32).
        let mut q6 = vec![0u8; 210];
        q6[k6::LOW + 64] = 5;
        q6[k6::HIGH + 32] = 1;
        q6[k6::SCALES..k6::SCALES + 16].fill(2);
        q6[k6::D..].copy_from_slice(&f16_bytes(1.0));
        let mut out = [0.0f32; 256];
        assert!(dequantize(GgmlType::Q6_K, &q6, &mut out));
        assert_eq!((out[0], out[128]), (-64.0, 2.0 * (21.0 - 32.0)));
        // Q4_K: d = 1, dmin = 1; sub-block 5 has scale 3 + 16 and minimum 2 + 32 (high bits
        // in the first bytes); element 160 (sub-block 5, low nibble of chunk 2) holds 7.
        let mut q4 = vec![0u8; 144];
        q4[..2].copy_from_slice(&f16_bytes(1.0));
        q4[2..4].copy_from_slice(&f16_bytes(1.0));
        q4[k4::SCALES + 1] = 1 << 6; // high bits of sub-block 5's scale
        q4[k4::SCALES + 5] = 2 << 6; // high bits of its minimum
        q4[k4::SCALES + 9] = 3 | (2 << 4);
        q4[k4::Q4_VALUES + 64] = 7 << 4; // element 160: chunk 2, high nibble of its byte 0
        assert_eq!(k4_scales(&q4[k4::SCALES..k4::SCALES + 12])[5], (3 + 16, 2 + 32));
        assert!(dequantize(GgmlType::Q4_K, &q4, &mut out));
        assert_eq!(out[160], 19.0 * 7.0 - 34.0);
    }

    #[test]
    fn float_types_and_bad_sizes() {
        let mut out = [0.0f32; 2];
        let f32s: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert!(dequantize(GgmlType::F32, &f32s, &mut out));
        assert_eq!(out, [1.5, -2.0]);
        let f16s: Vec<u8> = [0.75f32, 3.0].iter().flat_map(|&x| f16_bytes(x)).collect();
        assert!(dequantize(GgmlType::F16, &f16s, &mut out));
        assert_eq!(out, [0.75, 3.0]);
        let bf16s: Vec<u8> = [0.5f32, -6.0].iter().flat_map(|&x| bf16::from_f32(x).to_le_bytes()).collect();
        assert!(dequantize(GgmlType::BF16, &bf16s, &mut out));
        assert_eq!(out, [0.5, -6.0]);
        assert!(!dequantize(GgmlType::F32, &f32s[..7], &mut out));
        assert!(!dequantize(GgmlType::Q4_0, &[0; 18], &mut out), "2 elements are not a block of 32");
        assert!(!dequantize(GgmlType::Q4_K, &[0; 144], &mut [0.0; 128]));
        assert!(!dequantize(GgmlType::Other(16), &[0; 144], &mut [0.0; 256]));
        assert_eq!(GgmlType::from_code(16).to_string(), "ggml type 16");
        assert_eq!(GgmlType::from_code(3).to_string(), "Q4_1");
        for t in GgmlType::SUPPORTED {
            assert_eq!(GgmlType::from_code(t.code()), t);
        }
    }
}
