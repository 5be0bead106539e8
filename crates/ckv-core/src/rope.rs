//! Rotary position embedding (RoPE): queries and keys are compared after it (DESIGN
//! section 3).

/// RoPE frequencies of a head of dimension `head_dim`: `base^(-2i / head_dim)` for each pair
/// `i`.
pub fn rope_inv_freq(base: f32, head_dim: usize) -> Vec<f32> {
    (0..head_dim / 2).map(|i| base.powf(-2.0 * i as f32 / head_dim as f32)).collect()
}

/// Rotates adjacent pairs `(x[2i], x[2i+1])` of every head (`inv_freq.len() * 2` wide) of
/// the row `x` by `position * inv_freq[i]` (see [`rope_inv_freq`]).
pub fn rope(x: &mut [f32], position: usize, inv_freq: &[f32]) {
    for head in x.chunks_exact_mut(inv_freq.len() * 2) {
        for (pair, &f) in head.chunks_exact_mut(2).zip(inv_freq) {
            let (sin, cos) = (position as f32 * f).sin_cos();
            let (a, b) = (pair[0], pair[1]);
            pair[0] = a * cos - b * sin;
            pair[1] = a * sin + b * cos;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_preserves_norm_and_position_zero() {
        let inv_freq = rope_inv_freq(10000.0, 4);
        let mut x = [1.0f32, 2.0, 3.0, 4.0];
        rope(&mut x, 0, &inv_freq);
        assert_eq!(x, [1.0, 2.0, 3.0, 4.0]);
        rope(&mut x, 17, &inv_freq);
        let norm: f32 = x.iter().map(|v| v * v).sum();
        assert!((norm - 30.0).abs() < 1e-4);
    }

    #[test]
    fn a_quarter_turn_of_each_pair() {
        let mut x = [1.0f32, 0.0, 0.0, 1.0];
        rope(&mut x, 1, &[std::f32::consts::FRAC_PI_2]);
        assert!((x[0]).abs() < 1e-6 && (x[1] - 1.0).abs() < 1e-6 && (x[2] + 1.0).abs() < 1e-6);
    }
}
