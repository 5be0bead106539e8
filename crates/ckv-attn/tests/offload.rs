//! Offload (DESIGN sections 1 and 2): the pipeline attending through each head's device
//! tier gives bitwise the outputs and selections of the pipeline without it; after every
//! step the tier holds exactly what the last `reuse` steps attended; a full host store and
//! a removed sequence give clear errors and leak nothing.

use std::collections::BTreeSet;

use ckv_attn::{AttnError, DecodeInput, LayerPipeline, PipelineConfig, PrefillInput};
use ckv_cache::{CacheError, OffloadParams};
use ckv_core::ParamGuard;
use ckv_select::{GqaPolicy, Method, SelectParams};
use half::f16;
use proptest::prelude::*;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// `n` values uniform in [-1, 1).
fn uniform(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect()
}

fn bits(xs: &[f32]) -> Vec<u32> {
    xs.iter().map(|x| x.to_bits()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn offload_changes_no_output_and_holds_the_recent_attended_sets(
        method in prop::sample::select(vec![
            Method::ClusterKv, Method::ClusterKv, Method::Quest, Method::H2o, Method::StreamingLlm, Method::Dense,
        ]),
        gqa in prop::sample::select(vec![GqaPolicy::PerQueryHead, GqaPolicy::PerKvHead]),
        heads in prop::sample::select(vec![(1usize, 1usize), (4, 2), (3, 1), (8, 8)]),
        d in prop::sample::select(vec![1usize, 8, 13]),
        prompts in (40usize..300, 1usize..200),
        budget in prop::sample::select(vec![48usize, 64, 128, 1000]),
        reuse in 1usize..5,
        steps in 1usize..40,
        seed in 0u64..1000,
    ) {
        let (hq, hkv) = heads;
        let select = SelectParams::new(method).budget(budget).gqa(gqa).sink(4).seed(seed);
        let plain = PipelineConfig::new(hq, hkv, d, select).validate().unwrap();
        let offload = PipelineConfig::new(hq, hkv, d, SelectParams::new(method).budget(budget).gqa(gqa).sink(4).seed(seed))
            .offload(OffloadParams::new(reuse).unwrap())
            .validate()
            .unwrap();
        let mut a = LayerPipeline::<f16>::new(plain);
        let mut b = LayerPipeline::<f16>::new(offload);
        let mut seqs = Vec::new();
        for (i, &prompt) in [prompts.0, prompts.1].iter().enumerate() {
            let kv = uniform(prompt * hkv * d, seed + i as u64);
            let q = uniform(prompt * hq * d, seed + 10 + i as u64);
            let input = PrefillInput { keys: &kv, values: &kv, queries: Some(&q) };
            let (mut out_a, mut out_b) = (vec![0.0; prompt * hq * d], vec![0.0; prompt * hq * d]);
            let sa = a.prefill(input, Some(&mut out_a)).unwrap();
            let sb = b.prefill(input, Some(&mut out_b)).unwrap();
            prop_assert_eq!(bits(&out_a), bits(&out_b));
            seqs.push((sa, sb));
        }
        // Per (sequence, KV head): the attended sets of every step so far.
        let mut history: Vec<Vec<Vec<BTreeSet<u32>>>> = vec![vec![Vec::new(); hkv]; 2];
        let (mut out_a, mut out_b) = (vec![0.0; 2 * hq * d], vec![0.0; 2 * hq * d]);
        for step in 0..steps {
            let q = uniform(2 * hq * d, seed * 1000 + step as u64);
            let k = uniform(2 * hkv * d, seed * 1000 + 500 + step as u64);
            let batch = |side: usize| -> Vec<DecodeInput<'_>> {
                seqs.iter()
                    .enumerate()
                    .map(|(i, s)| DecodeInput {
                        seq: if side == 0 { s.0 } else { s.1 },
                        query: &q[i * hq * d..(i + 1) * hq * d],
                        key: &k[i * hkv * d..(i + 1) * hkv * d],
                        value: &k[i * hkv * d..(i + 1) * hkv * d],
                    })
                    .collect()
            };
            a.decode(&batch(0), &mut out_a).unwrap();
            b.decode(&batch(1), &mut out_b).unwrap();
            prop_assert_eq!(bits(&out_a), bits(&out_b), "step {}", step);
            for (i, &(sa, sb)) in seqs.iter().enumerate() {
                for h in 0..hkv {
                    let mut attended = BTreeSet::new();
                    for q_head in h * (hq / hkv)..(h + 1) * (hq / hkv) {
                        let (la, lb) = (a.selection(sa, q_head).unwrap(), b.selection(sb, q_head).unwrap());
                        prop_assert_eq!(la, lb);
                        attended.extend(lb.iter().copied());
                    }
                    history[i][h].push(attended);
                    let recent = &history[i][h][history[i][h].len().saturating_sub(reuse)..];
                    let want: BTreeSet<u32> = recent.iter().flatten().copied().collect();
                    let resident = b.resident(sb, h).unwrap().expect("offload is on");
                    prop_assert_eq!(resident.into_iter().collect::<BTreeSet<u32>>(), want);
                }
            }
        }
        let stats = b.offload_stats(seqs[0].1, 0).unwrap().unwrap();
        prop_assert_eq!(stats.steps, steps as u64 - 1);
        prop_assert!(stats.hits <= stats.attended && stats.bytes_fetched <= stats.bytes_no_cache);
        prop_assert!(a.offload_stats(seqs[0].0, 0).unwrap().is_none());
    }
}

/// A pipeline with offload whose host store holds `tokens` tokens of `hkv` heads of `d` f16.
fn capped(hkv: usize, d: usize, tokens: usize) -> LayerPipeline<f16> {
    let select = SelectParams::new(Method::ClusterKv).budget(64).sink(4);
    let offload = OffloadParams::new(2).unwrap().host_capacity(tokens * hkv * d * 2 * 2);
    LayerPipeline::new(PipelineConfig::new(2, hkv, d, select).offload(offload).validate().unwrap())
}

#[test]
fn a_full_host_store_refuses_by_name_and_changes_nothing() {
    let (hkv, d) = (1, 8);
    let mut layer = capped(hkv, d, 120);
    let kv = uniform(100 * hkv * d, 1);
    let seq = layer.prefill(PrefillInput { keys: &kv, values: &kv, queries: None }, None).unwrap();
    assert_eq!(layer.host_bytes_used(), Some(100 * hkv * d * 4));
    // A second prompt of 100 tokens does not fit: refused, and nothing stays behind.
    let err = layer.prefill(PrefillInput { keys: &kv, values: &kv, queries: None }, None).unwrap_err();
    assert!(matches!(err, AttnError::Cache(CacheError::HostFull { .. })), "{err}");
    assert!(err.to_string().contains("host KV store is full"), "{err}");
    assert_eq!(layer.host_bytes_used(), Some(100 * hkv * d * 4));
    // Decode until full: the 21st new token is refused and the sequence is unchanged.
    let (q, k) = (uniform(2 * d, 2), uniform(hkv * d, 3));
    let mut out = vec![0.0; 2 * d];
    for _ in 0..20 {
        layer.decode(&[DecodeInput { seq, query: &q, key: &k, value: &k }], &mut out).unwrap();
    }
    let err = layer.decode(&[DecodeInput { seq, query: &q, key: &k, value: &k }], &mut out).unwrap_err();
    assert!(matches!(err, AttnError::Cache(CacheError::HostFull { .. })), "{err}");
    assert_eq!(layer.len(seq).unwrap(), 120);
    assert_eq!(layer.host_bytes_used(), Some(120 * hkv * d * 4));
    layer.remove(seq).unwrap();
    assert_eq!(layer.host_bytes_used(), Some(0), "a removed sequence gives its bytes back");
}

#[test]
fn a_sequence_removed_from_a_batch_is_refused_and_leaks_nothing() {
    let (hkv, d) = (2, 8);
    let mut layer = capped(hkv, d, 1000);
    let kv = uniform(150 * hkv * d, 4);
    let seqs: Vec<_> = (0..3)
        .map(|_| layer.prefill(PrefillInput { keys: &kv, values: &kv, queries: None }, None).unwrap())
        .collect();
    let (q, k) = (uniform(3 * 2 * d, 5), uniform(3 * hkv * d, 6));
    let inputs = |ids: &[usize]| -> Vec<DecodeInput<'_>> {
        ids.iter()
            .map(|&i| DecodeInput {
                seq: seqs[i],
                query: &q[i * 2 * d..(i + 1) * 2 * d],
                key: &k[i * hkv * d..(i + 1) * hkv * d],
                value: &k[i * hkv * d..(i + 1) * hkv * d],
            })
            .collect()
    };
    let mut out = vec![0.0; 3 * 2 * d];
    layer.decode(&inputs(&[0, 1, 2]), &mut out).unwrap();
    layer.remove(seqs[1]).unwrap();
    let used = layer.host_bytes_used().unwrap();
    assert_eq!(used, 2 * 151 * hkv * d * 4);
    let err = layer.decode(&inputs(&[0, 1, 2]), &mut out).unwrap_err();
    assert_eq!(err, AttnError::UnknownSequence(seqs[1]));
    assert_eq!((layer.len(seqs[0]).unwrap(), layer.len(seqs[2]).unwrap()), (151, 151));
    assert_eq!(layer.host_bytes_used(), Some(used));
    assert!(layer.resident(seqs[1], 0).is_err(), "the removed sequence's tiers are gone");
    let mut out = vec![0.0; 2 * 2 * d];
    layer.decode(&inputs(&[0, 2]), &mut out).unwrap();
    for seq in [seqs[0], seqs[2]] {
        layer.remove(seq).unwrap();
    }
    assert_eq!(layer.host_bytes_used(), Some(0));
}
