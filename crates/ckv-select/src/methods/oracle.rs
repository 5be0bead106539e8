//! Oracle top-k: the tokens with the highest exact `q · k`.

use std::ops::Range;

use ckv_core::{Element, dot, score_rows};

use crate::mass::MassEstimate;
use crate::rank::{partition_top, rank_covering};
use crate::selector::sum_queries;
use crate::{Goal, Growth, Method, SelectError, Selector, StepCtx};

/// Takes the clustered tokens of highest exact score `q · k` (summed over the query rows);
/// the upper bound of any selection by score. Under a mass target it is the exact top-p:
/// tokens in score order until their attention mass, with the sink, tail and current
/// token, reaches the target (the ceiling of any mass-targeted selection).
#[derive(Debug, Clone, Default)]
pub struct OracleSelector {
    query: Vec<f32>,
    scores: Vec<f32>,
    row_scores: Vec<f32>,
    ids: Vec<u32>,
    order: Vec<u32>,
    mass: MassEstimate,
}

impl<E: Element> Selector<E> for OracleSelector {
    fn method(&self) -> Method {
        Method::Oracle
    }

    fn grow(&mut self, _: &[E], _: usize, _: Range<u32>, _: Growth) -> Result<(), SelectError> {
        Ok(())
    }

    fn choose(&mut self, step: &StepCtx<'_, E>, goal: Goal, out: &mut Vec<u32>) {
        let d = step.d;
        let region = step.regions.clustered();
        sum_queries(step.queries, d, &mut self.query);
        let keys = &step.keys[region.start as usize * d..region.end as usize * d];
        self.scores.clear();
        self.scores.extend(keys.chunks_exact(d).map(|k| dot(&self.query, k)));
        let count = goal.count;
        if let Some(p) = goal.mass {
            // Exact top-p: every token's exact probability, tokens in score order. One query
            // row's scores are the ranking scores themselves.
            let row_scores = if step.n_queries == 1 {
                &self.scores
            } else {
                self.row_scores.clear();
                self.row_scores.resize(step.n_queries * region.len(), 0.0);
                let ids = region.clone().map(|i| i as usize);
                score_rows(step.queries, d, step.keys, ids, 1.0, &mut self.row_scores);
                &self.row_scores
            };
            self.mass.estimate(step, row_scores, |_| 1, &[]);
            rank_covering(&self.scores, count, |_| 1, &mut self.order);
            let take = self.mass.units_to_reach(&self.order, p, step.n_queries).min(count);
            out.extend(self.order[..take].iter().map(|&i| region.start + i));
            return;
        }
        self.ids.clear();
        self.ids.extend(region.clone());
        let scores = &self.scores;
        partition_top(&mut self.ids, count, |id| scores[(id - region.start) as usize]);
        out.extend_from_slice(&self.ids[..count]);
    }
}
