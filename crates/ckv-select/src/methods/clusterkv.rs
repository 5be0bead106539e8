//! ClusterKV: clusters of keys ranked by `q · centroid`.

use std::ops::Range;

use ckv_cluster::{ClusterParams, Clustering, Init, kmeans};
use ckv_core::{Element, ParamGuard, score_rows};
use ckv_index::ClusterIndex;

use crate::mass::MassEstimate;
use crate::rank::{rank_covering, sort_ids, take_units};
use crate::selector::sum_queries;
use crate::{Goal, Growth, Method, SelectError, Selector, StepCtx, ValidSelectParams};
use ckv_core::derive_seed;

/// Clusters the prompt's keys (`ceil((P - s) / tokens_per_cluster)` clusters) and every full
/// tail window (`window_clusters` clusters) into a [`ClusterIndex`]; at each step ranks the
/// clusters by `q · centroid` (the f16 centroids, f32 sums; summed over the query rows that
/// share the selection), descending, ties to the lower id, and takes whole clusters until
/// the count is reached, the last one cut. Under a mass target it stops earlier, once the
/// estimated mass (per cluster `size * exp(scale * q · centroid)`, raised by the spread of
/// its members around the centroid) reaches the target.
/// [`choose_each`](Selector::choose_each) scores every query row of a group in one pass over
/// the centroids.
#[derive(Debug, Clone)]
pub struct ClusterKvSelector {
    index: Option<ClusterIndex>,
    tokens_per_cluster: usize,
    window_clusters: usize,
    max_iters: usize,
    init: Init,
    seed: u64,
    clusterings: u64,
    query: Vec<f32>,
    scores: Vec<f32>,
    row_scores: Vec<f32>,
    order: Vec<u32>,
    bits: Vec<u64>,
    mass: MassEstimate,
    /// Per cluster, the mean squared distance of its members' keys to its centroid: the
    /// spread of their scores around the centroid's, kept only for a mass target.
    spread: Option<Vec<f32>>,
}

impl ClusterKvSelector {
    /// A selector with the clustering settings of `params` and this head's `seed`.
    pub fn new(params: &ValidSelectParams, seed: u64) -> Self {
        Self {
            index: None,
            tokens_per_cluster: params.tokens_per_cluster(),
            window_clusters: params.window_clusters(),
            max_iters: params.max_iters(),
            init: params.init(),
            seed,
            clusterings: 0,
            query: Vec::new(),
            scores: Vec::new(),
            row_scores: Vec::new(),
            order: Vec::new(),
            bits: Vec::new(),
            mass: MassEstimate::default(),
            spread: params.mass().map(|_| Vec::new()),
        }
    }
}

/// Scores of every centroid of `index` for the query rows `queries` (`[rows, d]`), into
/// `scores` (`[rows, C]`), unscaled; one read of the centroids for all rows.
fn score_centroids(index: &ClusterIndex, queries: &[f32], d: usize, scores: &mut Vec<f32>) {
    let c = index.n_clusters();
    scores.clear();
    scores.resize(queries.len() / d * c, 0.0);
    score_rows(queries, d, index.centroids_f16(), 0..c, 1.0, scores);
}

/// Per cluster of `clustering` (over the key rows `keys`, `[n, d]`), the mean squared
/// distance of its members to its centroid (0 for an empty cluster).
fn spreads<E: Element>(clustering: &Clustering, keys: &[E], d: usize) -> Vec<f32> {
    let mut sums = vec![0.0f64; clustering.n_clusters()];
    for (key, &label) in keys.chunks_exact(d).zip(clustering.labels()) {
        let c = &clustering.centroids()[label as usize * d..(label as usize + 1) * d];
        let dist: f32 = key.iter().zip(c).map(|(k, c)| (k.to_f32() - c).powi(2)).sum();
        sums[label as usize] += f64::from(dist);
    }
    sums.iter()
        .zip(clustering.sizes())
        .map(|(&s, &n)| if n == 0 { 0.0 } else { (s / f64::from(n)) as f32 })
        .collect()
}

/// The buffers of one selection from ranked scores.
struct Pick<'a> {
    index: &'a ClusterIndex,
    spread: &'a [f32],
    order: &'a mut Vec<u32>,
    bits: &'a mut Vec<u64>,
    mass: &'a mut MassEstimate,
}

impl Pick<'_> {
    /// Ranks the clusters by `rank` and appends the members of the best to `out`; under a
    /// mass target `row_scores` (`[step.n_queries, C]`) give the estimate.
    fn take<E: Element>(
        &mut self,
        step: &StepCtx<'_, E>,
        goal: Goal,
        rank: &[f32],
        row_scores: &[f32],
        out: &mut Vec<u32>,
    ) {
        let index = self.index;
        let size = |c: usize| index.members_of(c).len();
        rank_covering(rank, goal.count, |c| size(c as usize), self.order);
        let units = match goal.mass {
            None => self.order.len(),
            Some(p) => {
                self.mass.estimate(step, row_scores, size, self.spread);
                self.mass.units_to_reach(self.order, p, step.n_queries)
            }
        };
        let start = out.len();
        take_units(&self.order[..units], goal.count, |c| index.members_of(c as usize).iter().copied(), out);
        sort_ids(out, start, step.regions.clustered(), self.bits);
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
            .init(self.init)
            .seed(derive_seed(self.seed, &[self.clusterings]))
            .validate()?;
        let rows_of = &keys[tokens.start as usize * d..tokens.end as usize * d];
        let clustering = kmeans(&params, rows_of, d)?;
        let index = match &mut self.index {
            Some(index) => index,
            none => none.insert(ClusterIndex::new(d)?),
        };
        index.append(&clustering, tokens.start)?;
        if let Some(spread) = &mut self.spread {
            spread.extend(spreads(&clustering, rows_of, d));
        }
        self.clusterings += 1;
        Ok(())
    }

    fn choose(&mut self, step: &StepCtx<'_, E>, goal: Goal, out: &mut Vec<u32>) {
        let Self { index: Some(index), query, scores, row_scores, order, bits, mass, spread, .. } = self
        else {
            return;
        };
        // The group's rows summed, then one score per cluster (as the GPU kernel ranks).
        sum_queries(step.queries, step.d, query);
        score_centroids(index, query, step.d, scores);
        let rows = match (goal.mass, step.n_queries) {
            (Some(_), n) if n > 1 => {
                score_centroids(index, step.queries, step.d, row_scores);
                &row_scores[..]
            }
            _ => &scores[..],
        };
        let spread = spread.as_deref().unwrap_or_default();
        Pick { index, spread, order, bits, mass }.take(step, goal, scores, rows, out);
    }

    fn choose_each(&mut self, step: &StepCtx<'_, E>, goal: Goal, outs: &mut [Vec<u32>]) {
        let Self { index: Some(index), row_scores, order, bits, mass, spread, .. } = self else { return };
        score_centroids(index, step.queries, step.d, row_scores);
        let c = index.n_clusters();
        let spread = spread.as_deref().unwrap_or_default();
        let mut pick = Pick { index, spread, order, bits, mass };
        for (r, out) in outs.iter_mut().enumerate() {
            let scores = &row_scores[r * c..(r + 1) * c];
            pick.take(&step.row(r), goal, scores, scores, out);
        }
    }

    fn index(&self) -> Option<&ClusterIndex> {
        self.index.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Regions, SelectParams, select_step};
    use ckv_core::dot;
    use half::f16;

    /// Far more than 256 clusters (the reference code's cap) rank and fill correctly.
    #[test]
    fn ranks_a_thousand_clusters() {
        let (d, prompt, sink) = (8, 3016, 16);
        let keys: Vec<f32> =
            (0..(prompt + 1) * d).map(|i| ((i * 7919 % 3001) as f32 / 1500.0) - 1.0).collect();
        let params = SelectParams::new(Method::ClusterKv)
            .budget(400)
            .sink(sink)
            .tokens_per_cluster(3)
            .max_iters(3)
            .validate()
            .unwrap();
        let mut selector = ClusterKvSelector::new(&params, 5);
        Selector::<f32>::grow(&mut selector, &keys, d, sink as u32..prompt as u32, Growth::Prompt).unwrap();
        let index = Selector::<f32>::index(&selector).unwrap().clone();
        assert_eq!(index.n_clusters(), 1000);
        let q: Vec<f32> = (0..d).map(|i| (i as f32 * 0.7).cos()).collect();
        let step = StepCtx {
            queries: &q,
            n_queries: 1,
            keys: &keys,
            d,
            scale: 1.0,
            regions: Regions::new(16, 3016, 3016).unwrap(),
        };
        let mut ids = Vec::new();
        select_step(&mut selector, &params, &step, &mut ids).unwrap();
        // Reference: sort cluster ids by (score descending, id ascending), take whole
        // clusters, the last one cut to its first members.
        let f16_centroid = |c: usize| -> Vec<f32> {
            index.centroids_f16()[c * d..(c + 1) * d].iter().map(|x| f16::to_f32(*x)).collect()
        };
        let mut ranked: Vec<(f32, usize)> = (0..1000).map(|c| (dot(&q, &f16_centroid(c)), c)).collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let count = 400 - 16 - 1;
        let mut want: Vec<u32> =
            ranked.iter().flat_map(|&(_, c)| index.members_of(c).to_vec()).take(count).collect();
        want.sort_unstable();
        let got: Vec<u32> = ids.iter().copied().filter(|&id| (16..3016).contains(&id)).collect();
        assert_eq!(got, want);
        assert!(ranked[..10].iter().any(|&(_, c)| c >= 256), "a cluster id above 255 ranks in the top 10");
    }
}
