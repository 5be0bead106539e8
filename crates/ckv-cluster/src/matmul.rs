//! The one matrix product of the workspace: `A · Bᵀ` through `matrixmultiply::sgemm`.

/// `out[m, n] = a[m, k] · b[n, k]ᵀ`, all row-major, single-threaded (callers split the work
/// across threads by rows of `a` or of `b`). `k` is the shared inner dimension; `m` and `n`
/// follow from the slice lengths.
///
/// # Panics
/// If `k == 0` or a length is not a multiple of `k`, or `out.len() != m * n`.
#[allow(unsafe_code)]
pub fn matmul_nt(a: &[f32], b: &[f32], k: usize, out: &mut [f32]) {
    assert!(k > 0 && a.len() % k == 0 && b.len() % k == 0, "inner dimension {k} must divide both inputs");
    let (m, n) = (a.len() / k, b.len() / k);
    assert_eq!(out.len(), m * n, "output must be {m} x {n}");
    let ki = isize::try_from(k).expect("slice length fits isize");
    let ni = isize::try_from(n).expect("slice length fits isize");
    // SAFETY: A = a is m x k row-major (row stride k, column stride 1), B = bᵀ is k x n read
    // from n x k row-major b (row stride 1, column stride k), C = out is m x n row-major (row
    // stride n, column stride 1). The asserts above guarantee every addressed element lies
    // inside its slice; C's strides do not alias, C does not overlap A or B (distinct
    // borrows), and with beta = 0 C is write-only.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            ki,
            1,
            b.as_ptr(),
            1,
            ki,
            0.0,
            out.as_mut_ptr(),
            ni,
            1,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_naive() {
        let (m, n, k) = (37, 5, 7);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0).collect();
        let b: Vec<f32> = (0..n * k).map(|i| ((i * 104729) % 97) as f32 / 48.0 - 1.0).collect();
        let mut out = vec![f32::NAN; m * n];
        matmul_nt(&a, &b, k, &mut out);
        for i in 0..m {
            for j in 0..n {
                let want: f32 = (0..k).map(|p| a[i * k + p] * b[j * k + p]).sum();
                assert!((out[i * n + j] - want).abs() < 1e-4, "({i},{j})");
            }
        }
    }
}
