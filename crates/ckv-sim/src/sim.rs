//! The simulation: every method decodes the same synthetic trace through the real
//! pipeline; each step's selection is scored against dense attention.

use std::time::Instant;

use ckv_attn::{DecodeInput, LayerPipeline, PipelineConfig, PrefillInput};
use ckv_core::{Element, ParamGuard};
use ckv_select::{GqaPolicy, Method, SelectParams};

use crate::{Fidelity, FidelitySum, MarkdownTable, SimError, Trace, step_fidelity};

/// A method under test: the method and its GQA policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variant {
    /// The method.
    pub method: Method,
    /// Its GQA policy.
    pub gqa: GqaPolicy,
}

impl Variant {
    /// Every method once, and ClusterKV under both GQA policies.
    pub fn all() -> Vec<Variant> {
        Method::ALL
            .into_iter()
            .flat_map(|method| {
                let policies: &[GqaPolicy] = match method {
                    Method::ClusterKv => &[GqaPolicy::PerQueryHead, GqaPolicy::PerKvHead],
                    _ => &[GqaPolicy::PerQueryHead],
                };
                policies.iter().map(move |&gqa| Variant { method, gqa })
            })
            .collect()
    }

    /// `method` or `method/per-kv-head`.
    pub fn label(&self) -> String {
        match self.gqa {
            GqaPolicy::PerQueryHead => self.method.name().to_owned(),
            GqaPolicy::PerKvHead => format!("{}/{}", self.method.name(), self.gqa.name()),
        }
    }
}

/// Settings of a simulation beside the trace.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Selection parameters shared by every method (the method and GQA policy are set per
    /// variant).
    pub select: SelectParams,
}

/// The result of one variant, averaged over steps and query heads.
#[derive(Debug, Clone, PartialEq)]
pub struct VariantReport {
    /// The variant.
    pub variant: Variant,
    /// Mean fidelity.
    pub fidelity: Fidelity,
    /// Mean ids attended per (step, query head).
    pub attended: f64,
    /// Wall time of the prefill (clustering included), seconds.
    pub prefill_s: f64,
    /// Mean wall time of a decode step (all heads), seconds.
    pub step_s: f64,
}

/// Runs every variant over `trace`: prefill the prompt (no queries), then decode each step,
/// scoring every query head's selection against dense attention over the stored KV.
pub fn simulate<E: Element>(
    trace: &Trace,
    config: &SimConfig,
    variants: &[Variant],
) -> Result<Vec<VariantReport>, SimError> {
    variants.iter().map(|&variant| simulate_variant::<E>(trace, config, variant)).collect()
}

fn simulate_variant<E: Element>(
    trace: &Trace,
    config: &SimConfig,
    variant: Variant,
) -> Result<VariantReport, SimError> {
    let tc = &trace.config;
    let (hq, d) = (tc.n_q_heads, tc.head_dim);
    let select = config.select.clone().method(variant.method).gqa(variant.gqa);
    let pipeline_config = PipelineConfig::new(hq, tc.n_kv_heads, d, select).validate()?;
    let mut layer = LayerPipeline::<E>::new(pipeline_config);
    let started = Instant::now();
    let prompt = PrefillInput {
        keys: trace.prefix(&trace.keys, tc.context),
        values: trace.prefix(&trace.values, tc.context),
        queries: None,
    };
    let seq = layer.prefill(prompt, None)?;
    let prefill_s = started.elapsed().as_secs_f64();
    let mut out = vec![0.0f32; hq * d];
    let (mut total, mut attended, mut step_s) = (FidelitySum::default(), 0, 0.0);
    for step in 0..tc.steps {
        let t = tc.context + step;
        let input = DecodeInput {
            seq,
            query: trace.query(step),
            key: trace.token(&trace.keys, t),
            value: trace.token(&trace.values, t),
        };
        let started = Instant::now();
        layer.decode(&[input], &mut out)?;
        step_s += started.elapsed().as_secs_f64();
        total = total + step_fidelity(&layer, &[input], &[true]);
        for h in 0..hq {
            attended += layer.selection(seq, h)?.len();
        }
    }
    Ok(VariantReport {
        variant,
        fidelity: total.mean(),
        attended: attended as f64 / (tc.steps * hq).max(1) as f64,
        prefill_s,
        step_s: step_s / tc.steps.max(1) as f64,
    })
}

/// The reports as a Markdown table.
pub fn table(trace: &Trace, config: &SimConfig, reports: &[VariantReport]) -> String {
    let tc = &trace.config;
    let budget = config.select.clone().validate().map(|p| p.budget()).unwrap_or_default();
    let mut s = format!(
        "synthetic trace: context {}, {} decode steps, d {}, Hq {}, Hkv {}, {} topics per KV head, seed {}; budget {}\n\n",
        tc.context, tc.steps, tc.head_dim, tc.n_q_heads, tc.n_kv_heads, tc.topics, tc.seed, budget
    );
    let mut table = MarkdownTable::new(
        ["method", "attended", "top-k recall", "mass recall", "output rel. error", "prefill s", "step ms"],
        "l",
    );
    for r in reports {
        table.row([
            r.variant.label(),
            format!("{:.0}", r.attended),
            format!("{:.4}", r.fidelity.topk_recall),
            format!("{:.4}", r.fidelity.mass_recall),
            format!("{:.4}", r.fidelity.output_rel_error),
            format!("{:.2}", r.prefill_s),
            format!("{:.2}", r.step_s * 1e3),
        ]);
    }
    s.push_str(&table.to_string());
    s
}
