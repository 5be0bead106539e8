//! Ranking helpers shared by the methods: one total order (score descending, ties to the
//! lower id) and one way to fill a count from ranked units.

use std::cmp::Ordering;
use std::ops::Range;

/// The ranking order: higher score first, ties to the lower id.
fn better(a: (f32, u32), b: (f32, u32)) -> Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

/// Units ranked first, before the ranking widens: enough for most budgets at 80 tokens per
/// cluster.
const FIRST_RANKED: usize = 16;

/// Fills `order` with the best units in ranking order (score descending, ties to the lower
/// id), as many as it takes for their `size`s to add up to `count` tokens (every unit if they
/// never do). Only those units are sorted: a selection finds the best `m` (`m` doubling from
/// 16 until they cover `count`) and sorts them, so the order is that of a full sort.
pub fn rank_covering(scores: &[f32], count: usize, size: impl Fn(u32) -> usize, order: &mut Vec<u32>) {
    order.clear();
    if count == 0 {
        return;
    }
    order.extend(0..scores.len() as u32);
    let by_rank = |&a: &u32, &b: &u32| better((scores[a as usize], a), (scores[b as usize], b));
    let mut m = FIRST_RANKED;
    loop {
        if m >= order.len() {
            order.sort_unstable_by(by_rank);
            return;
        }
        order.select_nth_unstable_by(m - 1, by_rank);
        let top = &mut order[..m];
        if top.iter().map(|&u| size(u)).sum::<usize>() >= count {
            top.sort_unstable_by(by_rank);
            order.truncate(m);
            return;
        }
        m *= 2;
    }
}

/// Reorders `ids` so that its first `count` entries are the `count` best by `score`
/// (descending, ties to the lower id), in no particular order.
pub fn partition_top(ids: &mut [u32], count: usize, score: impl Fn(u32) -> f32) {
    if count == 0 || count >= ids.len() {
        return;
    }
    ids.select_nth_unstable_by(count - 1, |&a, &b| better((score(a), a), (score(b), b)));
}

/// Appends the tokens of whole units in `order` to `out` until `count` tokens are taken;
/// the last unit is cut to its first tokens. Returns how many units were touched.
pub fn take_units<I>(order: &[u32], count: usize, members: impl Fn(u32) -> I, out: &mut Vec<u32>) -> usize
where
    I: IntoIterator<Item = u32>,
{
    let mut left = count;
    let mut touched = 0;
    for &unit in order {
        if left == 0 {
            break;
        }
        let before = out.len();
        out.extend(members(unit).into_iter().take(left));
        left -= out.len() - before;
        touched += 1;
    }
    touched
}

/// Sorts `out[start..]`, distinct ids inside `region`, through a bitmap of the region
/// (`bits` is its scratch): linear in the ids plus the region's length / 64, where a
/// comparison sort of a thousand ids costs tens of microseconds.
pub fn sort_ids(out: &mut Vec<u32>, start: usize, region: Range<u32>, bits: &mut Vec<u64>) {
    bits.clear();
    bits.resize(region.len().div_ceil(64), 0);
    for &id in &out[start..] {
        let i = (id - region.start) as usize;
        bits[i / 64] |= 1 << (i % 64);
    }
    out.truncate(start);
    for (w, &word) in bits.iter().enumerate() {
        let mut word = word;
        while word != 0 {
            out.push(region.start + (w * 64) as u32 + word.trailing_zeros());
            word &= word - 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_descending_with_ties_to_lower_id() {
        let mut order = Vec::new();
        rank_covering(&[1.0, 3.0, 3.0, -1.0, 2.0], 100, |_| 1, &mut order);
        assert_eq!(order, [1, 2, 4, 0, 3]);
        rank_covering(&[1.0, 3.0], 0, |_| 1, &mut order);
        assert!(order.is_empty());
    }

    proptest::proptest! {
        /// The ranked prefix is that of a full sort and covers the count with the fewest
        /// units it can, whatever the sizes (zero included) and ties.
        #[test]
        fn covering_prefix_of_a_full_sort(
            scores in proptest::collection::vec(-4i8..4, 0..300),
            sizes in proptest::collection::vec(0usize..100, 300),
            count in 0usize..5000,
        ) {
            let scores: Vec<f32> = scores.iter().map(|&s| s as f32).collect();
            let mut full: Vec<u32> = (0..scores.len() as u32).collect();
            full.sort_by(|&a, &b| better((scores[a as usize], a), (scores[b as usize], b)));
            let mut order = Vec::new();
            rank_covering(&scores, count, |u| sizes[u as usize], &mut order);
            proptest::prop_assert_eq!(&order[..], &full[..order.len()]);
            let covered: usize = order.iter().map(|&u| sizes[u as usize]).sum();
            if count > 0 && order.len() < full.len() {
                proptest::prop_assert!(covered >= count);
            }
        }
    }

    proptest::proptest! {
        /// The bitmap sort is a sort, at any offset of the region and of the list.
        #[test]
        fn bitmap_sort_sorts(
            region_start in 0u32..300,
            len in 1u32..500,
            picks in proptest::collection::btree_set(0u32..500, 0..200),
            prefix in proptest::collection::vec(0u32..9, 0..4),
        ) {
            let ids: Vec<u32> = picks.iter().filter(|&&p| p < len).map(|p| region_start + p).collect();
            let mut shuffled = ids.clone();
            shuffled.reverse();
            shuffled.rotate_left(ids.len() / 3);
            let mut out = prefix.clone();
            out.extend(&shuffled);
            let mut bits = Vec::new();
            sort_ids(&mut out, prefix.len(), region_start..region_start + len, &mut bits);
            proptest::prop_assert_eq!(&out[..prefix.len()], &prefix[..]);
            proptest::prop_assert_eq!(&out[prefix.len()..], &ids[..]);
        }
    }

    #[test]
    fn partition_top_keeps_the_best() {
        let scores = [0.5f32, 2.0, 2.0, 9.0, -1.0, 2.0];
        let mut ids: Vec<u32> = (0..6).collect();
        partition_top(&mut ids, 3, |i| scores[i as usize]);
        let mut top = ids[..3].to_vec();
        top.sort();
        assert_eq!(top, [1, 2, 3]);
    }

    #[test]
    fn take_units_cuts_only_the_last() {
        let units = [vec![10, 11, 12], vec![20], vec![30, 31, 32]];
        let mut out = Vec::new();
        let touched = take_units(&[2, 0, 1], 5, |u| units[u as usize].iter().copied(), &mut out);
        assert_eq!((out, touched), (vec![30, 31, 32, 10, 11], 2));
    }
}
