//! The [`Selector`] trait and the one place where the budget rule and the GQA policy are
//! applied to every method.

use std::ops::Range;

use ckv_cluster::Element;
use ckv_index::ClusterIndex;

use crate::{GqaPolicy, Method, Regions, SelectError, ValidSelectParams};

/// Why the clustered region grew.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Growth {
    /// The prompt's `[s, P)` after prefill.
    Prompt,
    /// A full tail window at decode time.
    Window,
}

/// What a method sees at one decode step of one KV head.
#[derive(Debug, Clone, Copy)]
pub struct StepCtx<'a, E> {
    /// Query rows `[n_queries, d]` (after RoPE) that share this selection.
    pub queries: &'a [f32],
    /// Number of query rows.
    pub n_queries: usize,
    /// All key rows of the head, `[t + 1, d]` at least.
    pub keys: &'a [E],
    /// Head dimension.
    pub d: usize,
    /// The regions of this step.
    pub regions: Regions,
}

/// A KV selection method for one (sequence, layer, KV head); it keeps its own state
/// (an index, page summaries, accumulated scores) across steps.
pub trait Selector<E: Element>: Send + Sync {
    /// Which method this is.
    fn method(&self) -> Method;

    /// The clustered region grew by `tokens` (their keys are rows of `keys`, `[len, d]`).
    fn grow(&mut self, keys: &[E], d: usize, tokens: Range<u32>, growth: Growth) -> Result<(), SelectError>;

    /// Appends exactly `count` distinct ids from `step.regions.clustered()` to `out`, in any
    /// order; `count` is below the size of the clustered region.
    fn choose(&mut self, step: &StepCtx<'_, E>, count: usize, out: &mut Vec<u32>);

    /// Attention probabilities that the tokens `ids` received (H2O accumulates them).
    fn observe(&mut self, ids: &[u32], probs: &[f32]) {
        let _ = (ids, probs);
    }

    /// The cluster index, for methods that keep one (ClusterKV).
    fn index(&self) -> Option<&ClusterIndex> {
        None
    }
}

/// Checks that `step.queries` holds `step.n_queries >= 1` rows of `d` values.
fn check_queries<E>(step: &StepCtx<'_, E>) -> Result<(), SelectError> {
    if step.n_queries == 0 || step.queries.len() != step.n_queries * step.d {
        return Err(SelectError::QueryShape {
            expected: step.n_queries.max(1) * step.d,
            heads: step.n_queries,
            d: step.d,
            given: step.queries.len(),
        });
    }
    Ok(())
}

/// Fills `out` with the sorted ids one step attends to: sink, selected, tail, current;
/// `min(B, t + 1)` of them (all `t + 1` for [`Method::Dense`]).
pub fn select_step<E: Element>(
    selector: &mut dyn Selector<E>,
    params: &ValidSelectParams,
    step: &StepCtx<'_, E>,
    out: &mut Vec<u32>,
) -> Result<(), SelectError> {
    let (d, regions) = (step.d, step.regions);
    check_queries(step)?;
    if step.keys.len() < regions.context() * d {
        return Err(SelectError::KeysShape {
            expected: regions.context(),
            given: step.keys.len() / d.max(1),
            current: regions.current(),
        });
    }
    if let Some(max_context) = params.max_context()
        && regions.context() > max_context
    {
        return Err(SelectError::ContextTooLong { context: regions.context(), max_context });
    }
    let clustered = regions.clustered();
    let count = match selector.method() {
        Method::Dense => clustered.len(),
        _ => regions.selected_count(params.budget()),
    };
    out.clear();
    out.extend(regions.sink());
    if count == clustered.len() {
        out.extend(clustered);
    } else {
        let start = out.len();
        selector.choose(step, count, out);
        // Linear when the method already sorted them (ClusterKV and Quest do).
        out[start..].sort_unstable();
        debug_assert_eq!(out.len() - start, count, "{} chose a wrong count", selector.method());
    }
    out.extend(regions.tail());
    out.push(regions.current());
    Ok(())
}

/// Selections of the query heads of one KV head's group (`queries` is `[group, d]`):
/// `outs[i]` gets selection `i`, one per query head under [`GqaPolicy::PerQueryHead`],
/// one for the whole group under [`GqaPolicy::PerKvHead`].
pub fn select_group<E: Element>(
    selector: &mut dyn Selector<E>,
    params: &ValidSelectParams,
    step: &StepCtx<'_, E>,
    outs: &mut [Vec<u32>],
) -> Result<(), SelectError> {
    check_queries(step)?;
    let want = params.gqa().selections_per_group(step.n_queries);
    if outs.len() != want {
        return Err(SelectError::InvalidParam {
            name: "outs",
            value: outs.len().to_string(),
            expected: format!("{want} selection buffers for {} under {}", step.n_queries, params.gqa()),
        });
    }
    match params.gqa() {
        GqaPolicy::PerKvHead => select_step(selector, params, step, &mut outs[0]),
        GqaPolicy::PerQueryHead => {
            for (h, out) in outs.iter_mut().enumerate() {
                let one =
                    StepCtx { queries: &step.queries[h * step.d..(h + 1) * step.d], n_queries: 1, ..*step };
                select_step(selector, params, &one, out)?;
            }
            Ok(())
        }
    }
}

/// Sums the query rows `[n, d]` into `sum` (`d` values).
pub(crate) fn sum_queries(queries: &[f32], d: usize, sum: &mut Vec<f32>) {
    sum.clear();
    sum.resize(d, 0.0);
    for q in queries.chunks_exact(d) {
        for (s, x) in sum.iter_mut().zip(q) {
            *s += x;
        }
    }
}
