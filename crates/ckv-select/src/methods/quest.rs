//! Quest: pages ranked by an upper bound of `q · k` from per-page min and max keys.

use std::ops::Range;

use ckv_core::Element;

use crate::rank::{rank_covering, sort_ids, take_units};
use crate::{Goal, Growth, Method, SelectError, Selector, StepCtx};

/// Splits the clustered region `[s, c)` into pages of `page_size` tokens, keeps the
/// element-wise min and max key of each page, scores a page by
/// `sum_i max(q_i * max_i, q_i * min_i)` (summed over the query rows) and takes the best
/// pages, the last one cut.
#[derive(Debug, Clone)]
pub struct QuestSelector {
    page_size: usize,
    /// First token of page 0 (`s`), set by the first growth.
    start: Option<u32>,
    /// End of the paged region (`c`).
    end: u32,
    d: usize,
    mins: Vec<f32>,
    maxs: Vec<f32>,
    scores: Vec<f32>,
    order: Vec<u32>,
    bits: Vec<u64>,
}

impl QuestSelector {
    /// A selector with pages of `page_size` tokens.
    pub fn new(page_size: usize) -> Self {
        Self {
            page_size: page_size.max(1),
            start: None,
            end: 0,
            d: 0,
            mins: Vec::new(),
            maxs: Vec::new(),
            scores: Vec::new(),
            order: Vec::new(),
            bits: Vec::new(),
        }
    }

    fn page(&self, start: u32, p: u32) -> Range<u32> {
        page(start, self.page_size as u32, self.end, p)
    }
}

impl<E: Element> Selector<E> for QuestSelector {
    fn method(&self) -> Method {
        Method::Quest
    }

    fn grow(&mut self, keys: &[E], d: usize, tokens: Range<u32>, _: Growth) -> Result<(), SelectError> {
        let start = *self.start.get_or_insert(tokens.start);
        self.d = d;
        self.end = tokens.end;
        // Recompute from the page holding the first new token (it may be a partial page).
        let first_page = ((tokens.start - start) as usize / self.page_size) as u32;
        let pages = (self.end - start).div_ceil(self.page_size as u32);
        self.mins.truncate(first_page as usize * d);
        self.maxs.truncate(first_page as usize * d);
        for p in first_page..pages {
            let (lo, hi) = (self.mins.len(), self.maxs.len());
            self.mins.resize(lo + d, f32::INFINITY);
            self.maxs.resize(hi + d, f32::NEG_INFINITY);
            for t in self.page(start, p) {
                let key = &keys[t as usize * d..(t as usize + 1) * d];
                for ((mn, mx), &k) in self.mins[lo..].iter_mut().zip(&mut self.maxs[hi..]).zip(key) {
                    let k = k.to_f32();
                    *mn = mn.min(k);
                    *mx = mx.max(k);
                }
            }
        }
        Ok(())
    }

    fn choose(&mut self, step: &StepCtx<'_, E>, goal: Goal, out: &mut Vec<u32>) {
        let count = goal.count;
        let d = self.d;
        if d == 0 {
            // Nothing was paged yet: no clustered region to choose from.
            return;
        }
        let start = self.start.unwrap_or(step.regions.clustered().start);
        self.scores.clear();
        for (mins, maxs) in self.mins.chunks_exact(d).zip(self.maxs.chunks_exact(d)) {
            let score = step.queries.chunks_exact(d).map(|q| upper_bound(q, mins, maxs)).sum();
            self.scores.push(score);
        }
        let (size, end) = (self.page_size as u32, self.end);
        rank_covering(&self.scores, count, |p| page(start, size, end, p).len(), &mut self.order);
        let first = out.len();
        take_units(&self.order, count, |p| self.page(start, p), out);
        sort_ids(out, first, step.regions.clustered(), &mut self.bits);
    }
}

/// Page `p` of pages of `size` tokens from `start`, cut at `end`.
fn page(start: u32, size: u32, end: u32, p: u32) -> Range<u32> {
    let first = start + p * size;
    first..(first + size).min(end)
}

/// Lanes of [`upper_bound`]'s sums, so that the compiler vectorises them.
const LANES: usize = 8;

/// `sum_i max(q_i * max_i, q_i * min_i)`, over eight lanes summed in a fixed order.
fn upper_bound(q: &[f32], mins: &[f32], maxs: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (q8, mn8, mx8) = (q.chunks_exact(LANES), mins.chunks_exact(LANES), maxs.chunks_exact(LANES));
    let tail: f32 = q8
        .remainder()
        .iter()
        .zip(mn8.remainder().iter().zip(mx8.remainder()))
        .map(|(&qi, (&mn, &mx))| (qi * mx).max(qi * mn))
        .sum();
    for ((q, mn), mx) in q8.zip(mn8).zip(mx8) {
        for l in 0..LANES {
            acc[l] += (q[l] * mx[l]).max(q[l] * mn[l]);
        }
    }
    acc.iter().sum::<f32>() + tail
}
