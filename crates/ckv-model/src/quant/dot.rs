//! Dot products of quantized weight rows with quantized activations, in integer arithmetic:
//! the portable forms, and the choice of a type's kernel for this CPU.

use super::GgmlType;
use super::blocks::{half_at, k4, k4_scales, k4_value, k6, q5_high, q5_pair, q6_value};
use super::q8::{Q8Block, Q8KBlock};

/// A weight row's dot products with rows of activations quantized for it: `one` row, or
/// `four` at once (the weight blocks unpacked once for the four).
#[derive(Debug, Clone, Copy)]
pub enum DotKernel {
    /// Reads activations in blocks of 32 (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0).
    Q8 {
        /// One row.
        one: fn(&[u8], &[Q8Block]) -> f32,
        /// Four rows.
        four: fn(&[u8], [&[Q8Block]; 4]) -> [f32; 4],
    },
    /// Reads activations in super-blocks of 256 (Q4_K, Q5_K, Q6_K).
    Q8K {
        /// One row.
        one: fn(&[u8], &[Q8KBlock]) -> f32,
        /// Four rows.
        four: fn(&[u8], [&[Q8KBlock]; 4]) -> [f32; 4],
    },
}

/// A portable kernel pair from its one-row form.
macro_rules! portable {
    ($variant:ident, $f:ident) => {
        DotKernel::$variant { one: $f, four: |w, a| a.map(|a| $f(w, a)) }
    };
}

impl DotKernel {
    /// The fastest kernel of `dtype` this CPU runs, or `None` for a type without integer
    /// kernels (the float types).
    pub fn of(dtype: GgmlType) -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        if let Some(kernel) = super::x86::kernel(dtype) {
            return Some(kernel);
        }
        Self::portable(dtype)
    }

    /// The portable kernel of `dtype`.
    pub fn portable(dtype: GgmlType) -> Option<Self> {
        Some(match dtype {
            GgmlType::Q4_0 => portable!(Q8, q4_0),
            GgmlType::Q4_1 => portable!(Q8, q4_1),
            GgmlType::Q5_0 => portable!(Q8, q5_0),
            GgmlType::Q5_1 => portable!(Q8, q5_1),
            GgmlType::Q8_0 => portable!(Q8, q8_0),
            GgmlType::Q4_K => portable!(Q8K, q4_k),
            GgmlType::Q5_K => portable!(Q8K, q5_k),
            GgmlType::Q6_K => portable!(Q8K, q6_k),
            _ => return None,
        })
    }
}

/// `Σ_j lo(j) * a[j] + hi(j) * a[j + 16]` over the 16 bytes `q` of a 32-block.
fn pairs(q: &[u8], a: &[i8; 32], split: impl Fn(usize, u8) -> (u8, u8)) -> i32 {
    q.iter()
        .enumerate()
        .map(|(j, &q)| {
            let (lo, hi) = split(j, q);
            lo as i32 * a[j] as i32 + hi as i32 * a[j + 16] as i32
        })
        .sum()
}

fn nibbles(_: usize, q: u8) -> (u8, u8) {
    (q & 0x0F, q >> 4)
}

fn q4_0(row: &[u8], acts: &[Q8Block]) -> f32 {
    let blocks = row.chunks_exact(18).zip(acts);
    blocks.map(|(b, a)| half_at(b, 0) * (a.d * pairs(&b[2..18], &a.qs, nibbles) as f32 - 8.0 * a.s)).sum()
}

fn q4_1(row: &[u8], acts: &[Q8Block]) -> f32 {
    let blocks = row.chunks_exact(20).zip(acts);
    blocks
        .map(|(b, a)| half_at(b, 0) * a.d * pairs(&b[4..20], &a.qs, nibbles) as f32 + half_at(b, 2) * a.s)
        .sum()
}

fn q5_0(row: &[u8], acts: &[Q8Block]) -> f32 {
    let blocks = row.chunks_exact(22).zip(acts);
    blocks
        .map(|(b, a)| {
            let high = q5_high(b, 2);
            let sum = pairs(&b[6..22], &a.qs, |j, q| q5_pair(q, high, j));
            half_at(b, 0) * (a.d * sum as f32 - 16.0 * a.s)
        })
        .sum()
}

fn q5_1(row: &[u8], acts: &[Q8Block]) -> f32 {
    let blocks = row.chunks_exact(24).zip(acts);
    blocks
        .map(|(b, a)| {
            let high = q5_high(b, 4);
            let sum = pairs(&b[8..24], &a.qs, |j, q| q5_pair(q, high, j));
            half_at(b, 0) * a.d * sum as f32 + half_at(b, 2) * a.s
        })
        .sum()
}

fn q8_0(row: &[u8], acts: &[Q8Block]) -> f32 {
    let blocks = row.chunks_exact(34).zip(acts);
    blocks
        .map(|(b, a)| {
            let sum: i32 = b[2..34].iter().zip(&a.qs).map(|(&w, &x)| w as i8 as i32 * x as i32).sum();
            half_at(b, 0) * a.d * sum as f32
        })
        .sum()
}

/// Q4_K and Q5_K: `d Σ_j sc_j (q_j · a_j) - dmin Σ_j m_j Σ a_j` per super-block.
fn k4_dot(dtype: GgmlType, row: &[u8], acts: &[Q8KBlock], block_bytes: usize) -> f32 {
    row.chunks_exact(block_bytes)
        .zip(acts)
        .map(|(b, a)| {
            let scales = k4_scales(&b[k4::SCALES..k4::SCALES + 12]);
            let (mut sum, mut mins) = (0i32, 0i32);
            for (j, &(sc, m)) in scales.iter().enumerate() {
                let dot: i32 =
                    (32 * j..32 * j + 32).map(|e| k4_value(dtype, b, e) as i32 * a.qs[e] as i32).sum();
                sum += sc as i32 * dot;
                mins += m as i32 * (a.sums[2 * j] as i32 + a.sums[2 * j + 1] as i32);
            }
            a.d * (half_at(b, 0) * sum as f32 - half_at(b, 2) * mins as f32)
        })
        .sum()
}

fn q4_k(row: &[u8], acts: &[Q8KBlock]) -> f32 {
    k4_dot(GgmlType::Q4_K, row, acts, 144)
}

fn q5_k(row: &[u8], acts: &[Q8KBlock]) -> f32 {
    k4_dot(GgmlType::Q5_K, row, acts, 176)
}

/// Q6_K: `d Σ_s sc_s (q_s · a_s - 32 Σ a_s)` per super-block, over sub-blocks of 16.
fn q6_k(row: &[u8], acts: &[Q8KBlock]) -> f32 {
    row.chunks_exact(210)
        .zip(acts)
        .map(|(b, a)| {
            let mut sum = 0i32;
            for half in 0..2 {
                let (low, high) = (&b[k6::LOW + 64 * half..], &b[k6::HIGH + 32 * half..]);
                for s in 0..8 {
                    let sub = 8 * half + s;
                    let dot: i32 = (16 * s..16 * s + 16)
                        .map(|e| q6_value(low, high, e) as i32 * a.qs[128 * half + e] as i32)
                        .sum();
                    sum += (b[k6::SCALES + sub] as i8 as i32) * (dot - 32 * a.sums[sub] as i32);
                }
            }
            half_at(b, k6::D) * a.d * sum as f32
        })
        .sum()
}
