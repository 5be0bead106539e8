//! Benchmarks of the hot functions of `ckv-cluster`: k-means over f16 key rows (one head with
//! random and with k-means++ seeding, and eight heads at once as the prompt clustering of one
//! layer does).
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

use ckv_cluster::{ClusterParams, Init, kmeans, kmeans_heads};
use ckv_core::{Element, ParamGuard};
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

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = bench_kmeans
}
criterion_main!(benches);
