//! The one check of input values shared by every crate: length, NaN/Inf, and range of the
//! storage type.

use ndarray::{ArrayView, Dimension};

use crate::Element;

/// A problem with input values.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValueError {
    /// A slice of the wrong length.
    #[error("{what}: expected {expected} values, got {given}")]
    Shape {
        /// Which input.
        what: &'static str,
        /// Expected length.
        expected: usize,
        /// Given length.
        given: usize,
    },
    /// A NaN or an infinity.
    #[error("{what}: non-finite value {value} at index {index}")]
    NonFinite {
        /// Which input.
        what: &'static str,
        /// Flat index of the value.
        index: usize,
        /// The value.
        value: f32,
    },
    /// A finite value too large for the storage type (it would become an infinity).
    #[error("{what}: value {value} at index {index} exceeds the largest {storage} value {max}")]
    OutOfRange {
        /// Which input.
        what: &'static str,
        /// Flat index of the value.
        index: usize,
        /// The value.
        value: f32,
        /// The storage type.
        storage: &'static str,
        /// Its largest finite magnitude.
        max: f32,
    },
    /// An array view of the wrong shape (the `ndarray` entry points).
    #[error("{what}: expected shape {expected:?}, got {given:?}")]
    ViewShape {
        /// Which input.
        what: &'static str,
        /// The shape expected.
        expected: Vec<usize>,
        /// The shape given.
        given: Vec<usize>,
    },
    /// An array view that is not in standard (row-major, contiguous) layout: the `ndarray`
    /// entry points read its memory as it is and never copy it (`as_standard_layout()` makes
    /// a standard copy).
    #[error(
        "{what}: a view of shape {shape:?} with strides {strides:?} is not in standard (row-major, contiguous) layout"
    )]
    NotContiguous {
        /// Which input.
        what: &'static str,
        /// Its shape.
        shape: Vec<usize>,
        /// Its strides, in elements.
        strides: Vec<isize>,
    },
}

/// The memory of `view` (the input `what`) when it is in standard layout (row-major,
/// contiguous), without copying.
///
/// # Errors
/// [`ValueError::NotContiguous`] naming the view's shape and strides otherwise.
pub fn standard_slice<'a, A, D: Dimension>(
    what: &'static str,
    view: &ArrayView<'a, A, D>,
) -> Result<&'a [A], ValueError> {
    view.to_slice().ok_or_else(|| ValueError::NotContiguous {
        what,
        shape: view.shape().to_vec(),
        strides: view.strides().to_vec(),
    })
}

/// Checks that `xs` (the input named `what`) holds `expected` values, all finite and
/// representable in `E` (use `f32` for values that are not stored).
pub fn check_values<E: Element>(what: &'static str, xs: &[f32], expected: usize) -> Result<(), ValueError> {
    if xs.len() != expected {
        return Err(ValueError::Shape { what, expected, given: xs.len() });
    }
    match xs.iter().position(|x| x.is_nan() || x.abs() > E::MAX) {
        None => Ok(()),
        Some(index) => {
            let value = xs[index];
            Err(if value.is_finite() {
                ValueError::OutOfRange { what, index, value, storage: E::NAME, max: E::MAX }
            } else {
                ValueError::NonFinite { what, index, value }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    #[test]
    fn names_the_bad_value() {
        assert_eq!(check_values::<f32>("q", &[1.0, 2.0], 2), Ok(()));
        assert_eq!(
            check_values::<f32>("q", &[1.0], 2),
            Err(ValueError::Shape { what: "q", expected: 2, given: 1 })
        );
        assert!(matches!(
            check_values::<f32>("q", &[1.0, f32::NAN], 2),
            Err(ValueError::NonFinite { what: "q", index: 1, .. })
        ));
        assert_eq!(
            check_values::<f32>("k", &[f32::NEG_INFINITY], 1),
            Err(ValueError::NonFinite { what: "k", index: 0, value: f32::NEG_INFINITY })
        );
        assert_eq!(check_values::<f16>("k", &[65504.0, -65504.0], 2), Ok(()));
        let err = check_values::<f16>("k", &[0.0, -7.0e4], 2).unwrap_err();
        assert!(matches!(err, ValueError::OutOfRange { index: 1, storage: "f16", .. }));
        assert!(err.to_string().contains("-70000"), "{err}");
        let err = ValueError::ViewShape { what: "keys", expected: vec![3, 2, 8], given: vec![3, 8, 2] };
        assert!(err.to_string().contains("[3, 2, 8]") && err.to_string().contains("[3, 8, 2]"), "{err}");
        let err = ValueError::NotContiguous { what: "keys", shape: vec![4, 8], strides: vec![16, 1] };
        assert!(err.to_string().contains("[4, 8]") && err.to_string().contains("[16, 1]"), "{err}");
    }
}
