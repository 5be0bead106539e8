//! Benchmarks of the `ckv-model` functions that need no model file: RoPE over the query row
//! of an 8B-shaped layer (32 heads x 128) and its frequency table, `argmax` and `nll` over a
//! logits row of 49152 entries (SmolLM2's vocabulary), and `dequantize` of Q4_1 and Q8_0
//! buffers the size of one SmolLM2 FFN matrix (576 x 1536 weights).
//!
//! Throughput: bytes read (logits), or bytes read plus bytes written (dequantization: the
//! quantized blocks in, `f32` out). Inputs come from a seeded LCG; the quantized buffers are
//! valid GGML blocks (finite f16 scales and minima, random quants).
//!
//! Run with `cargo bench -p ckv-model --bench model`; add
//! `-- --warm-up-time 0.5 --measurement-time 2` for a quick pass. The defaults of this file
//! are 1 s of warm-up and 3 s of measurement per benchmark.

use std::hint::black_box;
use std::time::Duration;

use ckv_core::{rope, rope_inv_freq};
use ckv_model::{GgmlType, argmax, dequantize, nll};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use half::f16;

/// Query heads of the RoPE row.
const HEADS: usize = 32;
/// Head dimension.
const D: usize = 128;
/// RoPE base (Llama 3 8B).
const ROPE_BASE: f32 = 500_000.0;
/// Vocabulary size (SmolLM2).
const VOCAB: usize = 49_152;
/// Weights of one SmolLM2 FFN matrix.
const WEIGHTS: usize = 576 * 1536;

/// A 64-bit LCG (Knuth's MMIX constants).
struct Lcg(u64);

impl Lcg {
    /// 32 pseudo-random bits.
    fn next(&mut self) -> u32 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 32) as u32
    }

    /// A value uniform in `[-1, 1)`.
    fn uniform(&mut self) -> f32 {
        (self.next() >> 8) as f32 / (1u32 << 23) as f32 - 1.0
    }
}

fn bench_rope(c: &mut Criterion) {
    let mut rng = Lcg(1);
    let mut row: Vec<f32> = (0..HEADS * D).map(|_| rng.uniform()).collect();
    let inv_freq = rope_inv_freq(ROPE_BASE, D);
    let mut group = c.benchmark_group("rope");
    group.bench_function("inv_freq_d128", |b| b.iter(|| rope_inv_freq(black_box(ROPE_BASE), black_box(D))));
    // Rotations keep the norm: applying RoPE over and over stays finite.
    group.bench_function("rope_32x128_pos8191", |b| b.iter(|| rope(black_box(&mut row), 8191, &inv_freq)));
    group.finish();
}

fn bench_logits(c: &mut Criterion) {
    let mut rng = Lcg(2);
    let logits: Vec<f32> = (0..VOCAB).map(|_| 10.0 * rng.uniform()).collect();
    let mut group = c.benchmark_group("logits");
    group.throughput(Throughput::Bytes((VOCAB * size_of::<f32>()) as u64));
    group.bench_function("argmax_49152", |b| b.iter(|| argmax(black_box(&logits))));
    group.bench_function("nll_49152", |b| b.iter(|| nll(black_box(&logits), 1234)));
    group.finish();
}

/// `WEIGHTS` weights of `dtype` (Q4_1 or Q8_0) as GGML blocks of 32: f16 scale (and, for
/// Q4_1, f16 minimum), then the quants.
fn quantized(dtype: GgmlType, rng: &mut Lcg) -> Vec<u8> {
    let (per_block, block_bytes) = dtype.block().expect("a block type");
    let mut bytes = Vec::with_capacity(WEIGHTS / per_block * block_bytes);
    for _ in 0..WEIGHTS / per_block {
        let start = bytes.len();
        bytes.extend(f16::from_f32(0.01 * rng.uniform()).to_le_bytes());
        if dtype == GgmlType::Q4_1 {
            bytes.extend(f16::from_f32(-0.08 + 0.01 * rng.uniform()).to_le_bytes());
        }
        while bytes.len() < start + block_bytes {
            bytes.push(rng.next() as u8);
        }
    }
    bytes
}

fn bench_dequantize(c: &mut Criterion) {
    let mut rng = Lcg(3);
    let mut out = vec![0.0f32; WEIGHTS];
    let mut group = c.benchmark_group("dequantize");
    for (name, dtype) in [("q4_1", GgmlType::Q4_1), ("q8_0", GgmlType::Q8_0)] {
        let bytes = quantized(dtype, &mut rng);
        assert!(dequantize(dtype, &bytes, &mut out), "{name}: not a valid buffer");
        group.throughput(Throughput::Bytes((bytes.len() + WEIGHTS * size_of::<f32>()) as u64));
        group.bench_function(format!("{name}_576x1536"), |b| {
            b.iter(|| dequantize(dtype, black_box(&bytes), &mut out))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = bench_rope, bench_logits, bench_dequantize
}
criterion_main!(benches);
