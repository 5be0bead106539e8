//! Unit-length copies of rows.

use rayon::prelude::*;

/// Rows per parallel task when normalising.
const ROWS_PER_TASK: usize = 256;

/// Writes a unit-length copy of `src` into `dst` (norm accumulated in `f64`, so it neither
/// overflows nor underflows for finite `f32` input). A zero row becomes all zeros.
pub(crate) fn normalize_row(src: &[f32], dst: &mut [f32]) {
    debug_assert_eq!(src.len(), dst.len());
    let sq: f64 = src.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    if sq > 0.0 {
        let inv = 1.0 / sq.sqrt();
        for (o, &v) in dst.iter_mut().zip(src) {
            *o = (f64::from(v) * inv) as f32;
        }
    } else {
        dst.fill(0.0);
    }
}

/// Normalises every `d`-length row of `src` into `dst` (see [`normalize_row`]), in parallel.
/// Each row is handled independently, so the result does not depend on the thread count.
pub(crate) fn normalize_rows(src: &[f32], dst: &mut [f32], d: usize) {
    assert_eq!(src.len(), dst.len());
    dst.par_chunks_mut(ROWS_PER_TASK * d).zip(src.par_chunks(ROWS_PER_TASK * d)).for_each(|(dst, src)| {
        for (o, s) in dst.chunks_exact_mut(d).zip(src.chunks_exact(d)) {
            normalize_row(s, o);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_length_and_zero_rows() {
        let src = [3.0f32, 4.0, 0.0, 0.0, -1e-40, 0.0];
        let mut dst = [9.0f32; 6];
        normalize_rows(&src, &mut dst, 2);
        assert_eq!(&dst[..2], &[0.6, 0.8]);
        assert_eq!(&dst[2..4], &[0.0, 0.0]);
        // A subnormal row still normalises (f64 norm).
        assert_eq!(&dst[4..], &[-1.0, 0.0]);
    }

    #[test]
    fn huge_values_do_not_overflow() {
        let src = [f32::MAX, f32::MAX];
        let mut dst = [0.0f32; 2];
        normalize_row(&src, &mut dst);
        let h = std::f32::consts::FRAC_1_SQRT_2;
        assert!((dst[0] - h).abs() < 1e-6 && (dst[1] - h).abs() < 1e-6);
    }
}
