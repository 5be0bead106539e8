//! GGML tensor types and their dequantization to `f32`.

use std::fmt;

use half::f16;

/// A GGML tensor type, by its GGUF code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// 16-bit float.
    F16,
    /// Blocks of 32: an f16 scale and 4-bit values offset by 8.
    Q4_0,
    /// Blocks of 32: an f16 scale, an f16 minimum and 4-bit values.
    Q4_1,
    /// Blocks of 32: an f16 scale and 8-bit values.
    Q8_0,
    /// Any other code (K-quants, integer types, ...): readable, not dequantizable here.
    Other(u32),
}

impl GgmlType {
    /// The type of GGUF code `code`.
    pub fn from_code(code: u32) -> Self {
        match code {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            other => GgmlType::Other(other),
        }
    }

    /// `(elements per block, bytes per block)`, or `None` for an unsupported type.
    pub fn block(self) -> Option<(usize, usize)> {
        match self {
            GgmlType::F32 => Some((1, 4)),
            GgmlType::F16 => Some((1, 2)),
            GgmlType::Q4_0 => Some((32, 18)),
            GgmlType::Q4_1 => Some((32, 20)),
            GgmlType::Q8_0 => Some((32, 34)),
            GgmlType::Other(_) => None,
        }
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GgmlType::Other(code) => write!(f, "ggml type {code}"),
            known => write!(f, "{known:?}"),
        }
    }
}

fn half_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// Dequantizes `bytes` of type `dtype` into `out` (its length is the element count).
/// Returns `false` when the type is unsupported or `bytes` does not hold exactly
/// `out.len()` elements in whole blocks.
pub fn dequantize(dtype: GgmlType, bytes: &[u8], out: &mut [f32]) -> bool {
    let Some((per_block, block_bytes)) = dtype.block() else { return false };
    if !out.len().is_multiple_of(per_block) || bytes.len() != out.len() / per_block * block_bytes {
        return false;
    }
    let blocks = bytes.chunks_exact(block_bytes).zip(out.chunks_exact_mut(per_block));
    match dtype {
        GgmlType::F32 => {
            for (b, o) in blocks {
                o[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        GgmlType::F16 => {
            for (b, o) in blocks {
                o[0] = half_at(b, 0);
            }
        }
        GgmlType::Q4_0 => {
            for (b, o) in blocks {
                let d = half_at(b, 0);
                for (j, &q) in b[2..18].iter().enumerate() {
                    o[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
                    o[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
                }
            }
        }
        GgmlType::Q4_1 => {
            for (b, o) in blocks {
                let (d, m) = (half_at(b, 0), half_at(b, 2));
                for (j, &q) in b[4..20].iter().enumerate() {
                    o[j] = (q & 0x0F) as f32 * d + m;
                    o[j + 16] = (q >> 4) as f32 * d + m;
                }
            }
        }
        GgmlType::Q8_0 => {
            for (b, o) in blocks {
                let d = half_at(b, 0);
                for (x, &q) in o.iter_mut().zip(&b[2..34]) {
                    *x = q as i8 as f32 * d;
                }
            }
        }
        GgmlType::Other(_) => return false,
    }
    true
}

#[cfg(test)]
mod tests {
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
    fn float_types_and_bad_sizes() {
        let mut out = [0.0f32; 2];
        let f32s: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert!(dequantize(GgmlType::F32, &f32s, &mut out));
        assert_eq!(out, [1.5, -2.0]);
        let f16s: Vec<u8> = [0.75f32, 3.0].iter().flat_map(|&x| f16_bytes(x)).collect();
        assert!(dequantize(GgmlType::F16, &f16s, &mut out));
        assert_eq!(out, [0.75, 3.0]);
        assert!(!dequantize(GgmlType::F32, &f32s[..7], &mut out));
        assert!(!dequantize(GgmlType::Q4_0, &[0; 18], &mut out), "2 elements are not a block of 32");
        assert!(!dequantize(GgmlType::Other(12), &[0; 144], &mut [0.0; 256]));
        assert_eq!(GgmlType::from_code(12).to_string(), "ggml type 12");
        assert_eq!(GgmlType::from_code(3).to_string(), "Q4_1");
    }
}
