//! Ranking helpers shared by the methods: one total order (score descending, ties to the
//! lower id) and one way to fill a count from ranked units.

use std::cmp::Ordering;

/// The ranking order: higher score first, ties to the lower id.
fn better(a: (f32, u32), b: (f32, u32)) -> Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

/// Fills `order` with `0..scores.len()` sorted by score descending, ties to the lower id.
pub fn rank_descending(scores: &[f32], order: &mut Vec<u32>) {
    order.clear();
    order.extend(0..scores.len() as u32);
    order.sort_unstable_by(|&a, &b| better((scores[a as usize], a), (scores[b as usize], b)));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_descending_with_ties_to_lower_id() {
        let mut order = Vec::new();
        rank_descending(&[1.0, 3.0, 3.0, -1.0, 2.0], &mut order);
        assert_eq!(order, [1, 2, 4, 0, 3]);
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
