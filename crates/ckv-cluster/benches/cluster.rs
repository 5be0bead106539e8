//! Benchmarks of the hot functions of `ckv-cluster`: k-means over f16 key rows (one head with
//! random and with k-means++ seeding, and eight heads at once as the prompt clustering of one
//! layer does), the `A · Bᵀ` product that scores rows against centroids, and the f16/f32 row
//! dot product at `d = 128`.
//!
//! Inputs are seeded pseudo-random keys, uniform in `[-1, 1)`: they have no cluster
//! structure, so k-means runs all or nearly all of its 20 iterations (the worst case: 20 for
//! the single head, 16 to 20 for the eight heads).
//!
//! Run with `cargo bench -p ckv-cluster --bench cluster`; add `-- kmeans` (or any name
//! filter) for a subset, `-- --warm-up-time 0.5 --measurement-time 2` for a quick pass. The
//! defaults of this file are 1 s of warm-up and 3 s of measurement per benchmark (k-means:
//! ten samples).

use std::hint::black_box;
use std::time::Duration;

use ckv_cluster::{ClusterParams, Element, Init, dot, kmeans, kmeans_heads, matmul_nt};
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
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

fn bench_kmeans(c: &mut Criterion) {
    let mut group = c.benchmark_group("kmeans");
    // Long runs: ten samples of equal iteration counts.
    group.sample_size(10).sampling_mode(SamplingMode::Flat);

    // One head: 8192 keys into 100 clusters, 20 iterations.
    let (rows, clusters) = (8192, 100);
    let keys = random_rows::<f16>(rows * D, 1);
    let params = ClusterParams::new(clusters).max_iters(20).seed(7).validate().expect("valid params");
    group.throughput(Throughput::Elements(rows as u64));
    group.bench_function("1x8192xd128_f16_k100_it20", |b| {
        b.iter(|| kmeans(&params, black_box(&keys), D).expect("kmeans"))
    });
    // The same with k-means++ seeding (adds O(n k d) to the run).
    let plus_plus = ClusterParams::new(clusters)
        .max_iters(20)
        .seed(7)
        .init(Init::PlusPlus)
        .validate()
        .expect("valid params");
    group.bench_function("1x8192xd128_f16_k100_it20_kmeanspp", |b| {
        b.iter(|| kmeans(&plus_plus, black_box(&keys), D).expect("kmeans"))
    });

    // One layer's prompt: 8 KV heads of 4096 keys, ceil(4096 / 80) = 52 clusters each.
    let (heads, rows, clusters) = (8, 4096, 4096usize.div_ceil(80));
    let keys: Vec<Vec<f16>> = (0..heads).map(|h| random_rows(rows * D, 10 + h as u64)).collect();
    let views: Vec<&[f16]> = keys.iter().map(Vec::as_slice).collect();
    let params = ClusterParams::new(clusters).max_iters(20).seed(7).validate().expect("valid params");
    group.throughput(Throughput::Elements((heads * rows) as u64));
    group.bench_function("heads_8x4096xd128_f16_k52_it20", |b| {
        b.iter(|| kmeans_heads(&params, black_box(&views), D).expect("kmeans_heads"))
    });
    group.finish();
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
    targets = bench_kmeans, bench_matmul, bench_dot
}
criterion_main!(benches);
