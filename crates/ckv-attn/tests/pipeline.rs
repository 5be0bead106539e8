//! `LayerPipeline` behaviour end to end (DESIGN sections 4 and 6): exactness when the budget
//! covers the context, the re-clustering schedule, batching, determinism across rayon
//! pools, typed errors, prefill attention, dense layers, chunked and restored prefills,
//! offload, agreement with the CPU reference pipeline and what each backend refuses.
//!
//! Every property is one test body over a [`Device`], instantiated per backend by
//! [`test_device!`]: `<name>_cpu` always, `<name>_cuda` with the feature `cuda` (it prints
//! one `skipped: ...` line and passes without a GPU). On the GPU, head dimensions follow the
//! kernels' instantiated shapes ([`Device::head_dim`]), the KV is f16, outputs match within
//! the backend's tolerance ([`Device::close`]) where the CPU's are bitwise, selections match
//! exactly, and what the backend refuses is checked to be refused by name
//! ([`Device::layer`]).

mod common;

use ckv_attn::{
    AttnError, DecodeInput, LayerPipeline, OffloadParams, PipelineConfig, PrefillInput, SeqId,
    dense_attention, sparse_attention,
};
use ckv_core::{Element, ParamGuard, ValueError};
use ckv_select::{Budget, GqaPolicy, Method, SelectError, SelectParams};
use common::{Device, rel_err, test_device};
use half::f16;
use proptest::prelude::*;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

const POLICIES: [GqaPolicy; 2] = [GqaPolicy::PerQueryHead, GqaPolicy::PerKvHead];

/// (Hq, Hkv) pairs with both in {1, 2, 3, 4, 8} and Hq a multiple of Hkv.
const HEADS: [(usize, usize); 12] =
    [(1, 1), (2, 1), (3, 1), (4, 1), (8, 1), (2, 2), (4, 2), (8, 2), (3, 3), (4, 4), (8, 4), (8, 8)];

/// `n` values uniform in [-1, 1).
fn uniform(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect()
}

/// The rows `[tokens, d]` of head `h` out of token-major `[tokens, heads, d]` data.
fn head_rows(src: &[f32], heads: usize, h: usize, d: usize) -> Vec<f32> {
    src.chunks_exact(heads * d).flat_map(|token| &token[h * d..(h + 1) * d]).copied().collect()
}

/// `xs` as the KV store holds them (rounded to nearest for f16).
fn stored<E: Element>(xs: &[f32]) -> Vec<E> {
    xs.iter().map(|&x| E::from_f32(x)).collect()
}

/// The bit patterns of `xs`, for bitwise comparisons.
fn bits(xs: &[f32]) -> Vec<u32> {
    xs.iter().map(|x| x.to_bits()).collect()
}

/// A sequence's data: prompt K/V/Q (token-major) and the inputs of its decode steps.
struct SeqData {
    keys: Vec<f32>,
    values: Vec<f32>,
    queries: Vec<f32>,
    step_q: Vec<Vec<f32>>,
    step_k: Vec<Vec<f32>>,
    step_v: Vec<Vec<f32>>,
}

impl SeqData {
    /// A prompt of `prompt` tokens and `steps` decode steps of `(hq, hkv, d)`, from `seed`.
    fn new(prompt: usize, steps: usize, hq: usize, hkv: usize, d: usize, seed: u64) -> Self {
        let step = |i: usize, n: usize, salt: u64| {
            uniform(n, seed.wrapping_mul(31).wrapping_add(i as u64 * 7 + salt))
        };
        Self {
            keys: uniform(prompt * hkv * d, seed ^ 1),
            values: uniform(prompt * hkv * d, seed ^ 2),
            queries: uniform(prompt * hq * d, seed ^ 3),
            step_q: (0..steps).map(|i| step(i, hq * d, 11)).collect(),
            step_k: (0..steps).map(|i| step(i, hkv * d, 12)).collect(),
            step_v: (0..steps).map(|i| step(i, hkv * d, 13)).collect(),
        }
    }

    /// The prompt without queries.
    fn prefill(&self) -> PrefillInput<'_> {
        PrefillInput { keys: &self.keys, values: &self.values, queries: None }
    }

    /// The input of decode step `i` of `seq`.
    fn input(&self, seq: SeqId, i: usize) -> DecodeInput<'_> {
        DecodeInput { seq, query: &self.step_q[i], key: &self.step_k[i], value: &self.step_v[i] }
    }

    /// All keys and values, prompt and the first `steps` decoded tokens, token-major.
    fn all_kv(&self, steps: usize) -> (Vec<f32>, Vec<f32>) {
        let mut k = self.keys.clone();
        let mut v = self.values.clone();
        for i in 0..steps {
            k.extend_from_slice(&self.step_k[i]);
            v.extend_from_slice(&self.step_v[i]);
        }
        (k, v)
    }
}

/// The pipeline `(hq, hkv, d, select)` with `E` KV on `device`; `None` where the backend's
/// contract refuses it (checked to be refused by name).
fn pipeline<E: Element>(
    device: &Device,
    hq: usize,
    hkv: usize,
    d: usize,
    select: SelectParams,
) -> Option<LayerPipeline<E>> {
    device.layer(PipelineConfig::new(hq, hkv, d, select).validate().unwrap())
}

/// [`pipeline`] of a configuration every backend takes (ClusterKV or dense, a token budget,
/// a shape from [`Device::head_dim`]).
fn taken<E: Element>(
    device: &Device,
    hq: usize,
    hkv: usize,
    d: usize,
    select: SelectParams,
) -> LayerPipeline<E> {
    pipeline(device, hq, hkv, d, select)
        .unwrap_or_else(|| panic!("{device} refuses a ClusterKV or dense layer"))
}

/// `device.close` as a proptest failure naming `what`.
fn prop_close(
    device: &Device,
    got: &[f32],
    want: &[f32],
    what: impl std::fmt::Display,
) -> Result<(), TestCaseError> {
    device.close(got, want).map_err(|e| TestCaseError::fail(format!("{device}, {what}: {e}")))
}

/// Criterion 1: with `B >= t + 1`, every method under both GQA policies decodes exactly
/// the dense attention over all `t + 1` tokens, for odd head dimensions (on the CPU; the
/// GPU's instantiated ones there), every head layout and contexts up to 3000.
fn decode_is_dense_when_the_budget_covers_the_context<E: Element>(device: &Device) {
    proptest!(ProptestConfig::with_cases(48), |(
        heads in 0..HEADS.len(),
        half_d in 0usize..=8,
        t in 0usize..=3000,
        sink in 0usize..=20,
        extra in 0usize..=20,
        bounded in any::<bool>(),
        seed in any::<u64>(),
    )| {
        let (hq, hkv) = HEADS[heads];
        let g = hq / hkv;
        let d = device.head_dim(g, 2 * half_d + 1);
        let data = SeqData::new(t, 1, hq, hkv, d, seed);
        let (all_k, all_v) = data.all_kv(1);
        let budget = (t + 1).max(sink + 2) + extra;
        for method in Method::ALL {
            for gqa in POLICIES {
                let mut select = SelectParams::new(method).budget(budget).sink(sink).gqa(gqa).seed(seed);
                if bounded {
                    select = select.max_context(t + 1);
                }
                let Some(mut layer) = pipeline::<E>(device, hq, hkv, d, select) else { continue };
                let seq = layer.prefill(data.prefill(), None).unwrap();
                let mut out = vec![0.0f32; hq * d];
                layer.decode(&[data.input(seq, 0)], &mut out).unwrap();
                prop_assert_eq!(layer.len(seq).unwrap(), t + 1);
                let scale = layer.config().scale();
                let mut probs = Vec::new();
                for h in 0..hq {
                    let k = stored::<E>(&head_rows(&all_k, hkv, h / g, d));
                    let v = stored::<E>(&head_rows(&all_v, hkv, h / g, d));
                    prop_assert_eq!(layer.kv(seq, h / g).unwrap().keys(), &k[..]);
                    let mut want = vec![0.0f32; d];
                    dense_attention(&data.step_q[0][h * d..(h + 1) * d], d, &k, &v, scale, &mut probs, &mut want);
                    prop_close(device, &out[h * d..(h + 1) * d], &want, format_args!("{method} {gqa} head {h}"))?;
                    prop_assert_eq!(layer.selection(seq, h).unwrap(), &(0..=t as u32).collect::<Vec<_>>()[..]);
                }
            }
        }
    });
}
test_device!(
    decode_is_dense_when_the_budget_covers_the_context::<f32>,
    decode_is_dense_when_the_budget_covers_the_context_cpu,
    decode_is_dense_when_the_budget_covers_the_context_cuda
);

/// Checks the re-clustering schedule of one configuration on `device` (criterion 2).
fn check_reclustering<E: Element>(
    device: &Device,
    prompt: usize,
    sink: usize,
    window: usize,
    window_clusters: usize,
    hkv: usize,
) {
    let (hq, d, tpc) = (2 * hkv, device.head_dim(2, 6), 50);
    let budget = sink + window + 1 + 40;
    let k = 3;
    let steps = prompt.max(sink) - prompt + k * window + window / 2 + 1;
    let select = SelectParams::new(Method::ClusterKv)
        .budget(budget)
        .sink(sink)
        .window(window)
        .window_clusters(window_clusters)
        .tokens_per_cluster(tpc)
        .max_iters(6);
    let mut layer = taken::<E>(device, hq, hkv, d, select);
    let data = SeqData::new(prompt, steps, hq, hkv, d, 77 + prompt as u64);
    let seq = layer.prefill(data.prefill(), None).unwrap();
    let c0 = prompt.max(sink);
    let n0 = (c0 - sink).div_ceil(tpc);
    let after_prefill: Vec<_> = (0..hkv).map(|h| layer.index(seq, h).unwrap().cloned()).collect();
    for (h, index) in after_prefill.iter().enumerate() {
        match index {
            Some(index) => assert_eq!(index.n_clusters(), n0, "head {h}: prompt clusters"),
            None => assert_eq!(n0, 0, "head {h}: no index after a prompt of {prompt} (sink {sink})"),
        }
    }
    // `regions` describes the next step: current token at `len`, before its re-clustering.
    let regions = layer.regions(seq).unwrap();
    assert_eq!((regions.current() as usize, regions.clustered().end as usize), (prompt, c0));
    assert_eq!(regions.sink(), 0..sink.min(prompt) as u32);
    assert!(regions.tail().is_empty());
    let mut out = vec![0.0f32; hq * d];
    let mut c = c0;
    let mut growths = 0;
    for i in 0..steps {
        let t = prompt + i;
        layer.decode(&[data.input(seq, i)], &mut out).unwrap();
        assert_eq!(layer.len(seq), Ok(t + 1));
        let regions = layer.regions(seq).unwrap();
        assert_eq!(regions.current() as usize, t + 1);
        let new_c = regions.clustered().end as usize;
        // The clustered end moves exactly when the tail [c, t) reaches the window.
        let tail_full = t >= c && t - c == window;
        assert_eq!(new_c != c, tail_full, "step at {t}: c {c} -> {new_c} (window {window})");
        if tail_full {
            assert_eq!(new_c, t, "the whole tail is clustered");
            growths += 1;
        }
        c = new_c;
        assert_eq!(c, c0 + growths * window);
        // The next step's tail [c, t + 1): full exactly when that step will re-cluster.
        assert_eq!(regions.tail().len(), (t + 1).saturating_sub(c));
        assert!(regions.tail().len() <= window);
        assert_eq!(layer.selection(seq, 0).unwrap().len(), budget.min(t + 1));
        for (h, before) in after_prefill.iter().enumerate() {
            let index = layer.index(seq, h).unwrap();
            let Some(index) = index else {
                assert_eq!(c, sink, "head {h}: no index over [{sink}, {c})");
                continue;
            };
            assert_eq!(index.n_clusters(), n0 + growths * window_clusters, "head {h} at step {t}");
            let mut members = index.members().to_vec();
            members.sort_unstable();
            assert_eq!(
                members,
                (sink as u32..c as u32).collect::<Vec<_>>(),
                "head {h}: members cover [s, c) once"
            );
            // Old clusters are never re-clustered.
            if let Some(before) = before {
                assert_eq!(&index.centroids()[..n0 * d], before.centroids());
                assert_eq!(&index.members()[..before.n_tokens()], before.members());
                assert_eq!(&index.offsets()[..=n0], before.offsets());
            }
        }
    }
    assert_eq!(growths, k, "prompt {prompt}: {k} windows after {steps} steps");
    assert_eq!(c, c0 + k * window);
}

/// Criterion 2: the tail is clustered on its own exactly every `window` tokens.
fn tail_is_reclustered_exactly_every_window<E: Element>(device: &Device) {
    check_reclustering::<E>(device, 500, 16, 24, 3, 2);
    check_reclustering::<E>(device, 333, 5, 17, 4, 1);
    check_reclustering::<E>(device, 90, 4, 10, 1, 3);
    // A prompt shorter than the sink: the first window starts at s.
    check_reclustering::<E>(device, 7, 12, 9, 2, 2);
}
test_device!(
    tail_is_reclustered_exactly_every_window::<f32>,
    tail_is_reclustered_exactly_every_window_cpu,
    tail_is_reclustered_exactly_every_window_cuda
);

/// `LayerPipeline::regions` right after prefill describes the step at position `P`: `[s, P)`
/// clustered, empty tail.
fn regions_after_prefill_describe_the_step_at_p<E: Element>(device: &Device) {
    let d = device.head_dim(2, 4);
    let select = SelectParams::new(Method::ClusterKv).budget(64).sink(4);
    let mut layer = taken::<E>(device, 2, 1, d, select);
    let data = SeqData::new(100, 0, 2, 1, d, 3);
    let seq = layer.prefill(data.prefill(), None).unwrap();
    let regions = layer.regions(seq).unwrap();
    assert_eq!(regions.current(), 100);
    assert_eq!(regions.sink(), 0..4);
    assert_eq!(regions.clustered(), 4..100);
    assert!(regions.tail().is_empty());
    assert_eq!(layer.index(seq, 0).unwrap().map(|i| i.n_tokens()), Some(96));
}
test_device!(
    regions_after_prefill_describe_the_step_at_p::<f32>,
    regions_after_prefill_describe_the_step_at_p_cpu,
    regions_after_prefill_describe_the_step_at_p_cuda
);

/// Per sequence, per step: the output `[Hq, d]` and the selection of every query head.
type Trace = Vec<Vec<(Vec<f32>, Vec<Vec<u32>>)>>;

/// The selections of every query head of `seq` after its last step.
fn selections<E: Element>(layer: &LayerPipeline<E>, seq: SeqId) -> Vec<Vec<u32>> {
    (0..layer.config().n_q_heads()).map(|h| layer.selection(seq, h).unwrap().to_vec()).collect()
}

/// Criterion 3: a batch of sequences of prompt lengths 100, 5000 and 17 decoded together
/// gives the outputs (bitwise on the CPU) and the selections of each decoded alone (f16
/// KV, ClusterKV under a small budget).
fn batch_decoding_is_bitwise_per_sequence_decoding(device: &Device) {
    let (hq, hkv, steps) = (4usize, 2usize, 36usize);
    let d = device.head_dim(hq / hkv, 9);
    let prompts = [100usize, 5000, 17];
    let budget = 64;
    let select = || SelectParams::new(Method::ClusterKv).budget(budget).sink(4).max_iters(10).seed(5);
    let data: Vec<SeqData> = prompts
        .iter()
        .enumerate()
        .map(|(i, &p)| SeqData::new(p, steps, hq, hkv, d, 1000 + i as u64))
        .collect();

    // Together, in one batch whose order rotates from step to step.
    let mut layer = taken::<f16>(device, hq, hkv, d, select());
    let ids: Vec<SeqId> = data.iter().map(|s| layer.prefill(s.prefill(), None).unwrap()).collect();
    let mut together: Trace = vec![Vec::new(); prompts.len()];
    let mut out = vec![0.0f32; prompts.len() * hq * d];
    for i in 0..steps {
        let order: Vec<usize> = (0..prompts.len()).map(|j| (j + i) % prompts.len()).collect();
        let batch: Vec<DecodeInput<'_>> = order.iter().map(|&j| data[j].input(ids[j], i)).collect();
        layer.decode(&batch, &mut out).unwrap();
        for (b, &j) in order.iter().enumerate() {
            together[j].push((out[b * hq * d..(b + 1) * hq * d].to_vec(), selections(&layer, ids[j])));
            let t = prompts[j] + i;
            for h in 0..hq {
                assert_eq!(layer.selection(ids[j], h).unwrap().len(), budget.min(t + 1), "seq {j} at {t}");
            }
        }
    }
    // The short sequence stayed dense (17 + 36 <= 64); the others were sparse.
    assert_eq!(layer.selection(ids[2], 0).unwrap(), &(0..(17 + steps) as u32).collect::<Vec<_>>()[..]);

    // Alone, each in its own pipeline.
    let mut alone: Trace = Vec::new();
    let mut single = vec![0.0f32; hq * d];
    for s in &data {
        let mut own = taken::<f16>(device, hq, hkv, d, select());
        let seq = own.prefill(s.prefill(), None).unwrap();
        let mut outs = Vec::new();
        for i in 0..steps {
            own.decode(&[s.input(seq, i)], &mut single).unwrap();
            outs.push((single.clone(), selections(&own, seq)));
        }
        alone.push(outs);
    }
    // One by one in a shared pipeline.
    let mut shared = taken::<f16>(device, hq, hkv, d, select());
    let ids2: Vec<SeqId> = data.iter().map(|s| shared.prefill(s.prefill(), None).unwrap()).collect();
    let mut one_by_one: Trace = vec![Vec::new(); prompts.len()];
    for i in 0..steps {
        for j in (0..prompts.len()).rev() {
            shared.decode(&[data[j].input(ids2[j], i)], &mut single).unwrap();
            one_by_one[j].push((single.clone(), selections(&shared, ids2[j])));
        }
    }
    for j in 0..prompts.len() {
        for (way, trace) in [("alone", &alone[j]), ("one by one", &one_by_one[j])] {
            for (i, ((out, sel), (want, want_sel))) in together[j].iter().zip(trace).enumerate() {
                let p = prompts[j];
                device.assert_close(out, want, format_args!("seq of prompt {p} step {i}: batch vs {way}"));
                assert!(sel == want_sel, "seq of prompt {} step {i}: selections, batch vs {way}", prompts[j]);
            }
        }
        assert_eq!(layer.index(ids[j], 1).unwrap(), shared.index(ids2[j], 1).unwrap());
    }
    assert!(together[0] != together[1], "different sequences give different outputs");
}
test_device!(
    batch_decoding_is_bitwise_per_sequence_decoding,
    batch_decoding_is_bitwise_per_sequence_decoding_cpu,
    batch_decoding_is_bitwise_per_sequence_decoding_cuda
);

/// Outputs (prefill, then every decode step) and selections of [`run_two_sequences`].
type TwoSequences = (Vec<Vec<f32>>, Vec<Vec<u32>>);

/// Runs prefill (with queries for the short prompt) and decode steps of two sequences on
/// `device`; `None` where the backend refuses `method`.
fn run_two_sequences(device: &Device, method: Method, gqa: GqaPolicy) -> Option<TwoSequences> {
    let (hq, hkv, steps) = (8usize, 2usize, 40usize);
    let d = device.head_dim(hq / hkv, 16);
    let select = SelectParams::new(method).budget(96).sink(4).window(30).window_clusters(2).gqa(gqa).seed(8);
    let mut layer = pipeline::<f16>(device, hq, hkv, d, select)?;
    let long = SeqData::new(3000, steps, hq, hkv, d, 31);
    let short = SeqData::new(300, steps, hq, hkv, d, 32);
    let a = layer.prefill(long.prefill(), None).unwrap();
    let mut prefill_out = vec![0.0f32; 300 * hq * d];
    let b = layer
        .prefill(PrefillInput { queries: Some(&short.queries), ..short.prefill() }, Some(&mut prefill_out))
        .unwrap();
    let mut outs = vec![prefill_out];
    let mut selections = Vec::new();
    let mut out = vec![0.0f32; 2 * hq * d];
    for i in 0..steps {
        layer.decode(&[long.input(a, i), short.input(b, i)], &mut out).unwrap();
        outs.push(out.clone());
        for h in 0..hq {
            selections.push(layer.selection(a, h).unwrap().to_vec());
            selections.push(layer.selection(b, h).unwrap().to_vec());
        }
    }
    Some((outs, selections))
}

/// Criterion 4: identical outputs and selections in rayon pools of 1 and 2 threads.
fn outputs_are_identical_across_thread_counts(device: &Device) {
    for (method, gqa) in [
        (Method::ClusterKv, GqaPolicy::PerQueryHead),
        (Method::ClusterKv, GqaPolicy::PerKvHead),
        (Method::H2o, GqaPolicy::PerKvHead),
    ] {
        let in_pool = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| run_two_sequences(device, method, gqa))
        };
        let (Some(one), Some(two)) = (in_pool(1), in_pool(2)) else { continue };
        assert!(one.1.iter().all(|s| s.len() == 96), "{method}: selection active");
        assert!(one.1 == two.1, "{method} {gqa}: selections, 1 thread vs 2 threads");
        assert_eq!(one.0.len(), two.0.len());
        for (i, (a, b)) in one.0.iter().zip(&two.0).enumerate() {
            device.assert_close(b, a, format_args!("{method} {gqa} output {i}: 1 thread vs 2 threads"));
        }
    }
}
test_device!(
    outputs_are_identical_across_thread_counts,
    outputs_are_identical_across_thread_counts_cpu,
    outputs_are_identical_across_thread_counts_cuda
);

/// The shape `(Hq, Hkv, d)` of [`small_layer`] on `device`.
fn small_shape(device: &Device) -> (usize, usize, usize) {
    (4, 2, device.head_dim(2, 3))
}

/// A small pipeline on `device` with one sequence of prompt `prompt`.
fn small_layer<E: Element>(device: &Device, prompt: usize) -> (LayerPipeline<E>, SeqId, SeqData) {
    let (hq, hkv, d) = small_shape(device);
    let select = SelectParams::new(Method::ClusterKv).budget(32).sink(2).window(8);
    let mut layer = taken::<E>(device, hq, hkv, d, select);
    let data = SeqData::new(prompt, 4, hq, hkv, d, 5);
    let seq = layer.prefill(data.prefill(), None).unwrap();
    (layer, seq, data)
}

/// Criterion 5: every bad input gets its typed error, and a failed decode changes nothing.
fn bad_input_gets_typed_errors_and_changes_nothing<E: Element>(device: &Device) {
    let (hq, hkv, d) = small_shape(device);
    let (mut layer, seq, data) = small_layer::<E>(device, 50);
    let other = layer.prefill(data.prefill(), None).unwrap();
    let good = data.input(seq, 0);
    let mut out = vec![0.0f32; hq * d];
    let shape = |what: &'static str, expected: usize, given: usize| {
        Err(AttnError::Value(ValueError::Shape { what, expected, given }))
    };

    // Shapes of query, key, value and out.
    let (q_len, kv_len) = (hq * d, hkv * d);
    let short = vec![0.5f32; q_len - 1];
    assert_eq!(
        layer.decode(&[DecodeInput { query: &short, ..good }], &mut out),
        shape("query", q_len, q_len - 1)
    );
    let key = &short[..kv_len - 1];
    assert_eq!(layer.decode(&[DecodeInput { key, ..good }], &mut out), shape("key", kv_len, kv_len - 1));
    assert_eq!(
        layer.decode(&[DecodeInput { value: &short, ..good }], &mut out),
        shape("value", kv_len, q_len - 1)
    );
    assert_eq!(layer.decode(&[good], &mut out[..q_len - 1]), shape("out", q_len, q_len - 1));
    let mut two = vec![0.0f32; 2 * q_len];
    assert_eq!(layer.decode(&[good], &mut two), shape("out", q_len, 2 * q_len));
    // Prefill shapes: a prompt of 10 tokens.
    let k = uniform(10 * kv_len, 1);
    let bad_prefill = |layer: &mut LayerPipeline<E>, input: PrefillInput<'_>, out: Option<&mut [f32]>| {
        layer.prefill(input, out).map(|_| ()).unwrap_err()
    };
    let ragged = &k[..10 * kv_len - 1];
    assert_eq!(
        bad_prefill(&mut layer, PrefillInput { keys: ragged, values: ragged, queries: None }, None),
        AttnError::Value(ValueError::Shape { what: "keys", expected: 9 * kv_len, given: 10 * kv_len - 1 })
    );
    assert_eq!(
        bad_prefill(&mut layer, PrefillInput { keys: &k, values: &k[..9 * kv_len], queries: None }, None),
        AttnError::Value(ValueError::Shape { what: "values", expected: 10 * kv_len, given: 9 * kv_len })
    );
    let q = uniform(10 * q_len, 2);
    let few = &q[..10 * q_len - 20];
    assert_eq!(
        bad_prefill(&mut layer, PrefillInput { keys: &k, values: &k, queries: Some(few) }, None),
        AttnError::Value(ValueError::Shape { what: "queries", expected: 10 * q_len, given: 10 * q_len - 20 })
    );
    let mut pout = vec![0.0f32; 10 * q_len - 1];
    assert_eq!(
        bad_prefill(&mut layer, PrefillInput { keys: &k, values: &k, queries: Some(&q) }, Some(&mut pout)),
        AttnError::Value(ValueError::Shape { what: "out", expected: 10 * q_len, given: 10 * q_len - 1 })
    );

    // NaN and infinities name the input.
    let mut nan_q = data.step_q[0].clone();
    nan_q[5] = f32::NAN;
    let err = layer.decode(&[DecodeInput { query: &nan_q, ..good }], &mut out).unwrap_err();
    assert!(
        matches!(err, AttnError::Value(ValueError::NonFinite { what: "query", index: 5, value }) if value.is_nan()),
        "{err}"
    );
    let mut inf_k = data.step_k[0].clone();
    inf_k[2] = f32::INFINITY;
    assert_eq!(
        layer.decode(&[DecodeInput { key: &inf_k, ..good }], &mut out),
        Err(AttnError::Value(ValueError::NonFinite { what: "key", index: 2, value: f32::INFINITY }))
    );
    let mut ninf_v = data.step_v[0].clone();
    ninf_v[0] = f32::NEG_INFINITY;
    assert!(matches!(
        layer.decode(&[DecodeInput { value: &ninf_v, ..good }], &mut out),
        Err(AttnError::Value(ValueError::NonFinite { what: "value", index: 0, .. }))
    ));
    let mut nan_keys = k.clone();
    nan_keys[7] = f32::NAN;
    assert!(matches!(
        bad_prefill(&mut layer, PrefillInput { keys: &nan_keys, values: &k, queries: None }, None),
        AttnError::Value(ValueError::NonFinite { what: "keys", index: 7, .. })
    ));
    let mut inf_q = q.clone();
    inf_q[33] = f32::INFINITY;
    let mut pout = vec![0.0f32; 10 * q_len];
    assert!(matches!(
        bad_prefill(
            &mut layer,
            PrefillInput { keys: &k, values: &k, queries: Some(&inf_q) },
            Some(&mut pout)
        ),
        AttnError::Value(ValueError::NonFinite { what: "queries", index: 33, .. })
    ));

    // Unknown and duplicate sequences; a bad entry after a good one.
    layer.remove(other).unwrap();
    assert_eq!(layer.decode(&[data.input(other, 0)], &mut out), Err(AttnError::UnknownSequence(other)));
    assert_eq!(layer.len(other), Err(AttnError::UnknownSequence(other)));
    assert_eq!(layer.remove(other), Err(AttnError::UnknownSequence(other)));
    let mut pair = vec![0.0f32; 2 * q_len];
    assert_eq!(layer.decode(&[good, good], &mut pair), Err(AttnError::DuplicateSequence(seq)));
    assert_eq!(
        layer.decode(&[good, data.input(other, 0)], &mut pair),
        Err(AttnError::UnknownSequence(other))
    );
    // A valid entry followed by a bad one: neither sequence changes.
    let third = layer.prefill(data.prefill(), None).unwrap();
    // Ids are never reused: the removed sequence's id stays unknown.
    assert_ne!(third, other);
    assert_eq!(layer.len(other), Err(AttnError::UnknownSequence(other)));
    assert!(matches!(
        layer.decode(&[good, DecodeInput { query: &nan_q, ..data.input(third, 0) }], &mut pair),
        Err(AttnError::Value(ValueError::NonFinite { what: "query", index: 5, .. }))
    ));
    assert_eq!(layer.len(third), Ok(50));
    // Out-of-range heads.
    assert!(matches!(
        layer.kv(seq, hkv),
        Err(AttnError::Param(ckv_core::ParamError { name: "kv_head", .. }))
    ));
    assert!(matches!(
        layer.selection(seq, hq),
        Err(AttnError::Param(ckv_core::ParamError { name: "q_head", .. }))
    ));

    // Nothing changed: the sequence decodes exactly as in a fresh pipeline.
    assert_eq!(layer.len(seq), Ok(50));
    assert!(layer.selection(seq, 0).unwrap().is_empty(), "no step was taken");
    let (mut fresh, fresh_seq, _) = small_layer::<E>(device, 50);
    let mut want = vec![0.0f32; q_len];
    for i in 0..4 {
        layer.decode(&[data.input(seq, i)], &mut out).unwrap();
        fresh.decode(&[data.input(fresh_seq, i)], &mut want).unwrap();
        device.assert_close(&out, &want, format_args!("step {i} after the failed calls"));
        assert_eq!(layer.selection(seq, 1).unwrap(), fresh.selection(fresh_seq, 1).unwrap());
    }
    assert_eq!(layer.len(seq), Ok(54));

    // Configurations (checked before any backend sees them).
    let sel = SelectParams::new(Method::ClusterKv);
    assert!(matches!(
        PipelineConfig::new(6, 4, 8, sel.clone()).validate(),
        Err(AttnError::Param(ckv_core::ParamError { name: "n_q_heads", .. }))
    ));
    assert!(matches!(
        PipelineConfig::new(3, 2, 8, sel.clone()).validate(),
        Err(AttnError::Param(ckv_core::ParamError { name: "n_q_heads", .. }))
    ));
    assert!(matches!(
        PipelineConfig::new(2, 0, 8, sel.clone()).validate(),
        Err(AttnError::Param(ckv_core::ParamError { .. }))
    ));
    assert!(matches!(
        PipelineConfig::new(2, 1, 0, sel.clone()).validate(),
        Err(AttnError::Param(ckv_core::ParamError { name: "head_dim", .. }))
    ));
    let tight = sel.clone().budget(40).sink(16).window(30);
    assert!(matches!(
        PipelineConfig::new(4, 2, 8, tight.clone()).validate(),
        Err(AttnError::Select(SelectError::Param(ckv_core::ParamError { name: "budget", .. })))
    ));
    assert!(PipelineConfig::new(4, 2, 8, tight.clone().max_context(40)).validate().is_ok());
    assert!(matches!(
        PipelineConfig::new(4, 2, 8, tight.max_context(41)).validate(),
        Err(AttnError::Select(SelectError::Param(ckv_core::ParamError { name: "budget", .. })))
    ));

    // A context beyond max_context: prefill and decode refuse it, nothing changes.
    let bounded = SelectParams::new(Method::ClusterKv).budget(64).sink(2).max_context(52);
    let mut layer = taken::<E>(device, hq, hkv, d, bounded);
    let big = SeqData::new(53, 0, hq, hkv, d, 9);
    assert_eq!(
        layer.prefill(big.prefill(), None).map(|_| ()),
        Err(AttnError::Select(SelectError::ContextTooLong { context: 53, max_context: 52 }))
    );
    let seq = layer.prefill(data.prefill(), None).unwrap();
    layer.decode(&[data.input(seq, 0)], &mut out).unwrap();
    layer.decode(&[data.input(seq, 1)], &mut out).unwrap();
    assert_eq!(
        layer.decode(&[data.input(seq, 2)], &mut out),
        Err(AttnError::Select(SelectError::ContextTooLong { context: 53, max_context: 52 }))
    );
    assert_eq!(layer.len(seq), Ok(52));
}
test_device!(
    bad_input_gets_typed_errors_and_changes_nothing::<f32>,
    bad_input_gets_typed_errors_and_changes_nothing_cpu,
    bad_input_gets_typed_errors_and_changes_nothing_cuda
);

/// Criterion 6a: prefill with queries writes dense causal attention over the stored KV,
/// computed here directly in f64, for prompts shorter and longer than a block of queries
/// (prefill runs on the CPU on every backend).
fn prefill_attention_is_dense_causal<E: Element>(device: &Device) {
    for (hq, hkv, d, prompt) in
        [(4usize, 2usize, 7usize, 40usize), (3, 1, 5, 23), (2, 2, 1, 9), (2, 1, 3, 150)]
    {
        let g = hq / hkv;
        let d = device.head_dim(g, d);
        for method in [Method::ClusterKv, Method::H2o, Method::Dense] {
            let select = SelectParams::new(method).budget(16).sink(2);
            let Some(mut layer) = pipeline::<E>(device, hq, hkv, d, select) else { continue };
            let data = SeqData::new(prompt, 0, hq, hkv, d, 50 + prompt as u64);
            let mut out = vec![f32::NAN; prompt * hq * d];
            let input = PrefillInput { queries: Some(&data.queries), ..data.prefill() };
            let seq = layer.prefill(input, Some(&mut out)).unwrap();
            assert_eq!(layer.len(seq), Ok(prompt));
            let scale = f64::from(layer.config().scale());
            for h in 0..hq {
                let kv = layer.kv(seq, h / g).unwrap();
                let (k, v): (Vec<f32>, Vec<f32>) = (
                    kv.keys().iter().map(|x| x.to_f32()).collect(),
                    kv.values().iter().map(|x| x.to_f32()).collect(),
                );
                for t in 0..prompt {
                    let q = &data.queries[(t * hq + h) * d..(t * hq + h + 1) * d];
                    let got = &out[(t * hq + h) * d..(t * hq + h + 1) * d];
                    let s: Vec<f64> = (0..=t)
                        .map(|r| {
                            scale * (0..d).map(|i| f64::from(q[i]) * f64::from(k[r * d + i])).sum::<f64>()
                        })
                        .collect();
                    let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = s.iter().map(|x| (x - max).exp()).sum();
                    for i in 0..d {
                        let want: f64 =
                            (0..=t).map(|r| (s[r] - max).exp() / z * f64::from(v[r * d + i])).sum();
                        assert!(
                            (f64::from(got[i]) - want).abs() <= 1e-5 * (1.0 + want.abs()),
                            "{device} {method} head {h} token {t} dim {i}: {} vs {want}",
                            got[i]
                        );
                    }
                }
            }
        }
    }
}
test_device!(
    prefill_attention_is_dense_causal::<f32>,
    prefill_attention_is_dense_causal_cpu,
    prefill_attention_is_dense_causal_cuda
);

/// Criterion 6b: a layer below `dense_layers` attends densely under a small budget, while
/// the same configuration at the first sparse layer selects.
fn dense_layers_attend_densely<E: Element>(device: &Device) {
    let (hq, hkv, prompt, steps) = (4usize, 2usize, 500usize, 3usize);
    let g = hq / hkv;
    let d = device.head_dim(g, 8);
    let data = SeqData::new(prompt, steps, hq, hkv, d, 60);
    let select = SelectParams::new(Method::ClusterKv).budget(64).sink(4);
    // Decodes `steps` tokens at layer `layer_no` of 2 dense layers; checks that the last
    // output is attention over exactly the last selection; returns it and the selections.
    let run = |layer_no: usize| {
        let config = PipelineConfig::new(hq, hkv, d, select.clone()).layer(layer_no, 2).validate().unwrap();
        let mut layer = device.layer::<E>(config).expect("every backend takes ClusterKV and dense layers");
        let seq = layer.prefill(data.prefill(), None).unwrap();
        let mut out = vec![0.0f32; hq * d];
        for i in 0..steps {
            layer.decode(&[data.input(seq, i)], &mut out).unwrap();
        }
        let mut probs = Vec::new();
        let mut selections = Vec::new();
        for h in 0..hq {
            let kv = layer.kv(seq, h / g).unwrap();
            let ids = layer.selection(seq, h).unwrap();
            let mut want = vec![0.0f32; d];
            let q = &data.step_q[steps - 1][h * d..(h + 1) * d];
            sparse_attention(
                q,
                d,
                kv.keys(),
                kv.values(),
                ids,
                layer.config().scale(),
                &mut probs,
                &mut want,
            );
            device.assert_close(&out[h * d..(h + 1) * d], &want, format_args!("layer {layer_no} head {h}"));
            selections.push(ids.to_vec());
        }
        (out, selections, layer.index(seq, 0).unwrap().is_some())
    };
    let (all_k, all_v) = data.all_kv(steps);
    let scale = 1.0 / (d as f32).sqrt();
    let mut dense_out = Vec::new();
    for layer_no in [0, 1] {
        let (out, selections, indexed) = run(layer_no);
        let all: Vec<u32> = (0..(prompt + steps) as u32).collect();
        assert!(selections.iter().all(|s| *s == all), "layer {layer_no} attends to every token");
        assert!(!indexed, "a dense layer keeps no cluster index");
        let mut probs = Vec::new();
        for h in 0..hq {
            let k = stored::<E>(&head_rows(&all_k, hkv, h / g, d));
            let v = stored::<E>(&head_rows(&all_v, hkv, h / g, d));
            let mut want = vec![0.0f32; d];
            dense_attention(
                &data.step_q[steps - 1][h * d..(h + 1) * d],
                d,
                &k,
                &v,
                scale,
                &mut probs,
                &mut want,
            );
            device.assert_close(&out[h * d..(h + 1) * d], &want, format_args!("layer {layer_no} head {h}"));
        }
        dense_out = out;
    }
    let (sparse_out, selections, indexed) = run(2);
    assert!(selections.iter().all(|s| s.len() == 64), "layer 2 selects under the budget");
    assert!(indexed);
    assert!(sparse_out != dense_out, "sparse and dense outputs differ");
}
test_device!(
    dense_layers_attend_densely::<f32>,
    dense_layers_attend_densely_cpu,
    dense_layers_attend_densely_cuda
);

/// f16 KV: a finite f32 key or value beyond the f16 range (65504) would become an infinity
/// in storage (silent NaN outputs, a failed k-means in the middle of a step). It is
/// rejected with a typed error naming the input, and the failed call changes nothing: the
/// sequence then decodes exactly as if it had never happened, re-clustering included.
fn f16_overflowing_inputs_are_rejected(device: &Device) {
    let (hq, hkv, window) = (2usize, 1usize, 8usize);
    let d = device.head_dim(hq / hkv, 4);
    let select = SelectParams::new(Method::ClusterKv).budget(32).sink(2).window(window);
    let steps = 2 * window + 1;
    let data = SeqData::new(50, steps, hq, hkv, d, 70);
    let mut big = data.step_k[0].clone();
    big[1] = 1.0e5;
    let mut big_v = data.step_v[0].clone();
    big_v[3] = -7.0e4;
    let mut bad_keys = data.keys.clone();
    bad_keys[9] = 7.0e4;
    let mut layer = taken::<f16>(device, hq, hkv, d, select.clone());
    let err = layer.prefill(PrefillInput { keys: &bad_keys, ..data.prefill() }, None).unwrap_err();
    assert!(matches!(err, AttnError::Value(ValueError::OutOfRange { what: "keys", index: 9, .. })), "{err}");
    // The same values are fine with f32 storage, where the backend takes f32 KV.
    if let Some(mut wide) = pipeline::<f32>(device, hq, hkv, d, select.clone()) {
        wide.prefill(PrefillInput { keys: &bad_keys, ..data.prefill() }, None).unwrap();
    }

    let mut layer = taken::<f16>(device, hq, hkv, d, select.clone());
    let mut reference = taken::<f16>(device, hq, hkv, d, select);
    let seq = layer.prefill(data.prefill(), None).unwrap();
    let ref_seq = reference.prefill(data.prefill(), None).unwrap();
    let (mut out, mut want) = (vec![0.0f32; hq * d], vec![0.0f32; hq * d]);
    let mut rejected = 0;
    for i in 0..steps {
        // Before every step, and in particular before the re-clustering ones, try bad rows.
        for bad in [
            DecodeInput { key: &big, ..data.input(seq, i) },
            DecodeInput { value: &big_v, ..data.input(seq, i) },
        ] {
            let len = layer.len(seq).unwrap();
            let err = layer.decode(&[bad], &mut out).unwrap_err();
            let what = if bad.key == &big[..] { "key" } else { "value" };
            assert!(
                matches!(err, AttnError::Value(ValueError::OutOfRange { what: w, .. }) if w == what),
                "{err}"
            );
            assert_eq!(layer.len(seq), Ok(len), "failed decode ({err}) changed the sequence");
            rejected += 1;
        }
        layer.decode(&[data.input(seq, i)], &mut out).unwrap();
        reference.decode(&[data.input(ref_seq, i)], &mut want).unwrap();
        device.assert_close(&out, &want, format_args!("step {i}"));
        assert_eq!(layer.selection(seq, 0).unwrap(), reference.selection(ref_seq, 0).unwrap(), "step {i}");
    }
    assert_eq!(rejected, 2 * steps);
    assert_eq!(layer.regions(seq), reference.regions(ref_seq));
}
test_device!(
    f16_overflowing_inputs_are_rejected,
    f16_overflowing_inputs_are_rejected_cpu,
    f16_overflowing_inputs_are_rejected_cuda
);

/// An empty prompt is legal: every method then decodes densely from the first token on,
/// for as long as the context fits the budget.
fn empty_prompt_decodes_densely<E: Element>(device: &Device) {
    let (hq, hkv, steps) = (4usize, 2usize, 20usize);
    let g = hq / hkv;
    let d = device.head_dim(g, 5);
    let data = SeqData::new(0, steps, hq, hkv, d, 90);
    for method in Method::ALL {
        let select = SelectParams::new(method).budget(32).sink(4).window(6);
        let Some(mut layer) = pipeline::<E>(device, hq, hkv, d, select) else { continue };
        let seq = layer.prefill(data.prefill(), None).unwrap();
        assert_eq!(layer.len(seq), Ok(0));
        let mut out = vec![0.0f32; hq * d];
        let mut probs = Vec::new();
        for i in 0..steps {
            layer.decode(&[data.input(seq, i)], &mut out).unwrap();
            let (all_k, all_v) = data.all_kv(i + 1);
            for h in 0..hq {
                assert_eq!(layer.selection(seq, h).unwrap(), &(0..=i as u32).collect::<Vec<_>>()[..]);
                let k = stored::<E>(&head_rows(&all_k, hkv, h / g, d));
                let v = stored::<E>(&head_rows(&all_v, hkv, h / g, d));
                let mut want = vec![0.0f32; d];
                let q = &data.step_q[i][h * d..(h + 1) * d];
                dense_attention(q, d, &k, &v, layer.config().scale(), &mut probs, &mut want);
                device.assert_close(
                    &out[h * d..(h + 1) * d],
                    &want,
                    format_args!("{method} step {i} head {h}"),
                );
            }
        }
        // Windows of 6 after the sink of 4: [4, 10) and [10, 16) were clustered.
        assert_eq!(layer.regions(seq).unwrap().clustered(), 4..16, "{method}");
    }
}
test_device!(
    empty_prompt_decodes_densely::<f32>,
    empty_prompt_decodes_densely_cpu,
    empty_prompt_decodes_densely_cuda
);

/// A prompt given in chunks through `add_sequence` / `extend` / `finish_prefill` gives
/// bitwise the outputs (prefill runs on the CPU on every backend), the H2O scores (so the
/// later selections) and the decode steps of one `prefill`; out-of-order calls are typed
/// errors.
fn chunked_prefill_is_bitwise_one_prefill<E: Element>(device: &Device) {
    let (hq, hkv, prompt) = (4, 2, 300);
    let d = device.head_dim(hq / hkv, 8);
    let data = SeqData::new(prompt, 6, hq, hkv, d, 91);
    for method in [Method::ClusterKv, Method::H2o] {
        let select = SelectParams::new(method).budget(64).sink(4);
        let Some(mut whole) = pipeline::<E>(device, hq, hkv, d, select.clone()) else { continue };
        let mut whole_out = vec![0.0f32; prompt * hq * d];
        let input = PrefillInput { queries: Some(&data.queries), ..data.prefill() };
        let a = whole.prefill(input, Some(&mut whole_out)).unwrap();
        let mut chunked = taken::<E>(device, hq, hkv, d, select);
        let b = chunked.add_sequence().unwrap();
        let mut chunked_out = vec![0.0f32; prompt * hq * d];
        let mut start = 0;
        for n in [1, 99, 150, 50] {
            let (kv, q) = (start * hkv * d..(start + n) * hkv * d, start * hq * d..(start + n) * hq * d);
            let chunk = PrefillInput {
                keys: &data.keys[kv.clone()],
                values: &data.values[kv],
                queries: Some(&data.queries[q.clone()]),
            };
            chunked.extend(b, chunk, Some(&mut chunked_out[q])).unwrap();
            start += n;
        }
        let mut out = vec![0.0f32; hq * d];
        assert_eq!(chunked.decode(&[data.input(b, 0)], &mut out), Err(AttnError::InPrefill(b)));
        chunked.finish_prefill(b).unwrap();
        assert_eq!(bits(&whole_out), bits(&chunked_out), "{method}: prefill outputs");
        assert_eq!(chunked.finish_prefill(b), Err(AttnError::PrefillClosed(b)));
        assert_eq!(chunked.extend(b, data.prefill(), None), Err(AttnError::PrefillClosed(b)));
        let mut other = vec![0.0f32; hq * d];
        for i in 0..6 {
            whole.decode(&[data.input(a, i)], &mut out).unwrap();
            chunked.decode(&[data.input(b, i)], &mut other).unwrap();
            device.assert_close(&other, &out, format_args!("{method}: decode step {i}"));
            assert_eq!(whole.selection(a, 1).unwrap(), chunked.selection(b, 1).unwrap());
        }
    }
}
test_device!(
    chunked_prefill_is_bitwise_one_prefill::<f32>,
    chunked_prefill_is_bitwise_one_prefill_cpu,
    chunked_prefill_is_bitwise_one_prefill_cuda
);

/// One dense prefill serves every method: a sequence restored from a snapshot of a dense
/// pipeline's prefill decodes (bitwise on the CPU) as one prefilled by the method itself
/// (H2O included, whose selection depends on the prompt's attention).
fn restored_snapshots_decode_like_their_own_prefill(device: &Device) {
    let (hq, hkv, prompt, steps) = (4usize, 2usize, 700usize, 40usize);
    let d = device.head_dim(hq / hkv, 8);
    let data = SeqData::new(prompt, steps, hq, hkv, d, 90);
    let with_queries = || PrefillInput { queries: Some(&data.queries), ..data.prefill() };
    let select = |method| SelectParams::new(method).budget(96).sink(4).window(30).seed(3);
    let mut dense = taken::<f16>(device, hq, hkv, d, select(Method::Dense));
    let dense_seq = dense.add_sequence().unwrap();
    let mut prefill_out = vec![0.0f32; prompt * hq * d];
    let (first, rest) = (prompt / 3, prompt - prompt / 3);
    let chunk = |range: std::ops::Range<usize>| {
        let (kv, q) = (hkv * d, hq * d);
        PrefillInput {
            keys: &data.keys[range.start * kv..range.end * kv],
            values: &data.values[range.start * kv..range.end * kv],
            queries: Some(&data.queries[range.start * q..range.end * q]),
        }
    };
    let (a, b) = prefill_out.split_at_mut(first * hq * d);
    dense.extend(dense_seq, chunk(0..first), Some(a)).unwrap();
    dense.extend(dense_seq, chunk(first..first + rest), Some(b)).unwrap();
    let snapshot = dense.snapshot(dense_seq).unwrap();
    assert_eq!(snapshot.len(), prompt);
    for method in Method::ALL {
        let Some(mut own) = pipeline::<f16>(device, hq, hkv, d, select(method)) else { continue };
        let mut own_out = vec![0.0f32; prompt * hq * d];
        let own_seq = own.prefill(with_queries(), Some(&mut own_out)).unwrap();
        let err = rel_err(&own_out, &prefill_out);
        assert!(err < 1e-6, "{method}: chunked prefill differs by {err}");
        let mut restored = taken::<f16>(device, hq, hkv, d, select(method));
        let seq = restored.restore(&snapshot).unwrap();
        restored.finish_prefill(seq).unwrap();
        let (mut x, mut y) = (vec![0.0f32; hq * d], vec![0.0f32; hq * d]);
        for i in 0..steps {
            own.decode(&[data.input(own_seq, i)], &mut x).unwrap();
            restored.decode(&[data.input(seq, i)], &mut y).unwrap();
            device.assert_close(&y, &x, format_args!("{method} step {i}"));
            assert_eq!(own.selection(own_seq, 1).unwrap(), restored.selection(seq, 1).unwrap());
        }
    }
    // A snapshot is of a sequence in prefill, into a pipeline of the same shape.
    let mut other = taken::<f16>(device, hq, 1, d, select(Method::ClusterKv));
    assert!(matches!(
        other.restore(&snapshot),
        Err(AttnError::Param(ckv_core::ParamError { name: "snapshot", .. }))
    ));
    dense.finish_prefill(dense_seq).unwrap();
    assert_eq!(dense.snapshot(dense_seq).unwrap_err(), AttnError::PrefillClosed(dense_seq));
}
test_device!(
    restored_snapshots_decode_like_their_own_prefill,
    restored_snapshots_decode_like_their_own_prefill_cpu,
    restored_snapshots_decode_like_their_own_prefill_cuda
);

/// Whether `device`'s selection `got` for `q_head` of `seq` differs from the CPU
/// reference's `want` only by near ties at the cut. Another backend scores `q · centroid`
/// in f32 in another order than the CPU (whose own order depends on its SIMD level: AVX-512,
/// AVX2 or portable), so two clusters whose scores are within rounding of each other may
/// rank either way. Any f32 sum of the d products of `q · c` is within `e = γ_d · Σ|q_i c_i|`
/// of the exact value (γ_d = d·u / (1 - d·u), u = 2^-24; FMA or not, in any order), so a
/// cluster swapped across the cut scores, exactly, within `4e` (e the largest over the
/// head's clusters) of the cluster the CPU cut: both sides' orders disagree on it and the
/// cut only by their rounding. Same count, every differing id in such a cluster.
fn near_tie_at_the_cut(
    reference: &LayerPipeline<f16>,
    seq: SeqId,
    q_head: usize,
    query: &[f32],
    want: &[u32],
    got: &[u32],
) -> Result<(), String> {
    let cfg = reference.config();
    let (g, d) = (cfg.group(), cfg.head_dim());
    let index = reference.index(seq, q_head / g).unwrap().ok_or("a selection differs without an index")?;
    // The selection's query: the group's rows summed in order (PerKvHead), as both sides
    // sum them, or the head's own row.
    let rows = match cfg.select().gqa() {
        GqaPolicy::PerKvHead => q_head / g * g..(q_head / g + 1) * g,
        GqaPolicy::PerQueryHead => q_head..q_head + 1,
    };
    let mut q = vec![0.0f32; d];
    for row in query[rows.start * d..rows.end * d].chunks_exact(d) {
        q.iter_mut().zip(row).for_each(|(s, x)| *s += x);
    }
    let c = index.n_clusters();
    let centroid = |k: usize| index.centroids_f16()[k * d..(k + 1) * d].iter().map(|x| f64::from(x.to_f32()));
    let exact: Vec<f64> = (0..c).map(|k| centroid(k).zip(&q).map(|(a, &b)| a * f64::from(b)).sum()).collect();
    let size: f64 =
        (0..c).map(|k| centroid(k).zip(&q).map(|(a, &b)| (a * f64::from(b)).abs()).sum()).fold(0.0, f64::max);
    let u = f64::powi(2.0, -24);
    let bound = 4.0 * (d as f64 * u / (1.0 - d as f64 * u)) * size;
    // The CPU's cut: of the clusters its selection touches, the last in its ranking (its
    // own f32 scores; score descending under total_cmp, ties to the lower id).
    let mut cpu = Vec::new();
    ckv_core::score_rows(&q, d, index.centroids_f16(), 0..c, 1.0, &mut cpu);
    let mut cluster_of = std::collections::HashMap::new();
    for k in 0..c {
        cluster_of.extend(index.members_of(k).iter().map(|&t| (t, k)));
    }
    let cut = want
        .iter()
        .filter_map(|t| cluster_of.get(t).copied())
        .min_by(|&a, &b| cpu[a].total_cmp(&cpu[b]).then(b.cmp(&a)))
        .ok_or("the CPU selected no clustered token")?;
    if want.len() != got.len() {
        return Err(format!("{} ids against the CPU's {}", got.len(), want.len()));
    }
    let differing = want.iter().filter(|t| got.binary_search(t).is_err());
    for &t in differing.chain(got.iter().filter(|t| want.binary_search(t).is_err())) {
        let k = *cluster_of.get(&t).ok_or(format!("token {t} differs outside the clusters"))?;
        let gap = (exact[k] - exact[cut]).abs();
        if gap > bound {
            return Err(format!(
                "token {t} of cluster {k} differs, {gap} from the cut (cluster {cut}) > {bound}"
            ));
        }
    }
    Ok(())
}

/// The pipeline on `device` against the CPU reference pipeline (`LayerPipeline::new`): a
/// batch of two sequences of different lengths, enough steps to cluster tail windows,
/// ClusterKV and dense under both GQA policies, in layer shapes every backend takes. On the
/// CPU the same selections and bitwise outputs. Elsewhere the same selections up to swaps
/// of near ties at the cut ([`near_tie_at_the_cut`]; a head whose selection differs is held
/// to the CPU's attention over the backend's selection), outputs within the backend's
/// tolerance.
fn decode_matches_the_cpu_reference_pipeline(device: &Device) {
    proptest!(ProptestConfig::with_cases(8), |(
        method in prop::sample::select(vec![Method::ClusterKv, Method::ClusterKv, Method::Dense]),
        gqa in prop::sample::select(POLICIES.to_vec()),
        budget in prop::sample::select(vec![64usize, 300, 1024, 5000]),
        shape in prop::sample::select(vec![(8usize, 2usize, 128usize), (9, 3, 64), (4, 4, 64)]),
        seed in 0u64..1000,
    )| {
        let (hq, hkv, d) = shape;
        let (prompts, steps) = ([1500usize, 700], 300);
        let select = SelectParams::new(method).budget(budget).gqa(gqa).seed(seed);
        let config = PipelineConfig::new(hq, hkv, d, select).validate().unwrap();
        let mut reference = LayerPipeline::<f16>::new(config.clone());
        let mut layer = device.layer::<f16>(config).expect("every backend takes ClusterKV and dense layers");
        let data: Vec<SeqData> =
            prompts.iter().enumerate().map(|(i, &p)| SeqData::new(p, steps, hq, hkv, d, 2 * seed + i as u64)).collect();
        let seqs: Vec<(SeqId, SeqId)> = data
            .iter()
            .map(|s| (reference.prefill(s.prefill(), None).unwrap(), layer.prefill(s.prefill(), None).unwrap()))
            .collect();
        let width = hq * d;
        let (mut want, mut got) = (vec![0.0f32; 2 * width], vec![0.0f32; 2 * width]);
        // A backend whose outputs are bitwise the CPU's runs the CPU's arithmetic: its
        // selections match exactly.
        let exact = device.close(&[1.0], &[1.0 + f32::EPSILON]).is_err();
        for step in 0..steps {
            let batch = |on_device: bool| -> Vec<DecodeInput<'_>> {
                data.iter().zip(&seqs).map(|(s, &(r, l))| s.input(if on_device { l } else { r }, step)).collect()
            };
            reference.decode(&batch(false), &mut want).unwrap();
            layer.decode(&batch(true), &mut got).unwrap();
            for (b, &(r, l)) in seqs.iter().enumerate() {
                let range = b * width..(b + 1) * width;
                for q in 0..hq {
                    let (cpu, other) = (reference.selection(r, q).unwrap(), layer.selection(l, q).unwrap());
                    if exact || cpu == other {
                        prop_assert_eq!(cpu, other, "step {} sequence {} query head {}", step, b, q);
                        continue;
                    }
                    let query = &data[b].step_q[step];
                    near_tie_at_the_cut(&reference, r, q, query, cpu, other)
                        .map_err(|e| TestCaseError::fail(format!("step {step} sequence {b} query head {q}: {e}")))?;
                    let kv = reference.kv(r, q / (hq / hkv)).unwrap();
                    let (mut probs, head) = (Vec::new(), &mut want[range.start + q * d..range.start + (q + 1) * d]);
                    let scale = reference.config().scale();
                    sparse_attention(&query[q * d..(q + 1) * d], d, kv.keys(), kv.values(), other, scale, &mut probs, head);
                }
                prop_close(device, &got[range.clone()], &want[range], format_args!("step {step} sequence {b}"))?;
            }
        }
    });
}
test_device!(
    decode_matches_the_cpu_reference_pipeline,
    decode_matches_the_cpu_reference_pipeline_cpu,
    decode_matches_the_cpu_reference_pipeline_cuda
);

/// Offload on `device` (on the GPU: host KV in pinned memory, the device tier swapped by
/// `tier.cu`): outputs are bitwise those of the same backend without offload (offload moves
/// rows, not arithmetic); the tier holds what the CPU reference's tier holds after every
/// step, and counts the same traffic.
fn offload_changes_no_output_and_keeps_the_cpu_tier(device: &Device) {
    proptest!(ProptestConfig::with_cases(6), |(
        method in prop::sample::select(vec![Method::ClusterKv, Method::ClusterKv, Method::Dense]),
        gqa in prop::sample::select(POLICIES.to_vec()),
        budget in prop::sample::select(vec![64usize, 300, 5000]),
        reuse in 1usize..5,
        seed in 0u64..1000,
    )| {
        let (hq, hkv, d, prompt, steps) = (8, 2, 128, 900, 120);
        let select = SelectParams::new(method).budget(budget).gqa(gqa).seed(seed);
        let plain = PipelineConfig::new(hq, hkv, d, select.clone()).validate().unwrap();
        let offload =
            PipelineConfig::new(hq, hkv, d, select).offload(OffloadParams::new(reuse).unwrap()).validate().unwrap();
        let taken = "every backend takes ClusterKV and dense layers, offloaded or not";
        let mut layers = [
            device.layer::<f16>(plain).expect(taken),
            device.layer::<f16>(offload.clone()).expect(taken),
            LayerPipeline::<f16>::new(offload),
        ];
        let data = SeqData::new(prompt, steps, hq, hkv, d, seed);
        let seqs: Vec<SeqId> = layers.iter_mut().map(|l| l.prefill(data.prefill(), None).unwrap()).collect();
        let mut outs = vec![vec![0.0f32; hq * d]; 3];
        for step in 0..steps {
            for ((layer, &seq), out) in layers.iter_mut().zip(&seqs).zip(&mut outs) {
                layer.decode(&[data.input(seq, step)], out).unwrap();
            }
            prop_assert_eq!(bits(&outs[0]), bits(&outs[1]), "step {}: offload changed the output", step);
            prop_close(device, &outs[1], &outs[2], format_args!("step {step}: against the CPU with offload"))?;
            for q in 0..hq {
                prop_assert_eq!(layers[1].selection(seqs[1], q).unwrap(), layers[2].selection(seqs[2], q).unwrap());
            }
            for h in 0..hkv {
                prop_assert_eq!(
                    layers[1].resident(seqs[1], h).unwrap(),
                    layers[2].resident(seqs[2], h).unwrap(),
                    "step {} head {}", step, h
                );
            }
        }
        for h in 0..hkv {
            prop_assert_eq!(layers[1].offload_stats(seqs[1], h).unwrap(), layers[2].offload_stats(seqs[2], h).unwrap());
        }
        prop_assert!(layers[0].offload_stats(seqs[0], 0).unwrap().is_none());
    });
}
test_device!(
    offload_changes_no_output_and_keeps_the_cpu_tier,
    offload_changes_no_output_and_keeps_the_cpu_tier_cpu,
    offload_changes_no_output_and_keeps_the_cpu_tier_cuda
);

/// Decodes a few steps of `config` with `E` KV on `device` and on the CPU reference: the same
/// selections, outputs within the backend's tolerance. Where the backend's contract refuses
/// `config`, checks that it refused it by name instead ([`Device::layer`]).
fn runs_or_is_refused_by_name<E: Element>(device: &Device, config: PipelineConfig) {
    let config = config.validate().unwrap();
    let (hq, hkv, d) = (config.n_q_heads(), config.n_kv_heads(), config.head_dim());
    let Some(mut layer) = device.layer::<E>(config.clone()) else { return };
    let mut reference = LayerPipeline::<E>::new(config);
    let data = SeqData::new(300, 3, hq, hkv, d, 17);
    let (a, b) =
        (layer.prefill(data.prefill(), None).unwrap(), reference.prefill(data.prefill(), None).unwrap());
    let (mut got, mut want) = (vec![0.0f32; hq * d], vec![0.0f32; hq * d]);
    for i in 0..3 {
        layer.decode(&[data.input(a, i)], &mut got).unwrap();
        reference.decode(&[data.input(b, i)], &mut want).unwrap();
        device.assert_close(&got, &want, format_args!("{hq} x {hkv} x {d}, {} KV, step {i}", E::NAME));
        assert_eq!(layer.selection(a, 0).unwrap(), reference.selection(b, 0).unwrap());
    }
}

/// Every backend takes what its contract lists and refuses the rest with a typed error
/// naming the setting and its value (the CPU takes everything; the GPU refuses other
/// methods than dense and ClusterKV, a mass target, f32 KV, shapes its kernels do not
/// instantiate and an odd head dimension with offload).
fn every_configuration_runs_or_is_refused_by_name(device: &Device) {
    let clusterkv = || SelectParams::new(Method::ClusterKv).budget(128);
    let mass = clusterkv().budget_rule(Budget::Mass { p: 0.9, max: 512 });
    let offload = OffloadParams::new(2).unwrap();
    runs_or_is_refused_by_name::<f16>(device, PipelineConfig::new(8, 2, 128, clusterkv()));
    runs_or_is_refused_by_name::<f16>(
        device,
        PipelineConfig::new(4, 4, 64, SelectParams::new(Method::Dense)),
    );
    runs_or_is_refused_by_name::<f16>(
        device,
        PipelineConfig::new(8, 2, 128, clusterkv().method(Method::Quest)),
    );
    runs_or_is_refused_by_name::<f32>(device, PipelineConfig::new(8, 2, 128, clusterkv()));
    runs_or_is_refused_by_name::<f16>(device, PipelineConfig::new(5, 1, 96, clusterkv()));
    runs_or_is_refused_by_name::<f16>(device, PipelineConfig::new(8, 2, 128, mass));
    runs_or_is_refused_by_name::<f16>(device, PipelineConfig::new(4, 2, 64, clusterkv()).offload(offload));
    runs_or_is_refused_by_name::<f16>(device, PipelineConfig::new(4, 2, 7, clusterkv()).offload(offload));
}
test_device!(
    every_configuration_runs_or_is_refused_by_name,
    every_configuration_runs_or_is_refused_by_name_cpu,
    every_configuration_runs_or_is_refused_by_name_cuda
);
