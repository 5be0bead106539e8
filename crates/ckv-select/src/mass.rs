//! The mass-targeted budget (DESIGN section 4): the attention mass that ranked units
//! (clusters, or tokens for the oracle) are estimated to hold, and how many of them reach a
//! target share.

use ckv_cluster::{Element, score_rows};

use crate::StepCtx;

/// One selection's estimate, each query row's mass normalised to its own total so that
/// rows sharing a selection weigh alike. Its buffers are reused from step to step.
#[derive(Debug, Clone, Default)]
pub(crate) struct MassEstimate {
    fixed_ids: Vec<u32>,
    fixed_scores: Vec<f32>,
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
        let (d, rows, regions) = (step.d, step.n_queries, step.regions);
        let n = scores.len() / rows.max(1);
        self.fixed_ids.clear();
        self.fixed_ids.extend(regions.sink().chain(regions.tail()));
        self.fixed_ids.push(regions.current());
        let f = self.fixed_ids.len();
        self.fixed_scores.clear();
        self.fixed_scores.resize(rows * f, 0.0);
        let ids = self.fixed_ids.iter().map(|&i| i as usize);
        score_rows(step.queries, d, step.keys, ids, step.scale, &mut self.fixed_scores);
        self.weights.clear();
        self.weights.resize(n, 0.0);
        self.fixed = 0.0;
        for (row, fixed) in scores.chunks_exact(n.max(1)).zip(self.fixed_scores.chunks_exact(f)) {
            let top =
                row.iter().map(|&s| s * step.scale).chain(fixed.iter().copied()).fold(f32::MIN, f32::max);
            self.row_mass.clear();
            self.row_mass
                .extend(row.iter().enumerate().map(|(u, &s)| size(u) as f32 * (s * step.scale - top).exp()));
            let fixed_mass: f32 = fixed.iter().map(|&s| (s - top).exp()).sum();
            let total = fixed_mass + self.row_mass.iter().sum::<f32>();
            self.fixed += fixed_mass / total;
            for (w, m) in self.weights.iter_mut().zip(&self.row_mass) {
                *w += m / total;
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
