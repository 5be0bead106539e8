//! The configuration of one layer's decode pipeline, validated once.

use ckv_cache::OffloadParams;
use ckv_core::ParamGuard;
use ckv_select::{Method, SelectParams, ValidSelectParams};

use crate::AttnError;

/// Configuration of one attention layer's decode pipeline. Build with [`PipelineConfig::new`]
/// and the setters, then [`validate`](PipelineConfig::validate).
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineConfig {
    n_q_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    layer: usize,
    dense_layers: usize,
    scale: Option<f32>,
    select: SelectParams,
    offload: Option<OffloadParams>,
}

impl PipelineConfig {
    /// A layer with `n_q_heads` query heads, `n_kv_heads` KV heads of dimension `head_dim`;
    /// layer 0 of 0 dense layers, scale `1 / sqrt(head_dim)`, selection `select`.
    pub fn new(n_q_heads: usize, n_kv_heads: usize, head_dim: usize, select: SelectParams) -> Self {
        Self {
            n_q_heads,
            n_kv_heads,
            head_dim,
            layer: 0,
            dense_layers: 0,
            scale: None,
            select,
            offload: None,
        }
    }

    /// Turns offload on: each (sequence, KV head) attends through a device tier that keeps
    /// the rows of the last `reuse` steps and fetches the rest from the host tier (outputs
    /// do not change); the host KV may be capped.
    pub fn offload(mut self, offload: OffloadParams) -> Self {
        self.offload = Some(offload);
        self
    }

    /// This layer's index and the number of leading layers that always attend densely.
    pub fn layer(mut self, layer: usize, dense_layers: usize) -> Self {
        self.layer = layer;
        self.dense_layers = dense_layers;
        self
    }

    /// The softmax scale (default `1 / sqrt(head_dim)`).
    pub fn scale(mut self, scale: f32) -> Self {
        self.scale = Some(scale);
        self
    }
}

impl ParamGuard for PipelineConfig {
    type Checked = ValidPipelineConfig;
    type Error = AttnError;

    fn check_ref(&self) -> Result<(), AttnError> {
        self.clone().validate().map(drop)
    }

    fn validate(self) -> Result<ValidPipelineConfig, AttnError> {
        let bad = |name: &'static str, value: String, expected: String| {
            AttnError::from(ckv_core::ParamError::new(name, value, expected))
        };
        if self.head_dim == 0 {
            return Err(bad("head_dim", "0".into(), "at least 1".into()));
        }
        if self.n_kv_heads == 0 {
            return Err(bad("n_kv_heads", "0".into(), "at least 1".into()));
        }
        if self.n_q_heads == 0 || !self.n_q_heads.is_multiple_of(self.n_kv_heads) {
            return Err(bad(
                "n_q_heads",
                self.n_q_heads.to_string(),
                format!("a positive multiple of n_kv_heads ({})", self.n_kv_heads),
            ));
        }
        let scale = self.scale.unwrap_or(1.0 / (self.head_dim as f32).sqrt());
        if !scale.is_finite() || scale <= 0.0 {
            return Err(bad("scale", scale.to_string(), "a positive finite number".into()));
        }
        let mut select = self.select.clone();
        if self.layer < self.dense_layers {
            select = select.method(Method::Dense);
        }
        let select = select.validate()?;
        Ok(ValidPipelineConfig { config: self, scale, select })
    }
}

/// A checked [`PipelineConfig`]; only [`PipelineConfig::validate`] makes one.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidPipelineConfig {
    config: PipelineConfig,
    scale: f32,
    select: ValidSelectParams,
}

impl ValidPipelineConfig {
    /// Query heads `Hq`.
    pub fn n_q_heads(&self) -> usize {
        self.config.n_q_heads
    }
    /// KV heads `Hkv`.
    pub fn n_kv_heads(&self) -> usize {
        self.config.n_kv_heads
    }
    /// Query heads per KV head, `g = Hq / Hkv`.
    pub fn group(&self) -> usize {
        self.config.n_q_heads / self.config.n_kv_heads
    }
    /// Head dimension `d`.
    pub fn head_dim(&self) -> usize {
        self.config.head_dim
    }
    /// This layer's index.
    pub fn layer(&self) -> usize {
        self.config.layer
    }
    /// The softmax scale.
    pub fn scale(&self) -> f32 {
        self.scale
    }
    /// The selection parameters in force for this layer (dense for a dense layer).
    pub fn select(&self) -> &ValidSelectParams {
        &self.select
    }
    /// The offload settings, when offload is on.
    pub fn offload(&self) -> Option<&OffloadParams> {
        self.config.offload.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_bad_value() {
        let sel = SelectParams::default();
        let err = PipelineConfig::new(6, 4, 8, sel.clone()).validate().unwrap_err();
        assert!(matches!(err, AttnError::Param(ckv_core::ParamError { name: "n_q_heads", .. })), "{err}");
        assert!(err.to_string().contains("n_q_heads = 6"), "{err}");
        assert!(PipelineConfig::new(4, 0, 8, sel.clone()).validate().is_err());
        assert!(PipelineConfig::new(4, 2, 0, sel.clone()).validate().is_err());
        assert!(PipelineConfig::new(4, 2, 8, sel.clone()).scale(f32::NAN).validate().is_err());
        let dense = PipelineConfig::new(4, 2, 8, sel.clone()).layer(1, 2).validate().unwrap();
        assert_eq!(dense.select().method(), Method::Dense);
        let sparse = PipelineConfig::new(4, 2, 8, sel).layer(2, 2).validate().unwrap();
        assert_eq!(sparse.select().method(), Method::ClusterKv);
        assert_eq!(sparse.group(), 2);
    }
}
