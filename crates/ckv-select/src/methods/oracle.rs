//! Oracle top-k: the tokens with the highest exact `q · k`.

use std::ops::Range;

use ckv_cluster::{Element, dot};

use crate::rank::partition_top;
use crate::selector::sum_queries;
use crate::{Growth, Method, SelectError, Selector, StepCtx};

/// Takes the clustered tokens of highest exact score `q · k` (summed over the query rows);
/// the upper bound of any selection by score.
#[derive(Debug, Clone, Default)]
pub struct OracleSelector {
    query: Vec<f32>,
    scores: Vec<f32>,
    ids: Vec<u32>,
}

impl<E: Element> Selector<E> for OracleSelector {
    fn method(&self) -> Method {
        Method::Oracle
    }

    fn grow(&mut self, _: &[E], _: usize, _: Range<u32>, _: Growth) -> Result<(), SelectError> {
        Ok(())
    }

    fn choose(&mut self, step: &StepCtx<'_, E>, count: usize, out: &mut Vec<u32>) {
        let d = step.d;
        let region = step.regions.clustered();
        sum_queries(step.queries, d, &mut self.query);
        let keys = &step.keys[region.start as usize * d..region.end as usize * d];
        self.scores.clear();
        self.scores.extend(keys.chunks_exact(d).map(|k| dot(&self.query, k)));
        self.ids.clear();
        self.ids.extend(region.clone());
        let scores = &self.scores;
        partition_top(&mut self.ids, count, |id| scores[(id - region.start) as usize]);
        out.extend_from_slice(&self.ids[..count]);
    }
}
