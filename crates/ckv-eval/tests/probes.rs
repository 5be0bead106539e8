//! The probe engine on a tiny random model: decoding the probes a batch at a time (bounded
//! memory) gives every probe's score bitwise as one batch of all of them, and the context a
//! probe needs is its prompt plus its decode steps.

use ckv_eval::{EvalError, Probe, ProbeOptions, Setting, SettingResult, run_probes};
use ckv_model::testing::{Rng, TINY, tiny_model};
use ckv_model::{GgufFile, Model};
use ckv_select::{Budget, GqaPolicy, Method, SelectParams};
use ckv_sim::Variant;

/// The tiny model: 2 layers, 4 query heads over 2 KV heads, a context of 512.
fn model() -> Model {
    let gguf = GgufFile::from_bytes(tiny_model(|_| Some(8), 7)).unwrap();
    Model::from_gguf(&gguf).unwrap()
}

/// `n` probes of random tokens, prompts of different lengths, `scored` predictions each.
fn probes(n: usize, scored: usize) -> Vec<Probe> {
    let mut rng = Rng(11);
    let vocab = TINY.5 as u64;
    let mut tokens = |len: usize| (0..len).map(|_| (rng.next() % vocab) as u32).collect::<Vec<u32>>();
    (0..n)
        .map(|i| Probe {
            prompt: tokens(60 + 37 * i),
            continuation: tokens(scored + 1),
            scored: 1..scored + 1,
            fidelity: i % 2 == 0,
        })
        .collect()
}

fn settings() -> Vec<Setting> {
    let variant = |method, gqa| Variant { method, gqa };
    vec![
        Setting::fixed(variant(Method::Dense, GqaPolicy::PerQueryHead), 64),
        Setting::fixed(variant(Method::ClusterKv, GqaPolicy::PerQueryHead), 40),
        Setting::fixed(variant(Method::ClusterKv, GqaPolicy::PerKvHead), 40),
        Setting {
            variant: variant(Method::Oracle, GqaPolicy::PerQueryHead),
            budget: Budget::Mass { p: 0.9, max: 48 },
            select: None,
        },
        Setting::fixed(variant(Method::Quest, GqaPolicy::PerQueryHead), 40),
    ]
}

fn run(model: &Model, probes: &[Probe], batch: usize) -> Result<Vec<SettingResult>, EvalError> {
    let select = SelectParams::default().sink(4).tokens_per_cluster(8).window(8).quest_page_size(8);
    let options = ProbeOptions { select, dense_layers: 1, seed: 3, fidelity_every: 1, batch };
    run_probes(model, probes, &settings(), &options, &())
}

#[test]
fn batches_of_probes_score_as_one_batch_of_all() {
    let model = model();
    let probes = probes(5, 6);
    let all = run(&model, &probes, probes.len()).unwrap();
    for batch in [1, 2, 3] {
        let batched = run(&model, &probes, batch).unwrap();
        for (a, b) in all.iter().zip(&batched) {
            let label = format!("{} under batches of {batch}", a.setting.variant.label());
            assert_eq!(a.scores, b.scores, "{label}");
            assert_eq!(a.scores.len(), probes.len(), "{label}");
            assert!(a.scores.iter().all(|s| s.tokens == 6 && s.nll_sum.is_finite()), "{label}");
            assert_eq!(a.fidelity_samples, b.fidelity_samples, "{label}");
            assert!((a.attended - b.attended).abs() <= 1e-9 * a.attended, "{label}");
            // Fidelity sums the same samples in another order.
            for (x, y) in a.fidelity.iter().zip(&b.fidelity) {
                assert_eq!(x.layer, y.layer);
                for (u, v) in [(x.topk_recall, y.topk_recall), (x.mass_recall, y.mass_recall)] {
                    assert!((u - v).abs() <= 1e-9, "{label}: layer {} {u} vs {v}", x.layer);
                }
            }
        }
    }
}

#[test]
fn a_probe_fills_its_prompt_and_its_decode_steps() {
    let model = model();
    let context = model.config().context;
    // 499 prompt tokens and 13 decode steps fill exactly the model's 512 positions: the last
    // of the 13 scored tokens is only predicted, never fed.
    let mut fits = probes(1, 13);
    fits[0].prompt.truncate(0);
    fits[0].prompt.resize(context - 13, 1);
    let results = run(&model, &fits, 1).unwrap();
    assert_eq!(results[0].scores[0].tokens, 13);
    let mut over = fits.clone();
    over[0].prompt.push(1);
    let err = run(&model, &over, 1).unwrap_err().to_string();
    assert!(err.contains(&(context + 1).to_string()) && err.contains("context"), "{err}");
}

#[test]
fn a_batch_of_zero_is_refused_by_name() {
    let err = run(&model(), &probes(2, 3), 0).unwrap_err().to_string();
    assert!(err.contains("batch"), "{err}");
}
