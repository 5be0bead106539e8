//! Storage element types of key/value rows.

use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::RowData;

/// Storage element of key/value rows: `f32` or [`half::f16`]. Reductions always happen in `f32`
/// (or wider).
pub trait Element: Copy + Send + Sync + Default + PartialEq + std::fmt::Debug + 'static {
    /// Short name, `"f32"` or `"f16"`.
    const NAME: &'static str;

    /// The largest finite magnitude the type stores (`f32::MAX`, or 65504 for `f16`); larger
    /// values would become infinities.
    const MAX: f32;

    /// Converts one element to `f32` (exact for both element types).
    fn to_f32(self) -> f32;

    /// Converts one `f32` to the element type (round to nearest for `f16`).
    fn from_f32(x: f32) -> Self;

    /// Converts a slice into `dst`.
    ///
    /// # Panics
    /// If `src.len() != dst.len()` (internal callers guarantee equal lengths).
    fn to_f32_slice(src: &[Self], dst: &mut [f32]);

    /// Converts a slice of `f32` into `dst`.
    ///
    /// # Panics
    /// If `src.len() != dst.len()` (internal callers guarantee equal lengths).
    fn from_f32_slice(src: &[f32], dst: &mut [Self]);

    /// The rows as a [`RowData`], for kernels written once per element type.
    fn row_data(rows: &[Self]) -> RowData<'_>;
}

impl Element for f32 {
    const NAME: &'static str = "f32";
    const MAX: f32 = f32::MAX;

    #[inline]
    fn to_f32(self) -> f32 {
        self
    }

    #[inline]
    fn from_f32(x: f32) -> Self {
        x
    }

    fn to_f32_slice(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }

    fn from_f32_slice(src: &[f32], dst: &mut [Self]) {
        dst.copy_from_slice(src);
    }

    fn row_data(rows: &[Self]) -> RowData<'_> {
        RowData::F32(rows)
    }
}

impl Element for f16 {
    const NAME: &'static str = "f16";
    const MAX: f32 = 65504.0;

    #[inline]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }

    #[inline]
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }

    fn to_f32_slice(src: &[Self], dst: &mut [f32]) {
        src.convert_to_f32_slice(dst);
    }

    fn from_f32_slice(src: &[f32], dst: &mut [Self]) {
        dst.convert_from_f32_slice(src);
    }

    fn row_data(rows: &[Self]) -> RowData<'_> {
        RowData::F16(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(<f32 as Element>::NAME, "f32");
        assert_eq!(<f16 as Element>::NAME, "f16");
    }

    #[test]
    fn f16_slice_roundtrip_matches_scalar() {
        let src: Vec<f32> = (0..37).map(|i| (i as f32 - 18.0) * 0.37).collect();
        let mut h = vec![f16::ZERO; src.len()];
        f16::from_f32_slice(&src, &mut h);
        let mut back = vec![0.0f32; src.len()];
        f16::to_f32_slice(&h, &mut back);
        for (i, &x) in src.iter().enumerate() {
            assert_eq!(h[i], <f16 as Element>::from_f32(x));
            assert_eq!(back[i], Element::to_f32(h[i]));
            assert!((back[i] - x).abs() <= x.abs() * 1e-3);
        }
    }

    #[test]
    fn f32_slice_is_copy() {
        let src = [1.5f32, -2.0, 0.0];
        let mut dst = [0.0f32; 3];
        f32::to_f32_slice(&src, &mut dst);
        assert_eq!(src, dst);
        let mut out = [0.0f32; 3];
        f32::from_f32_slice(&dst, &mut out);
        assert_eq!(out, src);
    }
}
