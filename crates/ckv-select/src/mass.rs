//! The mass-targeted budget (DESIGN section 4): the attention mass that ranked units
//! (clusters, or tokens for the oracle) are estimated to hold, and how many of them reach a
//! target share.

use std::ops::Range;

use ckv_core::{Element, dot, score_rows};

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
    /// tokens; the sink, tail and current token are scored exactly from `step.keys`.
    ///
    /// A unit's mass is `size(u) * exp(scale * q · c_u + scale² |q|² spread[u] / (2 d))`:
    /// its members' scores `q · k` spread around `q · c_u`, and the mean of their
    /// exponentials is that of a normal spread with variance `|q|² spread[u] / d`
    /// (`spread[u]`: the mean squared distance of the members to the centroid; isotropic),
    /// not the exponential of the mean, which underestimates a cluster holding one strongly
    /// attended key. An empty `spread` means exact units (the oracle's tokens).
    pub(crate) fn estimate<E: Element>(
        &mut self,
        step: &StepCtx<'_, E>,
        scores: &[f32],
        size: impl Fn(usize) -> usize,
        spread: &[f32],
    ) {
        let (rows, regions, d) = (step.n_queries, step.regions, step.d);
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
        let rows_iter = scores.chunks_exact(n.max(1)).zip(step.queries.chunks_exact(d));
        for ((row, q), (&fixed_max, &fixed_sum)) in rows_iter.zip(self.fixed_max.iter().zip(&self.fixed_sum))
        {
            let half_var = 0.5 * step.scale * step.scale * dot(q, q) / d as f32;
            self.row_mass.clear();
            self.row_mass.extend(
                row.iter()
                    .enumerate()
                    .map(|(u, &s)| s * step.scale + spread.get(u).map_or(0.0, |v| half_var * v)),
            );
            let top = self.row_mass.iter().copied().fold(fixed_max, f32::max);
            for (u, m) in self.row_mass.iter_mut().enumerate() {
                *m = size(u) as f32 * (*m - top).exp();
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Regions;

    /// Two units beside a sink of one token and the current token: without spread the
    /// shares are `size * exp(scale * score)` over the total; a spread raises its unit's
    /// share by `exp(scale² |q|² spread / (2 d))`.
    #[test]
    fn shares_follow_the_definition() {
        let (d, scale) = (2, 0.5f32);
        let q = [1.0f32, 2.0];
        // Token 0 (sink) and token 3 (current); tokens 1-2 are clustered.
        let keys = [0.0f32, 1.0, 9.0, 9.0, 9.0, 9.0, 1.0, 0.0];
        let step = StepCtx {
            queries: &q,
            n_queries: 1,
            keys: &keys,
            d,
            scale,
            regions: Regions::new(1, 3, 3).unwrap(),
        };
        let scores = [1.0f32, -2.0];
        let sizes = [3usize, 1];
        let exact = |spread: &[f32]| {
            let boost: Vec<f32> = (0..2)
                .map(|u| spread.get(u).map_or(0.0, |v| 0.5 * scale * scale * 5.0 * v / d as f32))
                .collect();
            let units: Vec<f64> =
                (0..2).map(|u| sizes[u] as f64 * f64::from(scale * scores[u] + boost[u]).exp()).collect();
            let fixed = f64::from(scale * 2.0).exp() + f64::from(scale * 1.0).exp();
            let total = fixed + units.iter().sum::<f64>();
            (fixed / total, units.iter().map(|m| m / total).collect::<Vec<_>>())
        };
        for spread in [&[][..], &[0.8, 0.0][..]] {
            let mut mass = MassEstimate::default();
            mass.estimate(&step, &scores, |u| sizes[u], spread);
            let (fixed, units) = exact(spread);
            assert!((f64::from(mass.fixed) - fixed).abs() < 1e-6, "{} vs {fixed}", mass.fixed);
            for (w, want) in mass.weights.iter().zip(&units) {
                assert!((f64::from(*w) - want).abs() < 1e-6, "{w} vs {want}");
            }
            // Unit 0 is ranked first; reaching the fixed share alone takes no unit.
            assert_eq!(mass.units_to_reach(&[0, 1], mass.fixed * 0.99, 1), 0);
            assert_eq!(mass.units_to_reach(&[0, 1], 1.0, 1), 2);
        }
    }
}
