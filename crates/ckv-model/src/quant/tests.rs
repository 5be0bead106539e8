//! Every integer kernel and every product path against dequantize-then-`f64` on random
//! blocks: random payloads, scales from zero and subnormal to large, odd block counts.

use half::{bf16, f16};
use proptest::prelude::*;

use super::q8::{quantize_q8, quantize_q8k};
use super::{DotKernel, GgmlType, dequantize};
use crate::gguf::SharedBytes;
use crate::ops::{LinearScratch, linear};
use crate::weights::{Matrix, Rows};

/// The quantized types (those with integer kernels).
const QUANTIZED: [GgmlType; 8] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// A scale: zero, subnormal, tiny, ordinary or large, of either sign.
    fn scale(&mut self) -> f32 {
        let magnitude = match self.next() % 8 {
            0 => 0.0,
            1 => 3e-7,
            2 => 1e-4 * (1.0 + self.unit()),
            3 => 300.0 * self.unit(),
            _ => 0.01 + self.unit(),
        };
        if self.next().is_multiple_of(2) { magnitude } else { -magnitude }
    }
}

/// The f16 fields of a block of `dtype`: byte offsets of its scales and minimums.
fn scale_fields(dtype: GgmlType) -> &'static [usize] {
    match dtype {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q6_K => &[208],
        _ => &[0, 2],
    }
}

/// `blocks` random blocks of `dtype` (finite scales).
fn random_row(dtype: GgmlType, blocks: usize, rng: &mut Rng) -> Vec<u8> {
    match dtype {
        GgmlType::F32 => (0..blocks).flat_map(|_| (rng.scale() * 3.0).to_le_bytes()).collect(),
        GgmlType::F16 => (0..blocks).flat_map(|_| f16::from_f32(rng.scale()).to_le_bytes()).collect(),
        GgmlType::BF16 => (0..blocks).flat_map(|_| bf16::from_f32(rng.scale()).to_le_bytes()).collect(),
        _ => {
            let (_, block_bytes) = dtype.block().unwrap();
            let mut row: Vec<u8> = (0..blocks * block_bytes).map(|_| rng.next() as u8).collect();
            for block in row.chunks_exact_mut(block_bytes) {
                for &at in scale_fields(dtype) {
                    block[at..at + 2].copy_from_slice(&f16::from_f32(rng.scale()).to_le_bytes());
                }
            }
            row
        }
    }
}

/// Random activations: mostly ordinary, some rows tiny or zero.
fn random_x(len: usize, rng: &mut Rng) -> Vec<f32> {
    let scale = match rng.next() % 6 {
        0 => 0.0,
        1 => 1e-6,
        _ => 1.0 + 4.0 * rng.unit(),
    };
    (0..len).map(|_| (rng.unit() * 2.0 - 1.0) * scale).collect()
}

fn dequantized(dtype: GgmlType, bytes: &[u8], len: usize) -> Vec<f32> {
    let mut out = vec![0.0; len];
    assert!(dequantize(dtype, bytes, &mut out));
    out
}

/// The activations a kernel sees: `x` quantized as `kernel` reads it, dequantized.
fn seen(kernel: DotKernel, x: &[f32]) -> Vec<f32> {
    match kernel {
        DotKernel::Q8 { .. } => {
            let mut q = Vec::new();
            quantize_q8(x, &mut q);
            q.iter().flat_map(|b| b.qs.map(|v| v as f32 * b.d)).collect()
        }
        DotKernel::Q8K { .. } => {
            let mut q = Vec::new();
            quantize_q8k(x, &mut q);
            q.iter().flat_map(|b| b.qs.map(|v| v as f32 * b.d)).collect()
        }
    }
}

/// `(Σ w x, Σ |w x|)` in f64.
fn reference(w: &[f32], x: &[f32]) -> (f64, f64) {
    w.iter().zip(x).fold((0.0, 0.0), |(s, a), (&w, &x)| {
        let p = w as f64 * x as f64;
        (s + p, a + p.abs())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Each kernel (the one this CPU runs and the portable one) equals the exact dot product
    /// of the dequantized weights with the dequantized activations, up to f32 rounding.
    #[test]
    fn kernels_match_dequantized_dot_products(seed in any::<u64>(), blocks in 1usize..10) {
        let mut rng = Rng(seed | 1);
        for dtype in QUANTIZED {
            let per_block = dtype.block().unwrap().0;
            let len = blocks * per_block;
            let row = random_row(dtype, blocks, &mut rng);
            let x = random_x(len, &mut rng);
            let w = dequantized(dtype, &row, len);
            for kernel in [DotKernel::of(dtype).unwrap(), DotKernel::portable(dtype).unwrap()] {
                let (want, magnitude) = reference(&w, &seen(kernel, &x));
                let tol = 1e-5 * magnitude + 1e-30;
                // The four-row form, with `x` in one of its slots and other rows beside it.
                let others: Vec<f32> = (0..3 * len).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
                let (got, four) = match kernel {
                    DotKernel::Q8 { one, four } => {
                        let (mut q, mut o) = (Vec::new(), Vec::new());
                        quantize_q8(&x, &mut q);
                        quantize_q8(&others, &mut o);
                        let o: Vec<_> = o.chunks(blocks * per_block / 32).collect();
                        (one(&row, &q), four(&row, [o[0], o[1], &q, o[2]])[2])
                    }
                    DotKernel::Q8K { one, four } => {
                        let (mut q, mut o) = (Vec::new(), Vec::new());
                        quantize_q8k(&x, &mut q);
                        quantize_q8k(&others, &mut o);
                        let o: Vec<_> = o.chunks(blocks * per_block / 256).collect();
                        (one(&row, &q), four(&row, [o[0], o[1], &q, o[2]])[2])
                    }
                };
                prop_assert!(((got as f64) - want).abs() <= tol, "{dtype}: {got} vs {want} (±{tol})");
                prop_assert!(((four as f64) - want).abs() <= tol, "{dtype} (four rows): {four} vs {want} (±{tol})");
            }
        }
    }

    /// `linear` over every type and path (one row, a decode batch, the sgemm past it; output
    /// counts that are not whole tiles) matches the f64 product of the dequantized weights
    /// with `x`, within the error of quantizing `x` per block to 8 bits where the path does.
    #[test]
    fn linear_matches_the_dequantized_product(
        seed in any::<u64>(),
        blocks in 1usize..4,
        out in 1usize..40,
        n in prop::sample::select(vec![1usize, 2, 4, 7, 9, 64, 65]),
    ) {
        let mut rng = Rng(seed | 1);
        for dtype in QUANTIZED.into_iter().chain([GgmlType::F32, GgmlType::F16, GgmlType::BF16]) {
            let inp = blocks * dtype.block().unwrap().0.max(32);
            let bytes: Vec<u8> = (0..out).flat_map(|_| random_row(dtype, inp / dtype.block().unwrap().0, &mut rng)).collect();
            let w = dequantized(dtype, &bytes, out * inp);
            let matrix = matrix(dtype, inp, out, bytes);
            let x: Vec<f32> = (0..n).flat_map(|_| random_x(inp, &mut rng)).collect();
            let mut y = vec![f32::NAN; n * out];
            linear(&x, &matrix, &mut y, &mut LinearScratch::default());
            let quantizes = DotKernel::of(dtype).is_some() && n <= crate::ops::SMALL_BATCH;
            for r in 0..n {
                let x = &x[r * inp..(r + 1) * inp];
                let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
                for c in 0..out {
                    let w = &w[c * inp..(c + 1) * inp];
                    let (want, magnitude) = reference(w, x);
                    let abs_w: f64 = w.iter().map(|&v| (v as f64).abs()).sum();
                    let step = if quantizes { abs_w * amax / 254.0 } else { 0.0 };
                    let tol = 1e-5 * magnitude + 1.0001 * step + 1e-30;
                    let got = y[r * out + c] as f64;
                    prop_assert!((got - want).abs() <= tol, "{dtype} n={n} [{r},{c}]: {got} vs {want} (±{tol})");
                }
            }
        }
    }
}

/// A matrix `[out, inp]` of `dtype` held as `load` would hold it.
fn matrix(dtype: GgmlType, inp: usize, out: usize, bytes: Vec<u8>) -> Matrix {
    let rows = match dtype {
        GgmlType::F32 => Rows::F32(dequantized(dtype, &bytes, inp * out)),
        GgmlType::F16 => Rows::F16(bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]])).collect()),
        _ => Rows::Blocks {
            row_bytes: dtype.row_bytes(inp).unwrap(),
            bytes: SharedBytes::owned(bytes),
            kernel: DotKernel::of(dtype),
        },
    };
    Matrix { inp, out, dtype, rows }
}

#[test]
fn float_types_have_no_integer_kernel_and_every_quantized_type_has_one() {
    for dtype in [GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Other(16)] {
        assert!(DotKernel::of(dtype).is_none() && DotKernel::portable(dtype).is_none());
    }
    assert!(QUANTIZED.iter().all(|&t| DotKernel::of(t).is_some()));
}
