//! The simulation: every method decodes the same synthetic trace through the real
//! pipeline; each step's selection is scored against dense attention.

use std::time::Instant;

use ckv_attn::{DecodeInput, LayerPipeline, PipelineConfig, PrefillInput};
use ckv_cluster::Element;
use ckv_select::{GqaPolicy, Method, SelectParams};
use rayon::prelude::*;

use crate::{Fidelity, FidelityScratch, SimError, Trace, fidelity};

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
    let scale = pipeline_config.scale();
    let g = pipeline_config.group();
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
    let (mut total, mut attended, mut step_s) = (Fidelity::default(), 0.0, 0.0);
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
        let per_head = (0..hq)
            .into_par_iter()
            .map_init(FidelityScratch::default, |scratch, h| {
                let kv = layer.kv(seq, h / g)?;
                let ids = layer.selection(seq, h)?;
                let q = &input.query[h * d..(h + 1) * d];
                Ok((fidelity(q, kv.keys(), kv.values(), ids, scale, scratch), ids.len()))
            })
            .collect::<Result<Vec<_>, SimError>>()?;
        for (f, n) in per_head {
            total.topk_recall += f.topk_recall;
            total.mass_recall += f.mass_recall;
            total.output_rel_error += f.output_rel_error;
            attended += n as f64;
        }
    }
    let samples = (tc.steps * hq).max(1) as f64;
    Ok(VariantReport {
        variant,
        fidelity: Fidelity {
            topk_recall: total.topk_recall / samples,
            mass_recall: total.mass_recall / samples,
            output_rel_error: total.output_rel_error / samples,
        },
        attended: attended / samples,
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
    s.push_str(
        "| method | attended | top-k recall | mass recall | output rel. error | prefill s | step ms |\n",
    );
    s.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
    for r in reports {
        s.push_str(&format!(
            "| {} | {:.0} | {:.4} | {:.4} | {:.4} | {:.2} | {:.2} |\n",
            r.variant.label(),
            r.attended,
            r.fidelity.topk_recall,
            r.fidelity.mass_recall,
            r.fidelity.output_rel_error,
            r.prefill_s,
            r.step_s * 1e3
        ));
    }
    s
}
