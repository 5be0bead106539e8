//! Row kernels shared by selection and attention: an `f32` query against stored rows
//! (f16 or f32), converted block by block (SIMD where the CPU has it) and accumulated in
//! `f32`.

use crate::Element;

/// Elements converted to `f32` at a time.
const BLOCK: usize = 64;
/// Independent accumulators, so that the compiler vectorises the sums.
const LANES: usize = 8;

/// `sum_i a[i] * b[i]` with `b` converted to `f32`, accumulated in `f32` over eight lanes
/// summed in a fixed order: the same inputs always give the same bits.
///
/// Only the common prefix of `a` and `b` is used; callers pass equal lengths.
#[inline]
pub fn dot<E: Element>(a: &[f32], b: &[E]) -> f32 {
    let n = a.len().min(b.len());
    let mut acc = [0.0f32; LANES];
    let mut tail = 0.0f32;
    let mut buf = [0.0f32; BLOCK];
    for (a, b) in a[..n].chunks(BLOCK).zip(b[..n].chunks(BLOCK)) {
        let b32 = &mut buf[..b.len()];
        E::to_f32_slice(b, b32);
        let mut a_lanes = a.chunks_exact(LANES);
        let mut b_lanes = b32.chunks_exact(LANES);
        for (x, y) in (&mut a_lanes).zip(&mut b_lanes) {
            for i in 0..LANES {
                acc[i] += x[i] * y[i];
            }
        }
        for (x, y) in a_lanes.remainder().iter().zip(b_lanes.remainder()) {
            tail += x * y;
        }
    }
    let pairs = [acc[0] + acc[4], acc[1] + acc[5], acc[2] + acc[6], acc[3] + acc[7]];
    (pairs[0] + pairs[2]) + (pairs[1] + pairs[3]) + tail
}

/// `out[i] += w * b[i]` with `b` converted to `f32`.
///
/// Only the common prefix of `out` and `b` is used; callers pass equal lengths.
#[inline]
pub fn axpy<E: Element>(w: f32, b: &[E], out: &mut [f32]) {
    let n = out.len().min(b.len());
    let mut buf = [0.0f32; BLOCK];
    for (o, b) in out[..n].chunks_mut(BLOCK).zip(b[..n].chunks(BLOCK)) {
        let b32 = &mut buf[..b.len()];
        E::to_f32_slice(b, b32);
        for (o, y) in o.iter_mut().zip(b32.iter()) {
            *o += w * y;
        }
    }
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
            let mut out: Vec<f32> = a.clone();
            axpy(0.5, &bh, &mut out);
            for ((o, x), y) in out.iter().zip(&a).zip(&bh) {
                assert_eq!(*o, x + 0.5 * y.to_f32(), "n = {n}");
            }
        }
    }
}
