//! The dot product of an `f32` query with a stored row, accumulated in `f32`.

use crate::Element;

/// `sum_i a[i] * b[i]` with `b` converted to `f32`, accumulated in `f32` over eight lanes
/// (so the compiler vectorises it), the lanes summed in a fixed order: the same inputs
/// always give the same bits.
///
/// Only the common prefix of `a` and `b` is used; callers pass equal lengths.
#[inline]
pub fn dot<E: Element>(a: &[f32], b: &[E]) -> f32 {
    const LANES: usize = 8;
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; LANES];
    let mut a_chunks = a.chunks_exact(LANES);
    let mut b_chunks = b.chunks_exact(LANES);
    for (x, y) in (&mut a_chunks).zip(&mut b_chunks) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i].to_f32();
        }
    }
    let mut tail = 0.0f32;
    for (x, y) in a_chunks.remainder().iter().zip(b_chunks.remainder()) {
        tail += x * y.to_f32();
    }
    let pairs = [acc[0] + acc[4], acc[1] + acc[5], acc[2] + acc[6], acc[3] + acc[7]];
    (pairs[0] + pairs[2]) + (pairs[1] + pairs[3]) + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    #[test]
    fn matches_a_plain_sum() {
        for n in [0usize, 1, 7, 8, 9, 64, 131] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let plain: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!((dot(&a, &b) as f64 - plain).abs() <= 1e-5 * (1.0 + plain.abs()), "n = {n}");
            let bh: Vec<f16> = b.iter().map(|&x| f16::from_f32(x)).collect();
            let plain_h: f64 = a.iter().zip(&bh).map(|(x, y)| *x as f64 * y.to_f64()).sum();
            assert!((dot(&a, &bh) as f64 - plain_h).abs() <= 1e-5 * (1.0 + plain_h.abs()), "n = {n}");
        }
    }
}
