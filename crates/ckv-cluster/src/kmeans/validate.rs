//! Input checks, run before any clustering work.

use crate::error::ClusterError;
use ckv_core::Element;

/// Checks one head's rows and returns the number of rows `n`.
///
/// Order of checks: `d == 0`, length not a multiple of `d`, more than `u32::MAX` rows
/// (labels are `u32`), the first non-finite value in row-major order, fewer rows than
/// clusters.
pub(crate) fn check_rows<E: Element>(rows: &[E], d: usize, n_clusters: usize) -> Result<usize, ClusterError> {
    if d == 0 {
        return Err(ClusterError::Param(ckv_core::ParamError::zero_dim()));
    }
    if !rows.len().is_multiple_of(d) {
        return Err(ClusterError::ShapeMismatch { len: rows.len(), d });
    }
    let n = rows.len() / d;
    if u32::try_from(n).is_err() {
        return Err(ClusterError::from(ckv_core::ParamError::new("rows", n, "at most u32::MAX rows")));
    }
    if let Some(pos) = rows.iter().position(|v| !v.to_f32().is_finite()) {
        return Err(ClusterError::NonFinite { row: pos / d, col: pos % d, value: rows[pos].to_f32() });
    }
    if n < n_clusters {
        return Err(ClusterError::TooFewRows { rows: n, clusters: n_clusters });
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Zero-sized element: lets a test build a slice with more than `u32::MAX` rows for free.
    #[derive(Debug, Clone, Copy, Default, PartialEq)]
    struct Zst;

    impl Element for Zst {
        const NAME: &'static str = "zst";
        const MAX: f32 = 0.0;
        fn to_f32(self) -> f32 {
            0.0
        }
        fn from_f32(_: f32) -> Self {
            Zst
        }
        fn to_f32_slice(src: &[Self], dst: &mut [f32]) {
            assert_eq!(src.len(), dst.len());
            dst.fill(0.0);
        }
        fn from_f32_slice(src: &[f32], dst: &mut [Self]) {
            assert_eq!(src.len(), dst.len());
        }
        fn row_data(_: &[Self]) -> ckv_core::RowData<'_> {
            unreachable!("the row kernels never see this test type")
        }
    }

    #[test]
    fn too_many_rows_for_u32_labels() {
        // A zero-sized array costs nothing, whatever its length.
        let rows = [Zst; (1 << 32) + 1];
        let err = check_rows(&rows, 1, 1).unwrap_err();
        assert!(matches!(err, ClusterError::Param(ckv_core::ParamError { name: "rows", .. })), "{err:?}");
    }

    #[test]
    fn check_order() {
        // Shape is checked before non-finite values, non-finite before too few rows.
        let rows = [f32::NAN; 3];
        assert_eq!(check_rows(&rows, 0, 1), Err(ClusterError::Param(ckv_core::ParamError::zero_dim())));
        assert_eq!(check_rows(&rows, 2, 1), Err(ClusterError::ShapeMismatch { len: 3, d: 2 }));
        assert!(matches!(check_rows(&rows, 3, 5), Err(ClusterError::NonFinite { row: 0, col: 0, .. })));
        assert_eq!(check_rows(&[1.0f32; 3], 3, 5), Err(ClusterError::TooFewRows { rows: 1, clusters: 5 }));
    }

    #[test]
    fn first_non_finite_reported() {
        let mut rows = vec![0.5f32; 4 * 3];
        rows[2 * 3 + 1] = f32::INFINITY;
        rows[3 * 3] = f32::NAN;
        assert_eq!(
            check_rows(&rows, 3, 1),
            Err(ClusterError::NonFinite { row: 2, col: 1, value: f32::INFINITY })
        );
    }
}
