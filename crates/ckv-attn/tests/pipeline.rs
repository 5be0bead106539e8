//! `LayerPipeline` behaviour end to end: exactness when the budget covers the context, the
//! re-clustering schedule, batching, determinism across rayon pools, typed errors, prefill
//! attention and dense layers (DESIGN section 4).

use ckv_attn::{
    AttnError, DecodeInput, LayerPipeline, PipelineConfig, PrefillInput, SeqId, dense_attention,
    sparse_attention,
};
use ckv_cluster::{Element, ValueError};
use ckv_select::{GqaPolicy, Method, SelectError, SelectParams};
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

/// `max |a - b| / max |b|`.
fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let diff = a.iter().zip(b).map(|(x, y)| f64::from((x - y).abs())).fold(0.0, f64::max);
    let scale = b.iter().map(|y| f64::from(y.abs())).fold(0.0, f64::max);
    if diff == 0.0 { 0.0 } else { diff / scale.max(f64::MIN_POSITIVE) }
}

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

    fn prefill(&self) -> PrefillInput<'_> {
        PrefillInput { keys: &self.keys, values: &self.values, queries: None }
    }

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

fn pipeline<E: Element>(hq: usize, hkv: usize, d: usize, select: SelectParams) -> LayerPipeline<E> {
    LayerPipeline::new(PipelineConfig::new(hq, hkv, d, select).validate().unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Criterion 1: with `B >= t + 1`, every method under both GQA policies decodes exactly
    /// the dense attention over all `t + 1` tokens (f32 KV), for odd head dimensions, every
    /// head layout and contexts up to 3000.
    #[test]
    fn decode_is_dense_when_the_budget_covers_the_context(
        heads in 0..HEADS.len(),
        half_d in 0usize..=8,
        t in 0usize..=3000,
        sink in 0usize..=20,
        extra in 0usize..=20,
        bounded in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let (hq, hkv) = HEADS[heads];
        let d = 2 * half_d + 1;
        let g = hq / hkv;
        let data = SeqData::new(t, 1, hq, hkv, d, seed);
        let (all_k, all_v) = data.all_kv(1);
        let budget = (t + 1).max(sink + 2) + extra;
        for method in Method::ALL {
            for gqa in POLICIES {
                let mut select = SelectParams::new(method).budget(budget).sink(sink).gqa(gqa).seed(seed);
                if bounded {
                    select = select.max_context(t + 1);
                }
                let mut layer = pipeline::<f32>(hq, hkv, d, select);
                let seq = layer.prefill(data.prefill(), None).unwrap();
                let mut out = vec![0.0f32; hq * d];
                layer.decode(&[data.input(seq, 0)], &mut out).unwrap();
                prop_assert_eq!(layer.len(seq).unwrap(), t + 1);
                let scale = layer.config().scale();
                let mut probs = Vec::new();
                for h in 0..hq {
                    let (k, v) = (head_rows(&all_k, hkv, h / g, d), head_rows(&all_v, hkv, h / g, d));
                    prop_assert_eq!(layer.kv(seq, h / g).unwrap().keys(), &k[..]);
                    let mut want = vec![0.0f32; d];
                    dense_attention(&data.step_q[0][h * d..(h + 1) * d], d, &k, &v, scale, &mut probs, &mut want);
                    let err = rel_err(&out[h * d..(h + 1) * d], &want);
                    prop_assert!(err <= 1e-6, "{} {} head {}: relative error {}", method, gqa, h, err);
                    prop_assert_eq!(layer.selection(seq, h).unwrap(), &(0..=t as u32).collect::<Vec<_>>()[..]);
                }
            }
        }
    }
}

/// Checks the re-clustering schedule of one configuration (criterion 2).
fn check_reclustering(prompt: usize, sink: usize, window: usize, window_clusters: usize, hkv: usize) {
    let (hq, d, tpc) = (2 * hkv, 6, 50);
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
    let mut layer = pipeline::<f32>(hq, hkv, d, select);
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
#[test]
fn tail_is_reclustered_exactly_every_window() {
    check_reclustering(500, 16, 24, 3, 2);
    check_reclustering(333, 5, 17, 4, 1);
    check_reclustering(90, 4, 10, 1, 3);
    // A prompt shorter than the sink: the first window starts at s.
    check_reclustering(7, 12, 9, 2, 2);
}

/// `LayerPipeline::regions` right after prefill describes the step at position `P`: `[s, P)`
/// clustered, empty tail.
#[test]
fn regions_after_prefill_describe_the_step_at_p() {
    let select = SelectParams::new(Method::ClusterKv).budget(64).sink(4);
    let mut layer = pipeline::<f32>(2, 1, 4, select);
    let data = SeqData::new(100, 0, 2, 1, 4, 3);
    let seq = layer.prefill(data.prefill(), None).unwrap();
    let regions = layer.regions(seq).unwrap();
    assert_eq!(regions.current(), 100);
    assert_eq!(regions.sink(), 0..4);
    assert_eq!(regions.clustered(), 4..100);
    assert!(regions.tail().is_empty());
    assert_eq!(layer.index(seq, 0).unwrap().map(|i| i.n_tokens()), Some(96));
}

/// Outputs of every step of several sequences decoded together.
type Trace = Vec<Vec<Vec<u32>>>;

/// Criterion 3: a batch of sequences of prompt lengths 100, 5000 and 17 decoded together
/// gives bitwise the outputs of each decoded alone (f16 KV, ClusterKV under a small budget).
#[test]
fn batch_decoding_is_bitwise_per_sequence_decoding() {
    let (hq, hkv, d, steps) = (4usize, 2usize, 9usize, 36usize);
    let prompts = [100usize, 5000, 17];
    let budget = 64;
    let select = || SelectParams::new(Method::ClusterKv).budget(budget).sink(4).max_iters(10).seed(5);
    let data: Vec<SeqData> = prompts
        .iter()
        .enumerate()
        .map(|(i, &p)| SeqData::new(p, steps, hq, hkv, d, 1000 + i as u64))
        .collect();

    // Together, in one batch whose order rotates from step to step.
    let mut layer = pipeline::<f16>(hq, hkv, d, select());
    let ids: Vec<SeqId> = data.iter().map(|s| layer.prefill(s.prefill(), None).unwrap()).collect();
    let mut together: Trace = vec![Vec::new(); prompts.len()];
    let mut out = vec![0.0f32; prompts.len() * hq * d];
    for i in 0..steps {
        let order: Vec<usize> = (0..prompts.len()).map(|j| (j + i) % prompts.len()).collect();
        let batch: Vec<DecodeInput<'_>> = order.iter().map(|&j| data[j].input(ids[j], i)).collect();
        layer.decode(&batch, &mut out).unwrap();
        for (b, &j) in order.iter().enumerate() {
            together[j].push(bits(&out[b * hq * d..(b + 1) * hq * d]));
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
        let mut own = pipeline::<f16>(hq, hkv, d, select());
        let seq = own.prefill(s.prefill(), None).unwrap();
        let mut outs = Vec::new();
        for i in 0..steps {
            own.decode(&[s.input(seq, i)], &mut single).unwrap();
            outs.push(bits(&single));
        }
        alone.push(outs);
    }
    // One by one in a shared pipeline.
    let mut shared = pipeline::<f16>(hq, hkv, d, select());
    let ids2: Vec<SeqId> = data.iter().map(|s| shared.prefill(s.prefill(), None).unwrap()).collect();
    let mut one_by_one: Trace = vec![Vec::new(); prompts.len()];
    for i in 0..steps {
        for j in (0..prompts.len()).rev() {
            shared.decode(&[data[j].input(ids2[j], i)], &mut single).unwrap();
            one_by_one[j].push(bits(&single));
        }
    }
    for j in 0..prompts.len() {
        assert!(together[j] == alone[j], "seq of prompt {}: batch differs from alone", prompts[j]);
        assert!(together[j] == one_by_one[j], "seq of prompt {}: batch differs from one by one", prompts[j]);
        assert_eq!(layer.index(ids[j], 1).unwrap(), shared.index(ids2[j], 1).unwrap());
    }
    assert!(together[0] != together[1], "different sequences give different outputs");
}

/// Runs prefill (with queries for the short prompt) and decode steps of two sequences.
fn run_two_sequences(method: Method, gqa: GqaPolicy) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
    let (hq, hkv, d, steps) = (8usize, 2usize, 16usize, 40usize);
    let select = SelectParams::new(method).budget(96).sink(4).window(30).window_clusters(2).gqa(gqa).seed(8);
    let mut layer = pipeline::<f16>(hq, hkv, d, select);
    let long = SeqData::new(3000, steps, hq, hkv, d, 31);
    let short = SeqData::new(300, steps, hq, hkv, d, 32);
    let a = layer.prefill(long.prefill(), None).unwrap();
    let mut prefill_out = vec![0.0f32; 300 * hq * d];
    let b = layer
        .prefill(PrefillInput { queries: Some(&short.queries), ..short.prefill() }, Some(&mut prefill_out))
        .unwrap();
    let mut outs = vec![bits(&prefill_out)];
    let mut selections = Vec::new();
    let mut out = vec![0.0f32; 2 * hq * d];
    for i in 0..steps {
        layer.decode(&[long.input(a, i), short.input(b, i)], &mut out).unwrap();
        outs.push(bits(&out));
        for h in 0..hq {
            selections.push(layer.selection(a, h).unwrap().to_vec());
            selections.push(layer.selection(b, h).unwrap().to_vec());
        }
    }
    (outs, selections)
}

/// Criterion 4: identical outputs and selections in rayon pools of 1 and 2 threads.
#[test]
fn outputs_are_identical_across_thread_counts() {
    for (method, gqa) in [
        (Method::ClusterKv, GqaPolicy::PerQueryHead),
        (Method::ClusterKv, GqaPolicy::PerKvHead),
        (Method::H2o, GqaPolicy::PerKvHead),
    ] {
        let in_pool = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| run_two_sequences(method, gqa))
        };
        let (one, two) = (in_pool(1), in_pool(2));
        assert!(one.1.iter().all(|s| s.len() == 96), "{method}: selection active");
        assert!(one == two, "{method} {gqa}: 1 thread vs 2 threads");
    }
}

/// A small pipeline with one sequence of prompt `prompt`.
fn small_layer(prompt: usize) -> (LayerPipeline<f32>, SeqId, SeqData) {
    let (hq, hkv, d) = (4, 2, 3);
    let select = SelectParams::new(Method::ClusterKv).budget(32).sink(2).window(8);
    let mut layer = pipeline::<f32>(hq, hkv, d, select);
    let data = SeqData::new(prompt, 4, hq, hkv, d, 5);
    let seq = layer.prefill(data.prefill(), None).unwrap();
    (layer, seq, data)
}

/// Criterion 5: every bad input gets its typed error, and a failed decode changes nothing.
#[test]
fn bad_input_gets_typed_errors_and_changes_nothing() {
    let (hq, hkv, d) = (4usize, 2usize, 3usize);
    let (mut layer, seq, data) = small_layer(50);
    let other = layer.prefill(data.prefill(), None).unwrap();
    let good = data.input(seq, 0);
    let mut out = vec![0.0f32; hq * d];
    let shape = |what: &'static str, expected: usize, given: usize| {
        Err(AttnError::Value(ValueError::Shape { what, expected, given }))
    };

    // Shapes of query, key, value and out.
    let short = vec![0.5f32; hq * d - 1];
    assert_eq!(layer.decode(&[DecodeInput { query: &short, ..good }], &mut out), shape("query", 12, 11));
    assert_eq!(layer.decode(&[DecodeInput { key: &short[..5], ..good }], &mut out), shape("key", 6, 5));
    assert_eq!(layer.decode(&[DecodeInput { value: &short, ..good }], &mut out), shape("value", 6, 11));
    assert_eq!(layer.decode(&[good], &mut out[..11]), shape("out", 12, 11));
    let mut two = vec![0.0f32; 2 * hq * d];
    assert_eq!(layer.decode(&[good], &mut two), shape("out", 12, 24));
    // Prefill shapes.
    let k = uniform(10 * hkv * d, 1);
    let bad_prefill = |layer: &mut LayerPipeline<f32>, input: PrefillInput<'_>, out: Option<&mut [f32]>| {
        layer.prefill(input, out).map(|_| ()).unwrap_err()
    };
    assert_eq!(
        bad_prefill(&mut layer, PrefillInput { keys: &k[..59], values: &k[..59], queries: None }, None),
        AttnError::Value(ValueError::Shape { what: "keys", expected: 54, given: 59 })
    );
    assert_eq!(
        bad_prefill(&mut layer, PrefillInput { keys: &k, values: &k[..54], queries: None }, None),
        AttnError::Value(ValueError::Shape { what: "values", expected: 60, given: 54 })
    );
    let q = uniform(10 * hq * d, 2);
    assert_eq!(
        bad_prefill(&mut layer, PrefillInput { keys: &k, values: &k, queries: Some(&q[..100]) }, None),
        AttnError::Value(ValueError::Shape { what: "queries", expected: 120, given: 100 })
    );
    let mut pout = vec![0.0f32; 119];
    assert_eq!(
        bad_prefill(&mut layer, PrefillInput { keys: &k, values: &k, queries: Some(&q) }, Some(&mut pout)),
        AttnError::Value(ValueError::Shape { what: "out", expected: 120, given: 119 })
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
    let mut pout = vec![0.0f32; 120];
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
    let mut pair = vec![0.0f32; 2 * hq * d];
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
    assert!(matches!(layer.kv(seq, hkv), Err(AttnError::InvalidConfig { name: "kv_head", .. })));
    assert!(matches!(layer.selection(seq, hq), Err(AttnError::InvalidConfig { name: "q_head", .. })));

    // Nothing changed: the sequence decodes exactly as in a fresh pipeline.
    assert_eq!(layer.len(seq), Ok(50));
    assert!(layer.selection(seq, 0).unwrap().is_empty(), "no step was taken");
    let (mut fresh, fresh_seq, _) = small_layer(50);
    let mut want = vec![0.0f32; hq * d];
    for i in 0..4 {
        layer.decode(&[data.input(seq, i)], &mut out).unwrap();
        fresh.decode(&[data.input(fresh_seq, i)], &mut want).unwrap();
        assert_eq!(bits(&out), bits(&want), "step {i} after the failed calls");
    }
    assert_eq!(layer.len(seq), Ok(54));

    // Configurations.
    let sel = SelectParams::new(Method::ClusterKv);
    assert!(matches!(
        PipelineConfig::new(6, 4, 8, sel.clone()).validate(),
        Err(AttnError::InvalidConfig { name: "n_q_heads", .. })
    ));
    assert!(matches!(
        PipelineConfig::new(3, 2, 8, sel.clone()).validate(),
        Err(AttnError::InvalidConfig { name: "n_q_heads", .. })
    ));
    assert!(matches!(
        PipelineConfig::new(2, 0, 8, sel.clone()).validate(),
        Err(AttnError::InvalidConfig { .. })
    ));
    assert!(matches!(
        PipelineConfig::new(2, 1, 0, sel.clone()).validate(),
        Err(AttnError::InvalidConfig { name: "head_dim", .. })
    ));
    let tight = sel.clone().budget(40).sink(16).window(30);
    assert!(matches!(
        PipelineConfig::new(4, 2, 8, tight.clone()).validate(),
        Err(AttnError::Select(SelectError::InvalidParam { name: "budget", .. }))
    ));
    assert!(PipelineConfig::new(4, 2, 8, tight.clone().max_context(40)).validate().is_ok());
    assert!(matches!(
        PipelineConfig::new(4, 2, 8, tight.max_context(41)).validate(),
        Err(AttnError::Select(SelectError::InvalidParam { name: "budget", .. }))
    ));

    // A context beyond max_context: prefill and decode refuse it, nothing changes.
    let bounded = SelectParams::new(Method::ClusterKv).budget(64).sink(2).max_context(52);
    let mut layer = pipeline::<f32>(hq, hkv, d, bounded);
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

/// Criterion 6a: prefill with queries writes dense causal attention, computed here directly
/// in f64, for prompts shorter and longer than a block of queries.
#[test]
fn prefill_attention_is_dense_causal() {
    for (hq, hkv, d, prompt) in
        [(4usize, 2usize, 7usize, 40usize), (3, 1, 5, 23), (2, 2, 1, 9), (2, 1, 3, 150)]
    {
        for method in [Method::ClusterKv, Method::H2o, Method::Dense] {
            let select = SelectParams::new(method).budget(16).sink(2);
            let mut layer = pipeline::<f32>(hq, hkv, d, select);
            let data = SeqData::new(prompt, 0, hq, hkv, d, 50 + prompt as u64);
            let mut out = vec![f32::NAN; prompt * hq * d];
            let input = PrefillInput { queries: Some(&data.queries), ..data.prefill() };
            let seq = layer.prefill(input, Some(&mut out)).unwrap();
            assert_eq!(layer.len(seq), Ok(prompt));
            let scale = f64::from(layer.config().scale());
            let g = hq / hkv;
            for h in 0..hq {
                let (k, v) = (head_rows(&data.keys, hkv, h / g, d), head_rows(&data.values, hkv, h / g, d));
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
                            "{method} head {h} token {t} dim {i}: {} vs {want}",
                            got[i]
                        );
                    }
                }
            }
        }
    }
}

/// Criterion 6b: a layer below `dense_layers` attends densely under a small budget, while
/// the same configuration at the first sparse layer selects.
#[test]
fn dense_layers_attend_densely() {
    let (hq, hkv, d, prompt, steps) = (4usize, 2usize, 8usize, 500usize, 3usize);
    let g = hq / hkv;
    let data = SeqData::new(prompt, steps, hq, hkv, d, 60);
    let select = SelectParams::new(Method::ClusterKv).budget(64).sink(4);
    // Decodes `steps` tokens at layer `layer_no` of 2 dense layers; checks that the last
    // output is attention over exactly the last selection; returns it and the selections.
    let run = |layer_no: usize| {
        let config = PipelineConfig::new(hq, hkv, d, select.clone()).layer(layer_no, 2).validate().unwrap();
        let mut layer = LayerPipeline::<f32>::new(config);
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
            assert_eq!(bits(&out[h * d..(h + 1) * d]), bits(&want), "layer {layer_no} head {h}");
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
            let (k, v) = (head_rows(&all_k, hkv, h / g, d), head_rows(&all_v, hkv, h / g, d));
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
            assert_eq!(bits(&out[h * d..(h + 1) * d]), bits(&want), "layer {layer_no} head {h}");
        }
        dense_out = out;
    }
    let (sparse_out, selections, indexed) = run(2);
    assert!(selections.iter().all(|s| s.len() == 64), "layer 2 selects under the budget");
    assert!(indexed);
    assert!(sparse_out != dense_out, "sparse and dense outputs differ");
}

/// f16 KV: a finite f32 key or value beyond the f16 range (65504) would become an infinity
/// in storage (silent NaN outputs, a failed k-means in the middle of a step). It is
/// rejected with a typed error naming the input, and the failed call changes nothing: the
/// sequence then decodes exactly as if it had never happened, re-clustering included.
#[test]
fn f16_overflowing_inputs_are_rejected() {
    let (hq, hkv, d, window) = (2usize, 1usize, 4usize, 8usize);
    let select = SelectParams::new(Method::ClusterKv).budget(32).sink(2).window(window);
    let steps = 2 * window + 1;
    let data = SeqData::new(50, steps, hq, hkv, d, 70);
    let mut big = data.step_k[0].clone();
    big[1] = 1.0e5;
    let mut big_v = data.step_v[0].clone();
    big_v[3] = -7.0e4;
    let mut bad_keys = data.keys.clone();
    bad_keys[9] = 7.0e4;
    let mut layer = pipeline::<f16>(hq, hkv, d, select.clone());
    let err = layer.prefill(PrefillInput { keys: &bad_keys, ..data.prefill() }, None).unwrap_err();
    assert!(matches!(err, AttnError::Value(ValueError::OutOfRange { what: "keys", index: 9, .. })), "{err}");
    // The same values are fine with f32 storage.
    let mut wide = pipeline::<f32>(hq, hkv, d, select.clone());
    wide.prefill(PrefillInput { keys: &bad_keys, ..data.prefill() }, None).unwrap();

    let mut layer = pipeline::<f16>(hq, hkv, d, select.clone());
    let mut reference = pipeline::<f16>(hq, hkv, d, select);
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
        assert_eq!(bits(&out), bits(&want), "step {i}");
    }
    assert_eq!(rejected, 2 * steps);
    assert_eq!(layer.regions(seq), reference.regions(ref_seq));
}

/// An empty prompt is legal: every method then decodes densely from the first token on,
/// for as long as the context fits the budget.
#[test]
fn empty_prompt_decodes_densely() {
    let (hq, hkv, d, steps) = (4usize, 2usize, 5usize, 20usize);
    let g = hq / hkv;
    let data = SeqData::new(0, steps, hq, hkv, d, 90);
    for method in Method::ALL {
        let select = SelectParams::new(method).budget(32).sink(4).window(6);
        let mut layer = pipeline::<f32>(hq, hkv, d, select);
        let seq = layer.prefill(data.prefill(), None).unwrap();
        assert_eq!(layer.len(seq), Ok(0));
        let mut out = vec![0.0f32; hq * d];
        let mut probs = Vec::new();
        for i in 0..steps {
            layer.decode(&[data.input(seq, i)], &mut out).unwrap();
            let (all_k, all_v) = data.all_kv(i + 1);
            for h in 0..hq {
                assert_eq!(layer.selection(seq, h).unwrap(), &(0..=i as u32).collect::<Vec<_>>()[..]);
                let (k, v) = (head_rows(&all_k, hkv, h / g, d), head_rows(&all_v, hkv, h / g, d));
                let mut want = vec![0.0f32; d];
                let q = &data.step_q[i][h * d..(h + 1) * d];
                dense_attention(q, d, &k, &v, layer.config().scale(), &mut probs, &mut want);
                assert_eq!(bits(&out[h * d..(h + 1) * d]), bits(&want), "{method} step {i} head {h}");
            }
        }
        // Windows of 6 after the sink of 4: [4, 10) and [10, 16) were clustered.
        assert_eq!(layer.regions(seq).unwrap().clustered(), 4..16, "{method}");
    }
}

/// A prompt given in chunks through `add_sequence` / `extend` / `finish_prefill` gives
/// bitwise the outputs, the H2O scores (so the later selections) and the decode steps of one
/// `prefill`; out-of-order calls are typed errors.
#[test]
fn chunked_prefill_is_bitwise_one_prefill() {
    let (hq, hkv, d, prompt) = (4, 2, 8, 300);
    let data = SeqData::new(prompt, 6, hq, hkv, d, 91);
    for method in [Method::ClusterKv, Method::H2o] {
        let select = SelectParams::new(method).budget(64).sink(4);
        let mut whole = pipeline::<f32>(hq, hkv, d, select.clone());
        let mut whole_out = vec![0.0f32; prompt * hq * d];
        let input = PrefillInput { queries: Some(&data.queries), ..data.prefill() };
        let a = whole.prefill(input, Some(&mut whole_out)).unwrap();
        let mut chunked = pipeline::<f32>(hq, hkv, d, select);
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
            assert_eq!(bits(&out), bits(&other), "{method}: decode step {i}");
            assert_eq!(whole.selection(a, 1).unwrap(), chunked.selection(b, 1).unwrap());
        }
    }
}

/// One dense prefill serves every method: a sequence restored from a snapshot of a dense
/// pipeline's prefill decodes bitwise as one prefilled by the method itself (H2O included,
/// whose selection depends on the prompt's attention).
#[test]
fn restored_snapshots_decode_like_their_own_prefill() {
    let (hq, hkv, d, prompt, steps) = (4usize, 2usize, 8usize, 700usize, 40usize);
    let data = SeqData::new(prompt, steps, hq, hkv, d, 90);
    let with_queries = || PrefillInput { queries: Some(&data.queries), ..data.prefill() };
    let select = |method| SelectParams::new(method).budget(96).sink(4).window(30).seed(3);
    let mut dense = pipeline::<f16>(hq, hkv, d, select(Method::Dense));
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
        let mut own = pipeline::<f16>(hq, hkv, d, select(method));
        let mut own_out = vec![0.0f32; prompt * hq * d];
        let own_seq = own.prefill(with_queries(), Some(&mut own_out)).unwrap();
        let err = rel_err(&own_out, &prefill_out);
        assert!(err < 1e-6, "{method}: chunked prefill differs by {err}");
        let mut restored = pipeline::<f16>(hq, hkv, d, select(method));
        let seq = restored.restore(&snapshot).unwrap();
        restored.finish_prefill(seq).unwrap();
        let (mut x, mut y) = (vec![0.0f32; hq * d], vec![0.0f32; hq * d]);
        for i in 0..steps {
            own.decode(&[data.input(own_seq, i)], &mut x).unwrap();
            restored.decode(&[data.input(seq, i)], &mut y).unwrap();
            assert_eq!(bits(&x), bits(&y), "{method} step {i}");
            assert_eq!(own.selection(own_seq, 1).unwrap(), restored.selection(seq, 1).unwrap());
        }
    }
    // A snapshot is of a sequence in prefill, into a pipeline of the same shape.
    let mut other = pipeline::<f16>(hq, 1, d, select(Method::ClusterKv));
    assert!(matches!(other.restore(&snapshot), Err(AttnError::InvalidConfig { name: "snapshot", .. })));
    dense.finish_prefill(dense_seq).unwrap();
    assert_eq!(dense.snapshot(dense_seq).unwrap_err(), AttnError::PrefillClosed(dense_seq));
}
