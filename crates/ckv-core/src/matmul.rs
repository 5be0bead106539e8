//! The matrix products of the workspace, `A · Bᵀ` and `A · B`, through one call of
//! `matrixmultiply::sgemm`.

/// `out[m, n] = a[m, k] · b[n, k]ᵀ`, all row-major, single-threaded (callers split the work
/// across threads by rows of `a` or of `b`). `k` is the shared inner dimension; `m` and `n`
/// follow from the slice lengths.
///
/// # Panics
/// If `k == 0` or a length is not a multiple of `k`, or `out.len() != m * n`.
pub fn matmul_nt(a: &[f32], b: &[f32], k: usize, out: &mut [f32]) {
    assert!(
        k > 0 && a.len().is_multiple_of(k) && b.len().is_multiple_of(k),
        "inner dimension {k} must divide both inputs"
    );
    let n = b.len() / k;
    // Bᵀ read from n x k row-major b: row stride 1, column stride k.
    sgemm(a, k, b, (1, k), n, out);
}

/// `out[m, n] = a[m, k] · b[k, n]`, all row-major, single-threaded; `n` is the width of `b`
/// and `out`, `k` and `m` follow from the slice lengths.
///
/// # Panics
/// If `n == 0` or a length is not a multiple of `n`, `a.len()` is not a multiple of `k`, or
/// `out.len() != m * n`.
pub fn matmul_nn(a: &[f32], b: &[f32], n: usize, out: &mut [f32]) {
    assert!(
        n > 0 && b.len().is_multiple_of(n) && out.len().is_multiple_of(n),
        "width {n} must divide b and out"
    );
    let k = b.len() / n;
    assert!(k > 0 && a.len().is_multiple_of(k), "inner dimension {k} must divide a");
    // B is k x n row-major: row stride n, column stride 1.
    sgemm(a, k, b, (n, 1), n, out);
}

/// `out[m, n] = a[m, k] · B[k, n]` where `B[p, j] = b[p * b_strides.0 + j * b_strides.1]`.
#[allow(unsafe_code)]
fn sgemm(a: &[f32], k: usize, b: &[f32], b_strides: (usize, usize), n: usize, out: &mut [f32]) {
    let m = a.len() / k;
    assert_eq!(out.len(), m * n, "output must be {m} x {n}");
    let isz = |x: usize| isize::try_from(x).expect("slice length fits isize");
    // SAFETY: A = a is m x k row-major (row stride k, column stride 1); B is k x n with the
    // given strides, and its last element (k-1)*rs + (n-1)*cs is b.len() - 1 for both callers
    // (b holds exactly k * n values); C = out is m x n row-major (row stride n, column stride
    // 1). The asserts guarantee every addressed element lies inside its slice; C's strides do
    // not alias, C does not overlap A or B (distinct borrows), and with beta = 0 C is
    // write-only.
    assert_eq!(b.len(), k * n, "b must be {k} x {n}");
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            isz(k),
            1,
            b.as_ptr(),
            isz(b_strides.0),
            isz(b_strides.1),
            0.0,
            out.as_mut_ptr(),
            isz(n),
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
        // A · B with B = bᵀ laid out k x n gives the same product.
        let bt: Vec<f32> = (0..k * n).map(|i| b[(i % n) * k + i / n]).collect();
        let mut nn = vec![f32::NAN; m * n];
        matmul_nn(&a, &bt, n, &mut nn);
        assert_eq!(nn, out);
    }
}
