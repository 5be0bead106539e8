//! The regions of one (sequence, layer, KV head) at a decode step.

use std::ops::Range;

/// Regions at a decode step whose current token is at position `t`: sink `[0, s)`,
/// clustered `[s, c)`, tail `[c, t)`, current `t` (DESIGN section 4).
///
/// Early in a sequence (`t < s`) the sink is cut to `[0, t)` and the other regions are
/// empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Regions {
    sink: u32,
    clustered_end: u32,
    current: u32,
}

/// Regions that contradict each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid regions: sink {sink}, clustered end {clustered_end}, current {current}")]
pub struct RegionsError {
    /// Sink length `s`.
    pub sink: u32,
    /// Clustered end `c`.
    pub clustered_end: u32,
    /// Current position `t`.
    pub current: u32,
}

impl Regions {
    /// Regions with sink length `sink`, clustered end `clustered_end` and current position
    /// `current`; needs `sink <= clustered_end` and `clustered_end <= max(current, sink)`.
    ///
    /// # Errors
    /// [`RegionsError`] with the three values otherwise.
    pub fn new(sink: u32, clustered_end: u32, current: u32) -> Result<Self, RegionsError> {
        if sink > clustered_end || clustered_end > current.max(sink) {
            return Err(RegionsError { sink, clustered_end, current });
        }
        Ok(Self { sink, clustered_end, current })
    }

    /// Position of the current token, `t`.
    pub fn current(&self) -> u32 {
        self.current
    }

    /// The sink, `[0, min(s, t))`.
    pub fn sink(&self) -> Range<u32> {
        0..self.sink.min(self.current)
    }

    /// The clustered region, `[s, c)` (empty while `t <= s`).
    pub fn clustered(&self) -> Range<u32> {
        self.sink..self.clustered_end.min(self.current).max(self.sink)
    }

    /// The unclustered recent tail, `[c, t)`.
    pub fn tail(&self) -> Range<u32> {
        self.clustered_end.min(self.current)..self.current
    }

    /// Tokens in the context including the current one, `t + 1`.
    pub fn context(&self) -> usize {
        self.current as usize + 1
    }

    /// How many clustered tokens a step with budget `budget` attends to:
    /// `min(B - |sink| - |tail| - 1, c - s)`, at least 0.
    pub fn selected_count(&self, budget: usize) -> usize {
        let fixed = self.sink().len() + self.tail().len() + 1;
        budget.saturating_sub(fixed).min(self.clustered().len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_and_budget_rule() {
        let r = Regions::new(16, 100, 130).unwrap();
        assert_eq!(r.sink(), 0..16);
        assert_eq!(r.clustered(), 16..100);
        assert_eq!(r.tail(), 100..130);
        assert_eq!(r.selected_count(64), 64 - 16 - 30 - 1);
        assert_eq!(r.selected_count(1000), 84);
        assert_eq!(r.selected_count(10), 0);
        let early = Regions::new(16, 16, 5).unwrap();
        assert_eq!((early.sink(), early.clustered().len(), early.tail().len()), (0..5, 0, 0));
        assert!(Regions::new(16, 10, 20).is_err());
        assert!(Regions::new(4, 30, 20).is_err());
    }
}
