//! ClusterKV: clusters of keys ranked by `q · centroid`.

use std::ops::Range;

use ckv_cluster::{ClusterParams, Element, dot, kmeans};
use ckv_index::ClusterIndex;

use crate::rank::{rank_descending, take_units};
use crate::selector::sum_queries;
use crate::{Growth, Method, SelectError, Selector, StepCtx, ValidSelectParams, derive_seed};

/// Clusters the prompt's keys (`ceil((P - s) / tokens_per_cluster)` clusters) and every full
/// tail window (`window_clusters` clusters) into a [`ClusterIndex`]; at each step ranks the
/// clusters by `q · centroid` (summed over the query rows), descending, ties to the lower
/// id, and takes whole clusters until the count is reached, the last one cut.
#[derive(Debug, Clone)]
pub struct ClusterKvSelector {
    index: Option<ClusterIndex>,
    tokens_per_cluster: usize,
    window_clusters: usize,
    max_iters: usize,
    seed: u64,
    clusterings: u64,
    query: Vec<f32>,
    scores: Vec<f32>,
    order: Vec<u32>,
}

impl ClusterKvSelector {
    /// A selector with the clustering settings of `params` and this head's `seed`.
    pub fn new(params: &ValidSelectParams, seed: u64) -> Self {
        Self {
            index: None,
            tokens_per_cluster: params.tokens_per_cluster(),
            window_clusters: params.window_clusters(),
            max_iters: params.max_iters(),
            seed,
            clusterings: 0,
            query: Vec::new(),
            scores: Vec::new(),
            order: Vec::new(),
        }
    }
}

impl<E: Element> Selector<E> for ClusterKvSelector {
    fn method(&self) -> Method {
        Method::ClusterKv
    }

    fn grow(&mut self, keys: &[E], d: usize, tokens: Range<u32>, growth: Growth) -> Result<(), SelectError> {
        let rows = tokens.len();
        if rows == 0 {
            return Ok(());
        }
        let clusters = match growth {
            Growth::Prompt => rows.div_ceil(self.tokens_per_cluster),
            Growth::Window => self.window_clusters.min(rows),
        };
        let params = ClusterParams::new(clusters)
            .max_iters(self.max_iters)
            .seed(derive_seed(self.seed, &[self.clusterings]))
            .validate()?;
        let clustering = kmeans(&params, &keys[tokens.start as usize * d..tokens.end as usize * d], d)?;
        let index = match &mut self.index {
            Some(index) => index,
            none => none.insert(ClusterIndex::new(d)?),
        };
        index.append(&clustering, tokens.start)?;
        self.clusterings += 1;
        Ok(())
    }

    fn choose(&mut self, step: &StepCtx<'_, E>, count: usize, out: &mut Vec<u32>) {
        let Some(index) = &self.index else { return };
        sum_queries(step.queries, step.d, &mut self.query);
        self.scores.clear();
        self.scores.extend(index.centroids().chunks_exact(step.d).map(|c| dot(&self.query, c)));
        rank_descending(&self.scores, &mut self.order);
        take_units(&self.order, count, |c| index.members_of(c as usize).iter().copied(), out);
    }

    fn index(&self) -> Option<&ClusterIndex> {
        self.index.as_ref()
    }
}
