//! Where a pipeline's decode steps run.

/// Where a [`LayerPipeline`](crate::LayerPipeline)'s decode steps run, chosen when it is
/// built ([`LayerPipeline::with_backend`](crate::LayerPipeline::with_backend)); the API and
/// the results are the same (outputs within f32 rounding, the same selections).
#[derive(Clone, Default)]
pub enum Backend {
    /// On the CPU, parallel over (sequence, KV head).
    #[default]
    Cpu,
    /// On this GPU (feature `cuda`), one sequence after another: the KV and the cluster
    /// index live on the device too; prefill and clustering stay on the CPU.
    #[cfg(feature = "cuda")]
    Cuda(std::sync::Arc<ckv_kernels::Gpu>),
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Cpu => f.write_str("Cpu"),
            #[cfg(feature = "cuda")]
            Backend::Cuda(gpu) => write!(f, "Cuda({})", gpu.describe()),
        }
    }
}
