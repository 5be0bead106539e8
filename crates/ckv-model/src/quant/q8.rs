//! Activations quantized per block to 8 bits, in the layouts the weight types pair with
//! (as llama.cpp pairs them): blocks of 32 with a scale and the scaled sum of their values
//! for Q4_0 .. Q8_0, super-blocks of 256 with sums of every 16 values for the K-quants.

/// 32 activations: `x ≈ d * qs`, and `s = d * Σ qs` (for the weights' offsets and minimums).
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub(crate) struct Q8Block {
    /// Scale.
    pub(crate) d: f32,
    /// `d * Σ qs`.
    pub(crate) s: f32,
    /// Values in `-127..=127`.
    pub(crate) qs: [i8; 32],
}

/// 256 activations: `x ≈ d * qs`, and the integer sum of every 16 values.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub(crate) struct Q8KBlock {
    /// Scale.
    pub(crate) d: f32,
    /// Values in `-127..=127`.
    pub(crate) qs: [i8; 256],
    /// `Σ qs[16 i .. 16 i + 16]`.
    pub(crate) sums: [i16; 16],
}

impl Default for Q8KBlock {
    fn default() -> Self {
        Self { d: 0.0, qs: [0; 256], sums: [0; 16] }
    }
}

/// The scale `max |x| / 127` of `x` and its values `round(x / scale)`.
fn quantize_into(x: &[f32], qs: &mut [i8]) -> f32 {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = (v * inv).round().clamp(-127.0, 127.0) as i8;
    }
    d
}

/// Quantizes `x` (a multiple of 32 long) into blocks of 32, replacing `out`'s contents.
pub(crate) fn quantize_q8(x: &[f32], out: &mut Vec<Q8Block>) {
    out.clear();
    out.extend(x.chunks_exact(32).map(|x| {
        let mut block = Q8Block::default();
        block.d = quantize_into(x, &mut block.qs);
        block.s = block.d * block.qs.iter().map(|&q| q as i32).sum::<i32>() as f32;
        block
    }));
}

/// Quantizes `x` (a multiple of 256 long) into super-blocks of 256, replacing `out`'s
/// contents.
pub(crate) fn quantize_q8k(x: &[f32], out: &mut Vec<Q8KBlock>) {
    out.clear();
    out.extend(x.chunks_exact(256).map(|x| {
        let mut block = Q8KBlock::default();
        block.d = quantize_into(x, &mut block.qs);
        for (sum, qs) in block.sums.iter_mut().zip(block.qs.chunks_exact(16)) {
            *sum = qs.iter().map(|&q| q as i16).sum();
        }
        block
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_hold_values_within_half_a_step() {
        let x: Vec<f32> = (0..512).map(|i| ((i * 37) % 101) as f32 / 10.0 - 5.0).collect();
        let mut q8 = Vec::new();
        quantize_q8(&x, &mut q8);
        let mut q8k = Vec::new();
        quantize_q8k(&x, &mut q8k);
        assert_eq!((q8.len(), q8k.len()), (16, 2));
        for (b, x) in q8.iter().zip(x.chunks_exact(32)) {
            let sum: i32 = b.qs.iter().map(|&q| q as i32).sum();
            assert_eq!(b.s, b.d * sum as f32);
            for (&q, &v) in b.qs.iter().zip(x) {
                assert!((q as f32 * b.d - v).abs() <= b.d / 2.0 + 1e-6);
            }
        }
        for (b, x) in q8k.iter().zip(x.chunks_exact(256)) {
            for (i, &sum) in b.sums.iter().enumerate() {
                assert_eq!(sum as i32, b.qs[16 * i..16 * i + 16].iter().map(|&q| q as i32).sum::<i32>());
            }
            assert!(b.qs.iter().zip(x).all(|(&q, &v)| (q as f32 * b.d - v).abs() <= b.d / 2.0 + 1e-6));
        }
        quantize_q8(&[0.0; 32], &mut q8);
        assert_eq!((q8.len(), q8[0].d, q8[0].qs), (1, 0.0, [0; 32]));
    }
}
