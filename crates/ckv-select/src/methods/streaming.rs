//! StreamingLLM: the sink and the most recent tokens.

use std::ops::Range;

use ckv_core::Element;

use crate::{Goal, Growth, Method, SelectError, Selector, StepCtx};

/// Takes the most recent clustered tokens, so that with the sink, tail and current token the
/// step attends to the sink and the last `B - s` tokens.
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamingLlmSelector;

impl<E: Element> Selector<E> for StreamingLlmSelector {
    fn method(&self) -> Method {
        Method::StreamingLlm
    }

    fn grow(&mut self, _: &[E], _: usize, _: Range<u32>, _: Growth) -> Result<(), SelectError> {
        Ok(())
    }

    fn choose(&mut self, step: &StepCtx<'_, E>, goal: Goal, out: &mut Vec<u32>) {
        let count = goal.count;
        let end = step.regions.clustered().end;
        out.extend(end - count as u32..end);
    }
}
