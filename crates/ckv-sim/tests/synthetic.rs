//! The simulator end to end: ClusterKV against the baselines on the synthetic trace.

use ckv_select::{GqaPolicy, Method, SelectParams};
use ckv_sim::{SimConfig, Trace, TraceConfig, Variant, simulate};
use half::f16;

/// DESIGN's headline shape: context 32k, d = 128, B = 1024. ClusterKV must keep at least
/// the attention mass of Quest and StreamingLLM, and dense must be exact.
#[test]
fn clusterkv_keeps_more_mass_than_quest_and_streamingllm_at_32k() {
    let trace = Trace::generate(&TraceConfig {
        context: 32768,
        steps: 4,
        head_dim: 128,
        n_q_heads: 2,
        n_kv_heads: 1,
        seed: 3,
        ..TraceConfig::default()
    })
    .unwrap();
    let config = SimConfig { select: SelectParams::default().budget(1024) };
    let variants: Vec<Variant> = [Method::Dense, Method::ClusterKv, Method::Quest, Method::StreamingLlm]
        .into_iter()
        .map(|method| Variant { method, gqa: GqaPolicy::PerQueryHead })
        .collect();
    let reports = simulate::<f16>(&trace, &config, &variants).unwrap();
    let mass = |m: Method| reports.iter().find(|r| r.variant.method == m).unwrap().fidelity.mass_recall;
    let dense = &reports[0];
    assert!((dense.fidelity.mass_recall - 1.0).abs() < 1e-5, "{dense:?}");
    assert_eq!(dense.fidelity.output_rel_error, 0.0);
    for r in &reports[1..] {
        assert_eq!(r.attended, 1024.0, "{:?} attends to the budget exactly", r.variant);
    }
    let (ckv, quest, streaming) = (mass(Method::ClusterKv), mass(Method::Quest), mass(Method::StreamingLlm));
    assert!(ckv >= quest, "ClusterKV mass recall {ckv} < Quest {quest}");
    assert!(ckv >= streaming, "ClusterKV mass recall {ckv} < StreamingLLM {streaming}");
}
