//! The [`Selector`] trait and the one place where the budget rule and the GQA policy are
//! applied to every method.

use std::ops::Range;

use ckv_core::Element;
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
    /// The softmax scale of the attention (`1 / sqrt(d)` by default): a mass-targeted
    /// budget estimates probabilities with it.
    pub scale: f32,
    /// The regions of this step.
    pub regions: Regions,
}

impl<'a, E> StepCtx<'a, E> {
    /// The same step for query row `r` alone.
    pub fn row(&self, r: usize) -> StepCtx<'a, E> {
        StepCtx { queries: &self.queries[r * self.d..(r + 1) * self.d], n_queries: 1, ..*self }
    }
}

/// What one selection must choose from the clustered region.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Goal {
    /// Ids to choose: exactly this many without a mass target, at most this many with one.
    pub count: usize,
    /// The mass target `p` ([`Budget::Mass`](crate::Budget::Mass)): stop once the estimated
    /// attention mass of sink, chosen, tail and current reaches `p` of the estimated total.
    pub mass: Option<f32>,
}

/// A KV selection method for one (sequence, layer, KV head); it keeps its own state
/// (an index, page summaries, accumulated scores) across steps.
pub trait Selector<E: Element>: Send + Sync {
    /// Which method this is.
    fn method(&self) -> Method;

    /// The clustered region grew by `tokens` (their keys are rows of `keys`, `[len, d]`).
    fn grow(&mut self, keys: &[E], d: usize, tokens: Range<u32>, growth: Growth) -> Result<(), SelectError>;

    /// Appends distinct ids from `step.regions.clustered()` to `out`, in any order, for the
    /// `step.n_queries` rows together: exactly `goal.count` of them (below the size of the
    /// region), or at most that many under a mass target (methods that take no mass target
    /// are refused one when their parameters are validated).
    fn choose(&mut self, step: &StepCtx<'_, E>, goal: Goal, out: &mut Vec<u32>);

    /// Like [`choose`](Selector::choose) for each of the `step.n_queries` rows on its own:
    /// row `r`'s ids are appended to `outs[r]`. Methods that can score every row in one pass
    /// (ClusterKV reads its centroids once for the group) override it.
    fn choose_each(&mut self, step: &StepCtx<'_, E>, goal: Goal, outs: &mut [Vec<u32>]) {
        for (r, out) in outs.iter_mut().enumerate() {
            self.choose(&step.row(r), goal, out);
        }
    }

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

/// Checks a step's shapes and context and returns what its selections must choose, or
/// `None` when every clustered token is taken (dense, a fixed budget that covers them, or an
/// empty clustered region).
fn plan<E: Element>(
    selector: &dyn Selector<E>,
    params: &ValidSelectParams,
    step: &StepCtx<'_, E>,
) -> Result<Option<Goal>, SelectError> {
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
    let clustered = regions.clustered().len();
    if selector.method() == Method::Dense {
        return Ok(None);
    }
    let goal = Goal { count: regions.selected_count(params.budget()), mass: params.mass() };
    Ok((clustered > 0 && (goal.count < clustered || goal.mass.is_some())).then_some(goal))
}

/// Starts a list with the sink's ids (and every clustered one when `plan` is `None`).
fn open_list(regions: Regions, goal: Option<Goal>, out: &mut Vec<u32>) -> usize {
    out.clear();
    out.extend(regions.sink());
    if goal.is_none() {
        out.extend(regions.clustered());
    }
    out.len()
}

/// Sorts the chosen ids from `start` on, then appends the tail and the current token.
fn close_list(regions: Regions, goal: Option<Goal>, start: usize, method: Method, out: &mut Vec<u32>) {
    if let Some(goal) = goal {
        // Linear when the method already sorted them (ClusterKV and Quest do).
        out[start..].sort_unstable();
        let chosen = out.len() - start;
        debug_assert!(
            chosen == goal.count || (goal.mass.is_some() && chosen <= goal.count),
            "{method} chose {chosen} of {}",
            goal.count
        );
    }
    out.extend(regions.tail());
    out.push(regions.current());
}

/// Fills `out` with the sorted ids one step attends to: sink, selected, tail, current;
/// `min(B, t + 1)` of them under a fixed budget (all `t + 1` for [`Method::Dense`]), at most
/// that many under a mass target.
pub fn select_step<E: Element>(
    selector: &mut dyn Selector<E>,
    params: &ValidSelectParams,
    step: &StepCtx<'_, E>,
    out: &mut Vec<u32>,
) -> Result<(), SelectError> {
    let goal = plan(selector, params, step)?;
    let start = open_list(step.regions, goal, out);
    if let Some(goal) = goal {
        selector.choose(step, goal, out);
    }
    close_list(step.regions, goal, start, selector.method(), out);
    Ok(())
}

/// Selections of the query heads of one KV head's group (`queries` is `[group, d]`):
/// `outs[i]` gets selection `i`, one per query head under [`GqaPolicy::PerQueryHead`]
/// (every row scored in one pass where the method can), one for the whole group under
/// [`GqaPolicy::PerKvHead`].
pub fn select_group<E: Element>(
    selector: &mut dyn Selector<E>,
    params: &ValidSelectParams,
    step: &StepCtx<'_, E>,
    outs: &mut [Vec<u32>],
) -> Result<(), SelectError> {
    check_queries(step)?;
    let want = params.gqa().selections_per_group(step.n_queries);
    if outs.len() != want {
        return Err(SelectError::from(ckv_core::ParamError::new(
            "outs",
            outs.len().to_string(),
            format!("{want} selection buffers for {} under {}", step.n_queries, params.gqa()),
        )));
    }
    match params.gqa() {
        GqaPolicy::PerKvHead => select_step(selector, params, step, &mut outs[0]),
        GqaPolicy::PerQueryHead => {
            let goal = plan(selector, params, step)?;
            let mut start = 0;
            for out in outs.iter_mut() {
                start = open_list(step.regions, goal, out);
            }
            if let Some(goal) = goal {
                selector.choose_each(step, goal, outs);
            }
            for out in outs.iter_mut() {
                close_list(step.regions, goal, start, selector.method(), out);
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
