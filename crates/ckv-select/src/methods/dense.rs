//! Dense attention: every token.

use std::ops::Range;

use ckv_core::Element;

use crate::{Goal, Growth, Method, SelectError, Selector, StepCtx};

/// Attends to every token; the budget does not apply.
#[derive(Debug, Clone, Copy, Default)]
pub struct DenseSelector;

impl<E: Element> Selector<E> for DenseSelector {
    fn method(&self) -> Method {
        Method::Dense
    }

    fn grow(&mut self, _: &[E], _: usize, _: Range<u32>, _: Growth) -> Result<(), SelectError> {
        Ok(())
    }

    fn choose(&mut self, step: &StepCtx<'_, E>, goal: Goal, out: &mut Vec<u32>) {
        let count = goal.count;
        out.extend(step.regions.clustered().take(count));
    }
}
