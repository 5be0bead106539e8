//! The decode step allocates nothing once its buffers exist: selection scratch, attention
//! probabilities, outputs and the KV store (sized by `max_context`) are all reused.
//!
//! A counting global allocator counts every allocation of every thread (rayon's workers
//! included) while steady-state steps run; this file holds one test so that nothing else
//! runs beside it. The loop runs inside a rayon pool, as a serving loop should: work sent to
//! a pool from outside goes through rayon's injector queue, which allocates a block every
//! 63 jobs.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use ckv_attn::{DecodeInput, LayerPipeline, PipelineConfig, PrefillInput};
use ckv_core::ParamGuard;
use ckv_select::{Budget, GqaPolicy, Method, SelectParams};
use half::f16;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the counter is a
// relaxed atomic and allocates nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn rows(n: usize, salt: usize) -> Vec<f32> {
    (0..n).map(|i| (((i * 7919 + salt * 104_729) % 2003) as f32 / 1001.5) - 1.0).collect()
}

#[test]
fn steady_state_decode_steps_do_not_allocate() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    pool.install(decode_loops);
}

fn decode_loops() {
    let (hq, hkv, d, prompt, steps) = (8, 2, 32, 700, 40);
    let mass = Budget::Mass { p: 0.9, max: 256 };
    let runs = Method::ALL
        .map(|m| (m, Budget::Tokens(256)))
        .into_iter()
        .chain([(Method::ClusterKv, mass), (Method::Oracle, mass)]);
    for (method, budget) in runs {
        for gqa in [GqaPolicy::PerQueryHead, GqaPolicy::PerKvHead] {
            // The window (100) is longer than the measured steps: no re-clustering, which
            // allocates its clustering by design.
            let select = SelectParams::new(method)
                .budget_rule(budget)
                .window(100)
                .gqa(gqa)
                .max_context(prompt + 2 * steps + 1);
            let config = PipelineConfig::new(hq, hkv, d, select).validate().unwrap();
            let mut layer = LayerPipeline::<f16>::new(config);
            let (kv, q) = (rows(prompt * hkv * d, 1), rows(prompt * hq * d, 2));
            let mut prefill_out = vec![0.0f32; prompt * hq * d];
            let seqs = [
                layer.prefill(
                    PrefillInput { keys: &kv, values: &kv, queries: Some(&q) },
                    Some(&mut prefill_out),
                ),
                layer.prefill(
                    PrefillInput { keys: &kv[..400 * hkv * d], values: &kv[..400 * hkv * d], queries: None },
                    None,
                ),
            ]
            .map(Result::unwrap);
            let inputs: Vec<(Vec<f32>, Vec<f32>)> =
                (0..2 * steps).map(|i| (rows(hq * d, 10 + i), rows(hkv * d, 100 + i))).collect();
            let mut out = vec![0.0f32; 2 * hq * d];
            let step = |i: usize, layer: &mut LayerPipeline<f16>, out: &mut [f32]| {
                let (q, k) = &inputs[i];
                let batch = seqs.map(|seq| DecodeInput { seq, query: q, key: k, value: k });
                layer.decode(&batch, out).unwrap();
            };
            // Warm-up: buffers reach their steady sizes.
            for i in 0..steps {
                step(i, &mut layer, &mut out);
            }
            let before = ALLOCATIONS.load(Ordering::SeqCst);
            for i in steps..2 * steps {
                step(i, &mut layer, &mut out);
            }
            let allocations = ALLOCATIONS.load(Ordering::SeqCst) - before;
            assert_eq!(
                allocations, 0,
                "{method}/{gqa} at {budget}: {allocations} allocations in {steps} decode steps"
            );
            assert!(out.iter().all(|x| x.is_finite()));
        }
    }
}
