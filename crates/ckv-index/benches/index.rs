//! Benchmarks of `ckv-index`: building the CSR layout of one head's prompt clustering
//! (`ClusterIndex::append` of 32768 tokens in 400 clusters, `d = 128`) and walking the
//! members of every cluster in id order (`members_of`), as the selection step does.
//!
//! The clustering is computed once, outside the timed loops, by `ckv_cluster::kmeans` on
//! seeded pseudo-random keys; 3 iterations are enough, since only its labels and sizes
//! matter here.
//!
//! Run with `cargo bench -p ckv-index --bench index`; add
//! `-- --warm-up-time 0.5 --measurement-time 2` for a quick pass.

use std::hint::black_box;

use ckv_cluster::{ClusterParams, kmeans};
use ckv_core::ParamGuard;
use ckv_index::ClusterIndex;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

/// Head dimension.
const D: usize = 128;
/// Clustered tokens of the prompt.
const TOKENS: usize = 32_768;
/// Clusters of the prompt (about 80 tokens each).
const CLUSTERS: usize = 400;

/// `n` seeded values in `[-1, 1)` from a 64-bit LCG (Knuth's MMIX constants).
fn lcg_values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn bench_index(c: &mut Criterion) {
    let keys = lcg_values(TOKENS * D, 1);
    let params = ClusterParams::new(CLUSTERS).max_iters(3).seed(7).validate().expect("valid params");
    let clustering = kmeans(&params, &keys, D).expect("kmeans");

    let mut group = c.benchmark_group("index");
    group.throughput(Throughput::Elements(TOKENS as u64));
    // A fresh empty index per iteration: its allocation is part of the measured cost.
    group.bench_function("append_32k_tokens_400_clusters", |b| {
        b.iter_batched_ref(
            || ClusterIndex::new(D).expect("index"),
            |index| index.append(black_box(&clustering), 16).expect("append"),
            BatchSize::SmallInput,
        )
    });

    let mut index = ClusterIndex::new(D).expect("index");
    index.append(&clustering, 16).expect("append");
    group.bench_function("members_of_all_400_clusters", |b| {
        b.iter(|| {
            let index = black_box(&index);
            (0..index.n_clusters())
                .map(|c| index.members_of(c).iter().map(|&t| t as u64).sum::<u64>())
                .sum::<u64>()
        })
    });
    group.finish();
}

criterion_group!(benches, bench_index);
criterion_main!(benches);
