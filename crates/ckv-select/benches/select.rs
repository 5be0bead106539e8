//! Benchmarks of one decode-step selection of `ckv-select` through its public API: one KV
//! head (f16 keys, `d = 128`) whose prompt of 32768 tokens was grown once (outside the timing;
//! for ClusterKV that is the k-means of `[16, 32768)` into 410 clusters), then
//! `select_group` for a GQA group of 4 query rows at budget 1024 (sink 16, empty tail), for
//! ClusterKV, Quest and oracle top-k, under both GQA policies.
//!
//! The throughput is the bytes of scoring data each call reads: centroids (`f32`) for
//! ClusterKV, page minima and maxima (`f32`) for Quest, every clustered key (`f16`) for the
//! oracle; once per query row under `PerQueryHead`, once per group under `PerKvHead`.
//! Inputs are seeded pseudo-random keys and queries, uniform in `[-1, 1)`.
//!
//! Run with `cargo bench -p ckv-select --bench select`; add
//! `-- --warm-up-time 0.5 --measurement-time 2` for a quick pass. The defaults of this file
//! are 1 s of warm-up and 3 s of measurement per benchmark; the untimed ClusterKV setup
//! clusters 32k keys twice (a few seconds), whatever the filter.

use std::hint::black_box;
use std::time::Duration;

use ckv_core::ParamGuard;
use ckv_select::{GqaPolicy, Growth, Method, Regions, SelectParams, StepCtx, new_selector, select_group};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use half::f16;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Head dimension.
const D: usize = 128;
/// Prompt length: the current token is at position `PROMPT`.
const PROMPT: u32 = 32_768;
/// Sink tokens.
const SINK: u32 = 16;
/// Query rows of one GQA group (32 query heads over 8 KV heads).
const GROUP: usize = 4;
/// Attended tokens per step.
const BUDGET: usize = 1024;

/// `n` seeded values uniform in `[-1, 1)`.
fn random_values(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect()
}

fn bench_select(c: &mut Criterion) {
    // Keys of the prompt and of the current token.
    let keys: Vec<f16> = random_values((PROMPT as usize + 1) * D, 1).into_iter().map(f16::from_f32).collect();
    let queries = random_values(GROUP * D, 2);
    let step = StepCtx {
        queries: &queries,
        n_queries: GROUP,
        keys: &keys,
        d: D,
        scale: 1.0 / (D as f32).sqrt(),
        regions: Regions::new(SINK, PROMPT, PROMPT).expect("regions"),
    };
    let clustered = (PROMPT - SINK) as usize;

    let mut group = c.benchmark_group("select_group");
    for method in [Method::ClusterKv, Method::Quest, Method::Oracle] {
        for gqa in [GqaPolicy::PerQueryHead, GqaPolicy::PerKvHead] {
            let params = SelectParams::new(method)
                .budget(BUDGET)
                .sink(SINK as usize)
                .gqa(gqa)
                .validate()
                .expect("valid params");
            let mut selector = new_selector::<f16>(&params, 7);
            selector.grow(&keys, D, SINK..PROMPT, Growth::Prompt).expect("grow");
            let scored_bytes = match method {
                Method::ClusterKv => size_of_val(selector.index().expect("index").centroids()),
                Method::Quest => clustered.div_ceil(params.quest_page_size()) * D * 2 * size_of::<f32>(),
                _ => clustered * D * size_of::<f16>(),
            };
            let selections = gqa.selections_per_group(GROUP);
            let mut outs: Vec<Vec<u32>> = (0..selections).map(|_| Vec::with_capacity(BUDGET)).collect();
            // One untimed step: buffers at their steady sizes, and a check of the result.
            select_group(selector.as_mut(), &params, &step, &mut outs).expect("select");
            assert!(
                outs.iter().all(|ids| ids.len() == BUDGET),
                "{method}/{gqa}: a selection missed the budget"
            );
            group.throughput(Throughput::Bytes((selections * scored_bytes) as u64));
            group.bench_function(format!("{method}/{gqa}/32k_b1024_g4"), |b| {
                b.iter(|| {
                    select_group(selector.as_mut(), &params, black_box(&step), &mut outs).expect("select");
                    black_box(&outs);
                })
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = bench_select
}
criterion_main!(benches);
