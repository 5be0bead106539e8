//! Initial centroids: distinct seeded random rows, or k-means++ in cosine space.

use rand::RngExt;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::params::Init;

/// Rows per parallel task of the k-means++ distance update. Every row's distance is computed
/// on its own, so the partition only sets the grain of the work, never the result.
const ROWS_PER_TASK: usize = 512;

/// Ids of the `k` distinct rows that become the initial centroids, in the order chosen.
///
/// `xn` are the unit copies of the `n` rows (zero rows all zeros), row-major with dimension
/// `d`; `1 <= k <= n`. Deterministic for the state of `rng`, whatever the thread count.
pub(crate) fn initial_rows(
    init: Init,
    xn: &[f32],
    n: usize,
    d: usize,
    k: usize,
    rng: &mut ChaCha8Rng,
) -> Vec<usize> {
    debug_assert!(1 <= k && k <= n && xn.len() == n * d);
    match init {
        Init::RandomRows => rand::seq::index::sample(rng, n, k).into_vec(),
        Init::PlusPlus => plus_plus(xn, n, d, k, rng),
    }
}

/// Squared Euclidean distance of two unit copies, accumulated in `f64`: `2 - 2 cos` for two
/// non-zero rows, `|u|^2` (about 1) between a zero row and a non-zero one, 0 between two zero
/// rows or two rows with identical unit copies. Never negative.
#[inline]
fn sq_dist(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            let t = f64::from(x) - f64::from(y);
            t * t
        })
        .sum()
}

/// Index of the row the draw `r` in `[0, sum(d2))` falls on: the first row with `d2 > 0` whose
/// running sum (in row order) exceeds `r`; the last row with `d2 > 0` if rounding leaves none.
/// Rows with `d2 == 0` (among them every chosen row) are never returned.
fn draw(d2: &[f64], r: f64) -> usize {
    let mut acc = 0.0f64;
    let mut last_positive = None;
    for (i, &v) in d2.iter().enumerate() {
        if v > 0.0 {
            acc += v;
            if r < acc {
                return i;
            }
            last_positive = Some(i);
        }
    }
    last_positive.expect("draw needs a positive weight")
}

/// k-means++ seeding on the unit copies `xn` (see [`Init::PlusPlus`]).
///
/// The distance update runs in parallel over rows (each row on its own); the total weight and
/// the draw walk the rows in order, so the result does not depend on the thread count.
fn plus_plus(xn: &[f32], n: usize, d: usize, k: usize, rng: &mut ChaCha8Rng) -> Vec<usize> {
    let mut chosen = Vec::with_capacity(k);
    let mut taken = vec![false; n];
    let first = rng.random_range(0..n);
    chosen.push(first);
    taken[first] = true;

    // Squared distance of every row to its nearest chosen centre (0 for chosen rows).
    let mut d2 = vec![f64::INFINITY; n];
    let mut newest = first;
    while chosen.len() < k {
        let c = &xn[newest * d..(newest + 1) * d];
        d2.par_chunks_mut(ROWS_PER_TASK)
            .zip(xn.par_chunks(ROWS_PER_TASK * d))
            .zip(taken.par_chunks(ROWS_PER_TASK))
            .for_each(|((d2, xn), taken)| {
                for ((v, row), &t) in d2.iter_mut().zip(xn.chunks_exact(d)).zip(taken) {
                    *v = if t || *v == 0.0 { 0.0 } else { v.min(sq_dist(row, c)) };
                }
            });
        let total: f64 = d2.iter().sum();
        if total <= 0.0 {
            // Every remaining row coincides with a chosen centre.
            break;
        }
        let r = rng.random::<f64>() * total;
        newest = draw(&d2, r);
        debug_assert!(!taken[newest]);
        taken[newest] = true;
        chosen.push(newest);
    }

    if chosen.len() < k {
        // Fall back to distinct random rows among those not chosen yet, as the random init.
        let rest: Vec<usize> = (0..n).filter(|&i| !taken[i]).collect();
        chosen.extend(rand::seq::index::sample(rng, rest.len(), k - chosen.len()).iter().map(|j| rest[j]));
    }
    chosen
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;
    use crate::kmeans::normalize::normalize_rows;

    fn units(x: &[f32], d: usize) -> Vec<f32> {
        let mut xn = vec![0.0; x.len()];
        normalize_rows(x, &mut xn, d);
        xn
    }

    fn seeded(init: Init, x: &[f32], d: usize, k: usize, seed: u64) -> Vec<usize> {
        let n = x.len() / d;
        initial_rows(init, &units(x, d), n, d, k, &mut ChaCha8Rng::seed_from_u64(seed))
    }

    #[test]
    fn random_rows_is_the_plain_sample() {
        let x: Vec<f32> = (0..40).map(|i| i as f32 - 17.5).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let want = rand::seq::index::sample(&mut rng, 20, 6).into_vec();
        assert_eq!(seeded(Init::RandomRows, &x, 2, 6, 3), want);
    }

    #[test]
    fn draw_skips_zero_weights_and_survives_rounding() {
        let d2 = [0.0, 1.0, 0.0, 2.0, 0.0];
        assert_eq!(draw(&d2, 0.0), 1);
        assert_eq!(draw(&d2, 0.999), 1);
        assert_eq!(draw(&d2, 1.0), 3);
        assert_eq!(draw(&d2, 2.999), 3);
        // A draw at (or past) the total lands on the last positive row, never a zero one.
        assert_eq!(draw(&d2, 3.0), 3);
        assert_eq!(draw(&d2, 10.0), 3);
    }

    #[test]
    fn sq_dist_of_unit_copies() {
        assert_eq!(sq_dist(&[1.0, 0.0], &[1.0, 0.0]), 0.0);
        assert_eq!(sq_dist(&[1.0, 0.0], &[0.0, 1.0]), 2.0);
        assert_eq!(sq_dist(&[1.0, 0.0], &[-1.0, 0.0]), 4.0);
        assert_eq!(sq_dist(&[0.0, 0.0], &[0.0, 1.0]), 1.0);
        assert_eq!(sq_dist(&[0.0, 0.0], &[0.0, 0.0]), 0.0);
    }

    #[test]
    fn plus_plus_rows_are_distinct_and_prefer_new_directions() {
        // Three directions in d = 2 with 10, 10 and 1 rows (positive multiples, so identical
        // or nearly identical unit copies), plus two zero rows.
        let d = 2;
        let mut x = Vec::new();
        for i in 0..10 {
            x.extend([1.0 + i as f32, 0.0]);
            x.extend([0.0, 2.0]);
        }
        x.extend([-3.0, 0.0]);
        x.extend([0.0, 0.0, 0.0, 0.0]);
        let n = x.len() / d;
        let xn = units(&x, d);
        let dir = |i: usize| -> usize {
            match (xn[i * d], xn[i * d + 1]) {
                (a, _) if a > 0.5 => 0,
                (_, b) if b > 0.5 => 1,
                (a, _) if a < -0.5 => 2,
                _ => 3,
            }
        };
        for seed in 0..50 {
            for k in [1, 4, 10, n] {
                let rows = seeded(Init::PlusPlus, &x, d, k, seed);
                assert_eq!(rows.len(), k);
                let mut sorted = rows.clone();
                sorted.sort_unstable();
                sorted.dedup();
                assert_eq!(sorted.len(), k, "seed {seed} k {k}: {rows:?}");
                assert!(rows.iter().all(|&i| i < n));
                // Until the four directions (zero included) are covered, every centre opens a
                // new one: all rows of a covered direction are at distance (about) 0.
                let mut seen = [false; 4];
                for &i in rows.iter().take(4) {
                    assert!(!seen[dir(i)], "seed {seed} k {k}: {rows:?}");
                    seen[dir(i)] = true;
                }
            }
        }
    }

    #[test]
    fn plus_plus_on_identical_rows_falls_back_to_random_rows() {
        let x = [0.5f32, -1.0].repeat(30);
        for seed in 0..10 {
            let rows = seeded(Init::PlusPlus, &x, 2, 7, seed);
            let mut sorted = rows.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), 7);
            assert_eq!(rows, seeded(Init::PlusPlus, &x, 2, 7, seed));
        }
        assert_ne!(seeded(Init::PlusPlus, &x, 2, 7, 0), seeded(Init::PlusPlus, &x, 2, 7, 1));
    }
}
