//! Benchmarks of `ckv-attn`: decode attention of one query row, and of the 4 rows of a GQA
//! group (`d = 128`, f16 KV), over a context of 32768 tokens, dense and sparse (a sorted
//! selection of 1024 ids), and one decode step of a whole attention layer
//! (`LayerPipeline<f16>::decode`, 32 query heads over 8 KV heads, `d = 128`, budget 1024) for
//! a batch of 1 and of 4 sequences at context 8192, dense and ClusterKV (per-query-head
//! selection, the default).
//!
//! Throughput: bytes of f16 keys and values read (attention kernels); tokens decoded, one
//! per sequence of the batch (pipeline).
//!
//! Every decode step appends a token. The pipeline benchmark therefore restarts its
//! sequences from the same 8192-token prompt (restore + clustering, untimed) every `window`
//! (320) steps, before a step would re-cluster the tail: the timed steps see contexts 8193 to
//! 8512 and no k-means. The prompt KV is stored without prefill attention
//! (`queries: None`). Inputs are seeded pseudo-random values, uniform in `[-1, 1)`; the
//! decode steps take 64 distinct query/key/value inputs in turn, so that what a step selects
//! is not the previous step's (cache-warm) selection. The single-row kernels read the same
//! rows at every iteration: the 1024 sparse rows (512 KiB) stay cache-resident.
//!
//! Run with `cargo bench -p ckv-attn --bench attn`; add `-- decode` (or any name filter) for
//! a subset, `-- --warm-up-time 0.5 --measurement-time 2` for a quick pass. The defaults of
//! this file are 1 s of warm-up and 3 s of measurement per benchmark.

use std::hint::black_box;
use std::time::{Duration, Instant};

use ckv_attn::{
    DecodeInput, LayerPipeline, PipelineConfig, PrefillInput, PrefillSnapshot, SeqId, ValidPipelineConfig,
    dense_attention, sparse_attention,
};
use ckv_core::ParamGuard;
use ckv_select::{Method, SelectParams};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use half::f16;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Head dimension.
const D: usize = 128;
/// Query heads of the layer.
const HQ: usize = 32;
/// KV heads of the layer.
const HKV: usize = 8;
/// Query rows of one GQA group.
const GROUP: usize = HQ / HKV;
/// Attended tokens per step (ClusterKV) and ids of the sparse kernel.
const BUDGET: usize = 1024;
/// Context of the single-row attention kernels.
const KERNEL_CONTEXT: usize = 32_768;
/// Prompt length of the pipeline benchmark.
const PROMPT: usize = 8192;
/// Distinct decode inputs, used in turn, so that the selection changes from step to step.
const STEP_INPUTS: usize = 64;

/// `n` seeded values uniform in `[-1, 1)`.
fn uniform(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect()
}

fn to_f16(xs: &[f32]) -> Vec<f16> {
    xs.iter().copied().map(f16::from_f32).collect()
}

fn bench_kernels(c: &mut Criterion) {
    let keys = to_f16(&uniform(KERNEL_CONTEXT * D, 1));
    let values = to_f16(&uniform(KERNEL_CONTEXT * D, 2));
    let queries = uniform(GROUP * D, 3);
    let scale = 1.0 / (D as f32).sqrt();
    let mut probs = Vec::with_capacity(GROUP * KERNEL_CONTEXT);
    let mut out = vec![0.0f32; GROUP * D];
    // 1024 distinct ids, evenly spread and ascending, as a selection is.
    let ids: Vec<u32> = (0..BUDGET).map(|i| (i * KERNEL_CONTEXT / BUDGET + i % 7) as u32).collect();
    let row_bytes = 2 * D * size_of::<f16>();

    let mut group = c.benchmark_group("attention");
    // One query row, and the query rows of a GQA group sharing one read of the rows.
    for g in [1, GROUP] {
        let (q, out) = (&queries[..g * D], &mut out[..g * D]);
        group.throughput(Throughput::Bytes((KERNEL_CONTEXT * row_bytes) as u64));
        group.bench_function(format!("dense_f16_ctx32k_d128/g{g}"), |b| {
            b.iter(|| dense_attention(black_box(q), D, &keys, &values, scale, &mut probs, out))
        });
        group.throughput(Throughput::Bytes((BUDGET * row_bytes) as u64));
        group.bench_function(format!("sparse_f16_1024_of_32k_d128/g{g}"), |b| {
            b.iter(|| sparse_attention(black_box(q), D, &keys, &values, &ids, scale, &mut probs, out))
        });
    }
    group.finish();
}

/// A layer pipeline holding `batch` sequences that all start from one prompt, restarted
/// before a step would re-cluster.
struct DecodeBench {
    config: ValidPipelineConfig,
    snapshot: PrefillSnapshot<f16>,
    batch: usize,
    layer: LayerPipeline<f16>,
    seqs: Vec<SeqId>,
    steps_left: usize,
    /// Distinct (query, key, value) rows of the steps, used in turn.
    inputs: Vec<[Vec<f32>; 3]>,
    step: usize,
    out: Vec<f32>,
}

impl DecodeBench {
    fn new(method: Method, batch: usize) -> Self {
        let select = SelectParams::new(method).budget(BUDGET);
        let window = select.clone().validate().expect("valid selection").window();
        let config = PipelineConfig::new(HQ, HKV, D, select.max_context(PROMPT + window))
            .validate()
            .expect("valid config");
        let mut prompt = LayerPipeline::<f16>::new(config.clone());
        let seq = prompt.add_sequence().expect("sequence");
        let (keys, values) = (uniform(PROMPT * HKV * D, 4), uniform(PROMPT * HKV * D, 5));
        let input = PrefillInput { keys: &keys, values: &values, queries: None };
        prompt.extend(seq, input, None).expect("prompt");
        let snapshot = prompt.snapshot(seq).expect("snapshot");
        let mut bench = Self {
            layer: LayerPipeline::new(config.clone()),
            config,
            snapshot,
            batch,
            seqs: Vec::with_capacity(batch),
            steps_left: 0,
            inputs: (0..STEP_INPUTS as u64)
                .map(|i| {
                    [uniform(HQ * D, 3 * i + 6), uniform(HKV * D, 3 * i + 7), uniform(HKV * D, 3 * i + 8)]
                })
                .collect(),
            step: 0,
            out: vec![0.0; batch * HQ * D],
        };
        bench.restart();
        bench
    }

    /// A fresh pipeline whose sequences hold the prompt, clustered for the method.
    fn restart(&mut self) {
        self.layer = LayerPipeline::new(self.config.clone());
        self.seqs.clear();
        for _ in 0..self.batch {
            let seq = self.layer.restore(&self.snapshot).expect("restore");
            self.layer.finish_prefill(seq).expect("clustering");
            self.seqs.push(seq);
        }
        self.steps_left = self.config.select().window();
    }

    /// `iters` decode steps of the whole batch; returns the time spent inside `decode`.
    fn run(&mut self, iters: u64) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            if self.steps_left == 0 {
                self.restart();
            }
            let [query, key, value] = &self.inputs[self.step % STEP_INPUTS];
            let batch: Vec<DecodeInput<'_>> =
                self.seqs.iter().map(|&seq| DecodeInput { seq, query, key, value }).collect();
            let start = Instant::now();
            self.layer.decode(black_box(&batch), &mut self.out).expect("decode");
            total += start.elapsed();
            self.steps_left -= 1;
            self.step += 1;
        }
        total
    }
}

fn bench_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    group.sample_size(10);
    for method in [Method::Dense, Method::ClusterKv] {
        for batch in [1, 4] {
            let mut bench = DecodeBench::new(method, batch);
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_function(format!("{method}/hq32_hkv8_d128_ctx8k_b1024/batch{batch}"), |b| {
                b.iter_custom(|iters| bench.run(iters))
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = bench_kernels, bench_decode
}
criterion_main!(benches);
