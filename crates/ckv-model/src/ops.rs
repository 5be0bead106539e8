//! The model's numeric building blocks on `f32` rows.

use std::cell::RefCell;

use ckv_core::{matmul_nt, score_rows};
use rayon::prelude::*;

use crate::quant::DotKernel;
use crate::quant::q8::{Q8Block, Q8KBlock, quantize_q8, quantize_q8k};
use crate::weights::{Matrix, Rows};

/// Up to this many input rows (a decode batch), a quantized matrix meets them through the
/// integer kernels on 8-bit activations, each weight row read once for all of them.
pub(crate) const SMALL_BATCH: usize = 64;
/// Up to this many input rows, float weight rows meet them through the decode attention's
/// row kernel: no packing, which costs more than the product at this size.
const GEMV_ROWS: usize = 8;
/// Output rows per parallel task of a small batch.
const SMALL_TILE: usize = 16;
/// Output rows per parallel task of a many-row product, at most: each task dequantizes its
/// rows of the weights once, into an `f32` tile for the sgemm, which packs the input rows
/// once per tile (so tiles are as large as two per thread allow).
const LARGE_TILE: usize = 256;
/// Input rows per pass of a many-row product (bounds the scratch).
const LARGE_ROWS: usize = 512;

thread_local! {
    /// A worker's dequantized weight tile.
    static TILE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The reusable buffers of [`linear`]: the quantized activations and the products laid out
/// tile by tile. Once grown, a product of the same or a smaller size allocates nothing.
#[derive(Debug, Default)]
pub(crate) struct LinearScratch {
    q8: Vec<Q8Block>,
    q8k: Vec<Q8KBlock>,
    tiles: Vec<f32>,
}

/// `y[n, out] = x[n, inp] · w[out, inp]ᵀ`, parallel over output rows of `w`.
///
/// A small batch of rows meets a quantized `w` through the integer kernels (activations
/// quantized per block to 8 bits), a float `w` through the row kernel or the sgemm; many
/// rows meet `f32` tiles of `w` (dequantized once per product) in the sgemm.
pub(crate) fn linear(x: &[f32], w: &Matrix, y: &mut [f32], scratch: &mut LinearScratch) {
    let (inp, out) = (w.inp, w.out);
    let n = x.len() / inp;
    if n <= SMALL_BATCH {
        product(x, w, &mut y[..n * out], true, scratch);
    } else {
        // Every pass takes the many-row path, the last and shortest too: a row's products do
        // not depend on how many rows came with it.
        for (x, y) in x.chunks(LARGE_ROWS * inp).zip(y.chunks_mut(LARGE_ROWS * out)) {
            product(x, w, y, false, scratch);
        }
    }
}

/// One pass of [`linear`]: the small-batch path when `small`, else the many-row one.
fn product(x: &[f32], w: &Matrix, y: &mut [f32], small: bool, scratch: &mut LinearScratch) {
    let (inp, out) = (w.inp, w.out);
    let n = x.len() / inp;
    if n == 0 {
        return;
    }
    let kernel = match &w.rows {
        Rows::Blocks { kernel: Some(kernel), .. } if small => Some(*kernel),
        _ => None,
    };
    match kernel {
        Some(DotKernel::Q8 { .. }) => quantize_q8(x, &mut scratch.q8),
        Some(DotKernel::Q8K { .. }) => quantize_q8k(x, &mut scratch.q8k),
        None => {}
    }
    let tile = if small {
        SMALL_TILE
    } else {
        out.div_ceil(2 * rayon::current_num_threads()).clamp(SMALL_TILE, LARGE_TILE)
    };
    // Task t writes its products `[n, rows of tile t]`; with one input row that is `y`.
    let tiles: &mut [f32] = if n == 1 {
        y
    } else {
        scratch.tiles.resize(n * out, 0.0);
        &mut scratch.tiles
    };
    let (q8, q8k) = (&scratch.q8, &scratch.q8k);
    tiles.par_chunks_mut(n * tile).enumerate().for_each(|(t, chunk)| {
        let rows = t * tile..t * tile + chunk.len() / n;
        let width = rows.len();
        match (kernel, &w.rows) {
            (Some(kernel), Rows::Blocks { bytes, row_bytes, .. }) => {
                for (i, r) in rows.enumerate() {
                    let row = &bytes[r * row_bytes..(r + 1) * row_bytes];
                    let put = |b: usize, v: f32| chunk[b * width + i] = v;
                    match kernel {
                        DotKernel::Q8 { one, four } => dots(row, q8, inp / 32, one, four, put),
                        DotKernel::Q8K { one, four } => dots(row, q8k, inp / 256, one, four, put),
                    }
                }
            }
            (_, Rows::F16(w16)) if n <= GEMV_ROWS => {
                score_rows(x, inp, &w16[rows.start * inp..rows.end * inp], 0..width, 1.0, chunk)
            }
            _ => TILE.with_borrow_mut(|buf| {
                let tile = w.f32_rows(rows, buf);
                if n <= GEMV_ROWS {
                    score_rows(x, inp, tile, 0..width, 1.0, chunk);
                } else {
                    matmul_nt(x, tile, inp, chunk);
                }
            }),
        }
    });
    if n > 1 {
        for (t, chunk) in scratch.tiles[..n * out].chunks(n * tile).enumerate() {
            let width = chunk.len() / n;
            for (y, part) in y.chunks_exact_mut(out).zip(chunk.chunks_exact(width)) {
                y[t * tile..t * tile + width].copy_from_slice(part);
            }
        }
    }
}

/// `put(b, row · acts[b])` for every row `b` of `acts` (`per_row` blocks each), four rows at a
/// time while four remain.
fn dots<A>(
    row: &[u8],
    acts: &[A],
    per_row: usize,
    one: fn(&[u8], &[A]) -> f32,
    four: fn(&[u8], [&[A]; 4]) -> [f32; 4],
    mut put: impl FnMut(usize, f32),
) {
    let n = acts.len() / per_row;
    let act = |b: usize| &acts[b * per_row..(b + 1) * per_row];
    let mut b = 0;
    while b + 4 <= n {
        let v = four(row, [act(b), act(b + 1), act(b + 2), act(b + 3)]);
        for (k, v) in v.into_iter().enumerate() {
            put(b + k, v);
        }
        b += 4;
    }
    for b in b..n {
        put(b, one(row, act(b)));
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
    fn norms_rotations_and_nll() {
        let mut out = [0.0f32; 2];
        rms_norm(&[3.0, 4.0], &[1.0, 2.0], 0.0, &mut out);
        let inv = 1.0 / 12.5f32.sqrt();
        assert_eq!(out, [3.0 * inv, 8.0 * inv]);
        let mut g = [0.0f32, 2.0];
        swiglu(&mut g, &[5.0, 1.0]);
        assert_eq!(g[0], 0.0);
        assert!((g[1] - 2.0 / (1.0 + (-2.0f32).exp())).abs() < 1e-6);
        let want = (3.0f64.exp() + 2.0 * 1.0f64.exp()).ln() - 1.0;
        assert!((nll(&[3.0, 1.0, 1.0], 1) - want).abs() < 1e-9);
        assert!((nll(&[0.0, 0.0], 0) - 2f64.ln()).abs() < 1e-12);
    }
}
