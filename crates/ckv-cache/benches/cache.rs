//! Benchmarks of the host KV store of `ckv-cache` (`HeadKv<f16>`, `d = 128`): appending one
//! decoded token's key and value rows (checked, converted from `f32`) into reserved storage,
//! and gathering the rows of a 1024-token selection out of 32768 stored tokens.
//!
//! The throughput is the bytes of f16 rows written (append) or copied (gather), keys and
//! values together. Inputs come from a seeded LCG; the selection is 1024 distinct ids in
//! ascending order, as a selector returns them.
//!
//! Run with `cargo bench -p ckv-cache --bench cache`; add
//! `-- --warm-up-time 0.5 --measurement-time 2` for a quick pass.

use std::hint::black_box;

use ckv_cache::HeadKv;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use half::f16;

/// Head dimension.
const D: usize = 128;
/// Stored tokens for the gather.
const TOKENS: usize = 32_768;
/// Gathered tokens (the budget).
const SELECTED: usize = 1024;

/// A 64-bit LCG (Knuth's MMIX constants).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 32
    }

    /// `n` values in `[-1, 1)`.
    fn values(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| (self.next() >> 8) as f32 / (1u64 << 23) as f32 - 1.0).collect()
    }
}

fn bench_append(c: &mut Criterion) {
    let mut rng = Lcg(1);
    let (key, value) = (rng.values(D), rng.values(D));
    let mut group = c.benchmark_group("head_kv");
    group.throughput(Throughput::Bytes((2 * D * size_of::<f16>()) as u64));
    // A fresh store with room for one token per iteration: no reallocation is timed.
    group.bench_function("append_1_token_f16_d128", |b| {
        b.iter_batched_ref(
            || HeadKv::<f16>::with_capacity(D, 1).expect("store"),
            |kv| kv.append(black_box(&key), black_box(&value)).expect("append"),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn bench_gather(c: &mut Criterion) {
    let mut rng = Lcg(2);
    let mut kv = HeadKv::<f16>::with_capacity(D, TOKENS).expect("store");
    kv.extend(&rng.values(TOKENS * D), &rng.values(TOKENS * D)).expect("extend");
    let mut chosen = vec![false; TOKENS];
    let mut left = SELECTED;
    while left > 0 {
        let id = rng.next() as usize % TOKENS;
        if !chosen[id] {
            chosen[id] = true;
            left -= 1;
        }
    }
    let ids: Vec<u32> = (0..TOKENS as u32).filter(|&t| chosen[t as usize]).collect();
    let (mut keys_out, mut values_out) = (vec![f16::ZERO; SELECTED * D], vec![f16::ZERO; SELECTED * D]);

    let mut group = c.benchmark_group("head_kv");
    group.throughput(Throughput::Bytes((2 * SELECTED * D * size_of::<f16>()) as u64));
    group.bench_function("gather_1024_of_32k_f16_d128", |b| {
        b.iter(|| kv.gather(black_box(&ids), &mut keys_out, &mut values_out).expect("gather"))
    });
    group.finish();
}

criterion_group!(benches, bench_append, bench_gather);
criterion_main!(benches);
