//! H2O: heavy hitters by accumulated attention; evicted tokens never return.

use std::ops::Range;

use ckv_core::Element;

use crate::rank::partition_top;
use crate::{Goal, Growth, Method, SelectError, Selector, StepCtx};

/// Keeps the clustered tokens that received the most attention so far. A token dropped once
/// is evicted for good: it is never attended to again, unlike in ClusterKV.
#[derive(Debug, Clone, Default)]
pub struct H2oSelector {
    /// Accumulated attention probability per token position.
    accumulated: Vec<f32>,
    /// Clustered tokens not evicted yet.
    kept: Vec<u32>,
}

impl H2oSelector {
    /// A selector with room for the scores of `tokens` tokens before it reallocates.
    pub fn with_capacity(tokens: usize) -> Self {
        Self { accumulated: Vec::with_capacity(tokens), kept: Vec::new() }
    }
}

impl<E: Element> Selector<E> for H2oSelector {
    fn method(&self) -> Method {
        Method::H2o
    }

    fn grow(&mut self, _: &[E], _: usize, tokens: Range<u32>, _: Growth) -> Result<(), SelectError> {
        self.kept.extend(tokens);
        Ok(())
    }

    fn choose(&mut self, _: &StepCtx<'_, E>, goal: Goal, out: &mut Vec<u32>) {
        let count = goal.count;
        let acc = &self.accumulated;
        partition_top(&mut self.kept, count, |id| acc.get(id as usize).copied().unwrap_or(0.0));
        self.kept.truncate(count);
        out.extend_from_slice(&self.kept);
    }

    fn observe(&mut self, ids: &[u32], probs: &[f32]) {
        if let Some(&last) = ids.iter().max()
            && self.accumulated.len() <= last as usize
        {
            self.accumulated.resize(last as usize + 1, 0.0);
        }
        for (&id, &p) in ids.iter().zip(probs) {
            self.accumulated[id as usize] += p;
        }
    }
}
