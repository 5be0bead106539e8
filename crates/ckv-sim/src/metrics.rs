//! Attention fidelity of a selection (DESIGN section 8): top-k recall, attention-mass recall
//! and output relative error, against dense attention over the same KV.

use ckv_attn::{DecodeInput, LayerPipeline, dense_attention, sparse_attention};
use ckv_core::Element;
use ckv_select::partition_top;
use rayon::prelude::*;

/// Fidelity of one (step, query head).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Fidelity {
    /// Share of the exact top-`|S|` tokens by `q · k` that the attended set `S` holds.
    pub topk_recall: f64,
    /// Share of the dense softmax mass inside `S`.
    pub mass_recall: f64,
    /// `|o - o_dense| / |o_dense|` (Euclidean norms).
    pub output_rel_error: f64,
}

/// Fidelity figures summed over samples (query heads of decode steps).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FidelitySum {
    /// Sum of the top-k recalls.
    pub topk: f64,
    /// Sum of the attention-mass recalls.
    pub mass: f64,
    /// Sum of the output relative errors.
    pub error: f64,
    /// Samples summed.
    pub samples: usize,
}

impl FidelitySum {
    /// The mean of each figure (zeros without samples).
    pub fn mean(&self) -> Fidelity {
        let n = self.samples.max(1) as f64;
        Fidelity { topk_recall: self.topk / n, mass_recall: self.mass / n, output_rel_error: self.error / n }
    }
}

impl std::ops::Add for FidelitySum {
    type Output = Self;

    fn add(self, other: Self) -> Self {
        Self {
            topk: self.topk + other.topk,
            mass: self.mass + other.mass,
            error: self.error + other.error,
            samples: self.samples + other.samples,
        }
    }
}

/// The fidelity of the decode step `pipeline` just ran on `inputs`, summed over the query
/// heads of the entries `measure` marks (`measure[e]` for `inputs[e]`), parallel over
/// (entry, query head): each head's selection against dense attention over its KV.
pub fn step_fidelity<E: Element>(
    pipeline: &LayerPipeline<E>,
    inputs: &[DecodeInput<'_>],
    measure: &[bool],
) -> FidelitySum {
    let cfg = pipeline.config();
    let (hq, d, g, scale) = (cfg.n_q_heads(), cfg.head_dim(), cfg.group(), cfg.scale());
    let work: Vec<(usize, usize)> = (0..inputs.len())
        .filter(|&e| measure.get(e) == Some(&true))
        .flat_map(|e| (0..hq).map(move |h| (e, h)))
        .collect();
    work.par_iter()
        .map_init(FidelityScratch::default, |scratch, &(e, h)| {
            let input = &inputs[e];
            // The sequence and head exist: the pipeline just decoded them.
            let (Ok(kv), Ok(ids)) = (pipeline.kv(input.seq, h / g), pipeline.selection(input.seq, h)) else {
                return FidelitySum::default();
            };
            let q = &input.query[h * d..(h + 1) * d];
            let f = fidelity(q, kv.keys(), kv.values(), ids, scale, scratch);
            FidelitySum { topk: f.topk_recall, mass: f.mass_recall, error: f.output_rel_error, samples: 1 }
        })
        .reduce(FidelitySum::default, |a, b| a + b)
}

/// Reusable buffers of [`fidelity`].
#[derive(Debug, Default)]
pub struct FidelityScratch {
    probs: Vec<f32>,
    sparse_probs: Vec<f32>,
    dense_out: Vec<f32>,
    sparse_out: Vec<f32>,
    order: Vec<u32>,
    inside: Vec<bool>,
}

/// The fidelity of attending `q` to the sorted ids `selected` of `keys`/`values` (`[n, d]`).
pub fn fidelity<E: Element>(
    q: &[f32],
    keys: &[E],
    values: &[E],
    selected: &[u32],
    scale: f32,
    scratch: &mut FidelityScratch,
) -> Fidelity {
    let d = q.len();
    let n = keys.len() / d;
    let s = &mut *scratch;
    s.dense_out.resize(d, 0.0);
    s.sparse_out.resize(d, 0.0);
    dense_attention(q, d, keys, values, scale, &mut s.probs, &mut s.dense_out);
    sparse_attention(q, d, keys, values, selected, scale, &mut s.sparse_probs, &mut s.sparse_out);
    s.inside.clear();
    s.inside.resize(n, false);
    for &id in selected {
        s.inside[id as usize] = true;
    }
    let mass: f64 = selected.iter().map(|&id| s.probs[id as usize] as f64).sum();
    s.order.clear();
    s.order.extend(0..n as u32);
    let k = selected.len().min(n);
    let probs = &s.probs;
    partition_top(&mut s.order, k, |id| probs[id as usize]);
    let hits = s.order[..k].iter().filter(|&&id| s.inside[id as usize]).count();
    let diff: f64 =
        s.dense_out.iter().zip(&s.sparse_out).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>().sqrt();
    let norm: f64 = s.dense_out.iter().map(|a| (*a as f64).powi(2)).sum::<f64>().sqrt();
    Fidelity {
        topk_recall: if k == 0 { 1.0 } else { hits as f64 / k as f64 },
        mass_recall: mass,
        output_rel_error: if norm > 0.0 { diff / norm } else { diff },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_selection_is_perfect_and_partial_is_not() {
        let d = 4;
        let keys: Vec<f32> = (0..40 * d).map(|i| ((i * 13 % 17) as f32 - 8.0) / 4.0).collect();
        let values: Vec<f32> = (0..40 * d).map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0).collect();
        let q = [1.0, -0.5, 0.25, 2.0];
        let mut scratch = FidelityScratch::default();
        let all: Vec<u32> = (0..40).collect();
        let full = fidelity(&q, &keys, &values, &all, 0.5, &mut scratch);
        assert_eq!(full.topk_recall, 1.0);
        assert!((full.mass_recall - 1.0).abs() < 1e-6);
        assert_eq!(full.output_rel_error, 0.0);
        let few = fidelity(&q, &keys, &values, &[0, 1, 2], 0.5, &mut scratch);
        assert!(few.mass_recall < 1.0 && few.output_rel_error > 0.0);
        // The exact top-3 by score has recall 1.
        let scores: Vec<f32> = keys.chunks(d).map(|k| ckv_core::dot(&q, k)).collect();
        let mut ids: Vec<u32> = (0..40).collect();
        partition_top(&mut ids, 3, |i| scores[i as usize]);
        let mut top: Vec<u32> = ids[..3].to_vec();
        top.sort();
        assert_eq!(fidelity(&q, &keys, &values, &top, 0.5, &mut scratch).topk_recall, 1.0);
    }
}
