//! GGML tensor types: their blocks, their dequantization to `f32`, and the integer dot
//! products of quantized weight rows with 8-bit activations (DESIGN section 7).
//!
//! - [`dequantize`]: the reference, one block at a time in scalar code; every kernel is
//!   tested against it.
//! - [`q8`]: activations quantized per block to 8 bits, in the two layouts the weights pair
//!   with: blocks of 32 (with their sum) and super-blocks of 256 (with sums of 16).
//! - [`dot`]: the portable integer dot products; `x86` holds their AVX2 forms, chosen at run
//!   time when the CPU has AVX2.

mod blocks;
pub(crate) mod dot;
pub(crate) mod q8;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::fmt;

pub use dot::DotKernel;

/// A GGML tensor type, by its GGUF code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// 16-bit float.
    F16,
    /// bfloat16: the top 16 bits of an `f32`.
    BF16,
    /// Blocks of 32: an f16 scale and 4-bit values offset by 8.
    Q4_0,
    /// Blocks of 32: an f16 scale, an f16 minimum and 4-bit values.
    Q4_1,
    /// Blocks of 32: an f16 scale and 5-bit values offset by 16.
    Q5_0,
    /// Blocks of 32: an f16 scale, an f16 minimum and 5-bit values.
    Q5_1,
    /// Blocks of 32: an f16 scale and 8-bit values.
    Q8_0,
    /// Super-blocks of 256: f16 scale and minimum, eight 6-bit sub-scales and sub-minimums,
    /// 4-bit values.
    Q4_K,
    /// Super-blocks of 256: as [`Q4_K`](Self::Q4_K) with a fifth bit per value.
    Q5_K,
    /// Super-blocks of 256: an f16 scale, sixteen 8-bit sub-scales, 6-bit values offset by 32.
    Q6_K,
    /// Any other code (other K-quants, IQ types, integers): readable, not dequantizable here.
    Other(u32),
}

impl GgmlType {
    /// Every type this crate dequantizes, in code order.
    pub const SUPPORTED: [GgmlType; 11] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::BF16,
    ];

    /// The type of GGUF code `code`.
    pub fn from_code(code: u32) -> Self {
        match code {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            12 => GgmlType::Q4_K,
            13 => GgmlType::Q5_K,
            14 => GgmlType::Q6_K,
            30 => GgmlType::BF16,
            other => GgmlType::Other(other),
        }
    }

    /// Its GGUF code.
    pub fn code(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q4_K => 12,
            GgmlType::Q5_K => 13,
            GgmlType::Q6_K => 14,
            GgmlType::BF16 => 30,
            GgmlType::Other(code) => code,
        }
    }

    /// `(elements per block, bytes per block)`, or `None` for an unsupported type.
    pub fn block(self) -> Option<(usize, usize)> {
        match self {
            GgmlType::F32 => Some((1, 4)),
            GgmlType::F16 | GgmlType::BF16 => Some((1, 2)),
            GgmlType::Q4_0 => Some((32, 18)),
            GgmlType::Q4_1 => Some((32, 20)),
            GgmlType::Q5_0 => Some((32, 22)),
            GgmlType::Q5_1 => Some((32, 24)),
            GgmlType::Q8_0 => Some((32, 34)),
            GgmlType::Q4_K => Some((256, 144)),
            GgmlType::Q5_K => Some((256, 176)),
            GgmlType::Q6_K => Some((256, 210)),
            GgmlType::Other(_) => None,
        }
    }

    /// Bytes of a row of `len` elements, or `None` for an unsupported type or a length that
    /// is not whole blocks.
    pub fn row_bytes(self, len: usize) -> Option<usize> {
        let (per_block, block_bytes) = self.block()?;
        len.is_multiple_of(per_block).then_some(len / per_block * block_bytes)
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

/// Dequantizes `bytes` of type `dtype` into `out` (its length is the element count).
/// Returns `false` when the type is unsupported or `bytes` does not hold exactly
/// `out.len()` elements in whole blocks.
pub fn dequantize(dtype: GgmlType, bytes: &[u8], out: &mut [f32]) -> bool {
    if dtype.row_bytes(out.len()) != Some(bytes.len()) {
        return false;
    }
    blocks::dequantize_blocks(dtype, bytes, out);
    true
}
