//! The mass-targeted budget (DESIGN section 4): the attention mass that ranked units
//! (clusters, or tokens for the oracle) are estimated to hold, and how many of them reach a
//! target share.

use std::ops::Range;

use ckv_cluster::{Element, score_rows};

use crate::StepCtx;

/// Fixed tokens scored at a time: the estimate's buffers keep one size however long the
/// tail grows, so a warm step allocates nothing.
const CHUNK: usize = 64;

/// One selection's estimate, each query row's mass normalised to its own total so that
/// rows sharing a selection weigh alike. Its buffers are reused from step to step.
#[derive(Debug, Clone, Default)]
pub(crate) struct MassEstimate {
    chunk: Vec<f32>,
    /// Per row: the running maximum and the sum of `exp(score - max)` over the fixed tokens.
    fixed_max: Vec<f32>,
    fixed_sum: Vec<f32>,
    row_mass: Vec<f32>,
    /// Each unit's estimated share of the mass, summed over the rows.
    weights: Vec<f32>,
    /// The share of the sink, the tail and the current token (exact), summed over the rows.
    fixed: f32,
}

impl MassEstimate {
    /// Estimates the mass of the `n` units scored in `scores` (`[step.n_queries, n]`,
    /// unscaled `q · centroid`, one row per query row of `step`), unit `u` holding `size(u)`
    /// tokens: `size(u) * exp(scale * score)`; the sink, tail and current token are scored
    /// exactly from `step.keys`.
    pub(crate) fn estimate<E: Element>(
        &mut self,
        step: &StepCtx<'_, E>,
        scores: &[f32],
        size: impl Fn(usize) -> usize,
    ) {
        let (rows, regions) = (step.n_queries, step.regions);
        let n = scores.len() / rows.max(1);
        self.fixed_max.clear();
        self.fixed_max.resize(rows, f32::NEG_INFINITY);
        self.fixed_sum.clear();
        self.fixed_sum.resize(rows, 0.0);
        let sink = regions.sink();
        // The tail and the current token are contiguous: [c, t].
        let recent = regions.tail().start..regions.current() + 1;
        for range in [sink, recent] {
            self.add_fixed(step, range.start as usize..range.end as usize);
        }
        self.weights.clear();
        self.weights.resize(n, 0.0);
        self.fixed = 0.0;
        for ((row, &fixed_max), &fixed_sum) in
            scores.chunks_exact(n.max(1)).zip(&self.fixed_max).zip(&self.fixed_sum)
        {
            let top = row.iter().map(|&s| s * step.scale).fold(fixed_max, f32::max);
            self.row_mass.clear();
            self.row_mass
                .extend(row.iter().enumerate().map(|(u, &s)| size(u) as f32 * (s * step.scale - top).exp()));
            let fixed_mass = fixed_sum * (fixed_max - top).exp();
            let total = fixed_mass + self.row_mass.iter().sum::<f32>();
            self.fixed += fixed_mass / total;
            for (w, m) in self.weights.iter_mut().zip(&self.row_mass) {
                *w += m / total;
            }
        }
    }

    /// Adds the exact scores of the tokens `ids` to every row's running maximum and sum.
    fn add_fixed<E: Element>(&mut self, step: &StepCtx<'_, E>, ids: Range<usize>) {
        let rows = step.n_queries;
        for start in ids.clone().step_by(CHUNK) {
            let part = start..(start + CHUNK).min(ids.end);
            self.chunk.clear();
            self.chunk.resize(rows * part.len(), 0.0);
            score_rows(step.queries, step.d, step.keys, part.clone(), step.scale, &mut self.chunk);
            let rows_iter =
                self.chunk.chunks_exact(part.len()).zip(self.fixed_max.iter_mut().zip(&mut self.fixed_sum));
            for (scores, (max, sum)) in rows_iter {
                let top = scores.iter().copied().fold(*max, f32::max);
                *sum = *sum * (*max - top).exp() + scores.iter().map(|&s| (s - top).exp()).sum::<f32>();
                *max = top;
            }
        }
    }

    /// How many units of `order` (best first) it takes for the estimated mass to reach
    /// the share `p` of the total of `rows` query rows: units are taken while it is below.
    pub(crate) fn units_to_reach(&self, order: &[u32], p: f32, rows: usize) -> usize {
        let goal = p * rows as f32;
        let mut have = self.fixed;
        for (i, &u) in order.iter().enumerate() {
            if have >= goal {
                return i;
            }
            have += self.weights[u as usize];
        }
        order.len()
    }
}
