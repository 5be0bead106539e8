//! Benchmarks of the hot functions of `ckv-core`: the `A · Bᵀ` product that scores rows
//! against centroids, and the f16/f32 row dot product at `d = 128`, on seeded pseudo-random
//! values uniform in `[-1, 1)`.
//!
//! Run with `cargo bench -p ckv-core --bench core`; add `-- --warm-up-time 0.5
//! --measurement-time 2` for a quick pass (the defaults: 1 s of warm-up, 3 s of measurement).

use std::hint::black_box;
use std::time::Duration;

use ckv_core::{Element, dot, matmul_nt};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use half::f16;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Head dimension of the benchmarked shapes.
const D: usize = 128;

/// `n` seeded values uniform in `[-1, 1)`, stored as `E`.
fn random_rows<E: Element>(n: usize, seed: u64) -> Vec<E> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| E::from_f32(rng.random::<f32>() * 2.0 - 1.0)).collect()
}

fn bench_matmul(c: &mut Criterion) {
    let mut group = c.benchmark_group("matmul_nt");
    // 256 rows against 400 centroids, d = 128; throughput counts multiply-adds.
    let (m, n) = (256, 400);
    let a = random_rows::<f32>(m * D, 2);
    let b = random_rows::<f32>(n * D, 3);
    let mut out = vec![0.0f32; m * n];
    group.throughput(Throughput::Elements((m * n * D) as u64));
    group.bench_function("256x128_400x128", |bench| {
        bench.iter(|| matmul_nt(black_box(&a), black_box(&b), D, &mut out))
    });
    group.finish();
}

fn bench_dot_of<E: Element>(c: &mut Criterion) {
    let mut group = c.benchmark_group("dot");
    let q = random_rows::<f32>(D, 4);
    let row = random_rows::<E>(D, 5);
    group.throughput(Throughput::Bytes((D * (size_of::<f32>() + size_of::<E>())) as u64));
    group.bench_function(format!("d128_{}", E::NAME), |b| b.iter(|| dot(black_box(&q), black_box(&row))));
    group.finish();
}

fn bench_dot(c: &mut Criterion) {
    bench_dot_of::<f16>(c);
    bench_dot_of::<f32>(c);
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = bench_matmul, bench_dot
}
criterion_main!(benches);
