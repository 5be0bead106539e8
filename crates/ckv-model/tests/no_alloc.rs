//! `Runner::decode` and `Runner::logits` allocate nothing once warm: activations, quantized
//! activations, hidden states, logits and attention inputs are all reused.
//!
//! A counting global allocator counts every allocation of every thread (rayon's workers
//! included) while steady-state steps run; this file holds one test so that nothing else
//! runs beside it. The loop runs inside a rayon pool, as a serving loop should (work sent
//! to a pool from outside goes through rayon's injector queue, which allocates).

#![allow(unsafe_code)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use ckv_model::{Model, argmax};
use ckv_select::{Method, SelectParams};
use common::{TINY, temp_file, tiny_model};

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

#[test]
fn steady_state_decode_steps_do_not_allocate() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    pool.install(decode_loops);
}

fn decode_loops() {
    // A Q4_K_M-like mix, plus the 32-block types and both float types.
    let code_of = |name: &str| {
        Some(match name {
            n if n.contains("attn_v") || n.contains("ffn_down") => 14,
            n if n.contains("attn_k") => 8,
            n if n.contains("attn_output") => 6,
            n if n.contains("blk.1.ffn_gate") => 1,
            n if n.contains("blk.1.ffn_up") => 0,
            "output.weight" => 13,
            _ => 12,
        })
    };
    let file = temp_file(&tiny_model(code_of, 7));
    let model = Model::load(file.path()).unwrap();
    let (prompt, steps) = (120, 12);
    for method in [Method::Dense, Method::ClusterKv] {
        // The window (30) is longer than all the steps: no re-clustering, which allocates its
        // clustering by design.
        let select =
            SelectParams::new(method).budget(48).sink(4).window(30).max_context(prompt + 2 * steps + 1);
        let mut runner = model.runner(&select, 1).unwrap();
        let tokens: Vec<u32> = (0..prompt as u32).map(|i| (i * 37 + 5) % TINY.5 as u32).collect();
        let (mut a, _) = runner.prefill(&tokens).unwrap();
        let (mut b, _) = runner.prefill(&tokens[..90]).unwrap();
        let mut next = [3u32, 4];
        let mut step = |runner: &mut ckv_model::Runner<'_>| {
            runner.decode(&mut [(&mut a, next[0]), (&mut b, next[1])]).unwrap();
            let logits = runner.logits();
            next = [argmax(&logits[..TINY.5]), argmax(&logits[TINY.5..])];
        };
        for _ in 0..steps {
            step(&mut runner);
        }
        let before = ALLOCATIONS.load(Ordering::SeqCst);
        for _ in 0..steps {
            step(&mut runner);
        }
        let allocations = ALLOCATIONS.load(Ordering::SeqCst) - before;
        assert_eq!(allocations, 0, "{method}: {allocations} allocations in {steps} decode steps");
        assert!(runner.logits().iter().all(|x| x.is_finite()));
    }
}
