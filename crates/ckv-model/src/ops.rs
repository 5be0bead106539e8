//! The model's numeric building blocks on `f32` rows.

use ckv_cluster::{matmul_nt, score_rows};
use rayon::prelude::*;

/// Output columns per parallel task of a small-batch product.
const COLS_PER_TASK: usize = 256;
/// Rows per parallel task of a many-row product.
const ROWS_PER_TASK: usize = 128;
/// Up to this many rows (a decode batch), the weights are split by output columns, so that
/// each weight is read once per product.
const SMALL_BATCH: usize = 64;
/// Up to this many rows (a decode step of a few sequences), each weight row meets every
/// input row through the decode attention's row kernel: no packing of the weights, which
/// costs more than the product at this size.
const GEMV_ROWS: usize = 8;

/// `y[n, out] = x[n, inp] · w[out, inp]ᵀ`, parallel over output columns for a small batch
/// of rows and over row blocks for many.
pub(crate) fn linear(x: &[f32], w: &[f32], inp: usize, y: &mut [f32]) {
    let (n, out) = (x.len() / inp, w.len() / inp);
    if n == 0 {
        return;
    }
    if n <= SMALL_BATCH {
        let blocks: Vec<Vec<f32>> = w
            .par_chunks(COLS_PER_TASK * inp)
            .map(|w| {
                let cols = w.len() / inp;
                let mut block = vec![0.0f32; n * cols];
                if n <= GEMV_ROWS {
                    score_rows(x, inp, w, 0..cols, 1.0, &mut block);
                } else {
                    matmul_nt(x, w, inp, &mut block);
                }
                block
            })
            .collect();
        for (b, block) in blocks.iter().enumerate() {
            let cols = block.len() / n;
            for (y, block) in y.chunks_exact_mut(out).zip(block.chunks_exact(cols)) {
                y[b * COLS_PER_TASK..b * COLS_PER_TASK + cols].copy_from_slice(block);
            }
        }
    } else {
        y.par_chunks_mut(ROWS_PER_TASK * out)
            .zip(x.par_chunks(ROWS_PER_TASK * inp))
            .for_each(|(y, x)| matmul_nt(x, w, inp, y));
    }
}

/// RMSNorm of every row of `x` (`weight.len()` wide) into `out`.
pub(crate) fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let n = weight.len();
    for (x, o) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let mean_sq = x.iter().map(|v| (v * v) as f64).sum::<f64>() / n as f64;
        let inv = 1.0 / ((mean_sq as f32) + eps).sqrt();
        for ((o, v), w) in o.iter_mut().zip(x).zip(weight) {
            *o = v * inv * w;
        }
    }
}

/// RoPE frequencies of a head of dimension `head_dim`: `base^(-2i / head_dim)` for each pair
/// `i`.
pub fn rope_inv_freq(base: f32, head_dim: usize) -> Vec<f32> {
    (0..head_dim / 2).map(|i| base.powf(-2.0 * i as f32 / head_dim as f32)).collect()
}

/// Rotates adjacent pairs `(x[2i], x[2i+1])` of every head (`inv_freq.len() * 2` wide) of
/// the row `x` by `position * inv_freq[i]` (see [`rope_inv_freq`]).
pub fn rope(x: &mut [f32], position: usize, inv_freq: &[f32]) {
    for head in x.chunks_exact_mut(inv_freq.len() * 2) {
        for (pair, &f) in head.chunks_exact_mut(2).zip(inv_freq) {
            let (sin, cos) = (position as f32 * f).sin_cos();
            let (a, b) = (pair[0], pair[1]);
            pair[0] = a * cos - b * sin;
            pair[1] = a * sin + b * cos;
        }
    }
}

/// `gate = silu(gate) * up`, element-wise.
pub(crate) fn swiglu(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// `-log softmax(logits)[target]`, computed in f64.
pub fn nll(logits: &[f32], target: u32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    max + sum.ln() - logits[target as usize] as f64
}

/// The index of the largest logit (the lowest on ties): the greedy next token.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_largest() {
        assert_eq!(argmax(&[0.5, 2.0, -1.0, 2.0]), 1);
        assert_eq!(argmax(&[f32::NEG_INFINITY]), 0);
    }

    #[test]
    fn linear_matches_naive_for_one_and_many_rows() {
        let (inp, out) = (5, 300);
        let w: Vec<f32> = (0..out * inp).map(|i| ((i * 31) % 17) as f32 / 8.0 - 1.0).collect();
        for n in [1, 3, 8, 9, 40, 70] {
            let x: Vec<f32> = (0..n * inp).map(|i| ((i * 7) % 11) as f32 / 5.0 - 1.0).collect();
            let mut y = vec![f32::NAN; n * out];
            linear(&x, &w, inp, &mut y);
            for r in 0..n {
                for c in 0..out {
                    let want: f32 = (0..inp).map(|k| x[r * inp + k] * w[c * inp + k]).sum();
                    assert!((y[r * out + c] - want).abs() < 1e-4);
                }
            }
        }
    }

    #[test]
    fn rope_preserves_norm_and_position_zero() {
        let inv_freq = rope_inv_freq(10000.0, 4);
        let mut x = [1.0f32, 2.0, 3.0, 4.0];
        rope(&mut x, 0, &inv_freq);
        assert_eq!(x, [1.0, 2.0, 3.0, 4.0]);
        rope(&mut x, 17, &inv_freq);
        let norm: f32 = x.iter().map(|v| v * v).sum();
        assert!((norm - 30.0).abs() < 1e-4);
    }

    #[test]
    fn norms_rotations_and_nll() {
        let mut out = [0.0f32; 2];
        rms_norm(&[3.0, 4.0], &[1.0, 2.0], 0.0, &mut out);
        let inv = 1.0 / 12.5f32.sqrt();
        assert_eq!(out, [3.0 * inv, 8.0 * inv]);
        let mut x = [1.0f32, 0.0, 0.0, 1.0];
        rope(&mut x, 1, &[std::f32::consts::FRAC_PI_2]);
        assert!((x[0]).abs() < 1e-6 && (x[1] - 1.0).abs() < 1e-6 && (x[2] + 1.0).abs() < 1e-6);
        let mut g = [0.0f32, 2.0];
        swiglu(&mut g, &[5.0, 1.0]);
        assert_eq!(g[0], 0.0);
        assert!((g[1] - 2.0 / (1.0 + (-2.0f32).exp())).abs() < 1e-6);
        let want = (3.0f64.exp() + 2.0 * 1.0f64.exp()).ln() - 1.0;
        assert!((nll(&[3.0, 1.0, 1.0], 1) - want).abs() < 1e-9);
        assert!((nll(&[0.0, 0.0], 0) - 2f64.ln()).abs() < 1e-12);
    }
}
