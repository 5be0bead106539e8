//! The backends the pipeline suite runs on (candle's `test_device!`; STYLE "One test suite,
//! every backend"): a [`Device`] is a [`Backend`] together with what its documented contract
//! lets a test expect of it — the shapes and KV element it takes, the typed refusal of the
//! rest, and how close its outputs are to the CPU's arithmetic — and [`test_device!`]
//! instantiates one test body per backend: `<name>_cpu` always, `<name>_cuda` with the
//! feature `cuda` (one `skipped: <why>` line, and a pass, where there is no GPU).

use std::fmt;

use ckv_attn::{AttnError, Backend, LayerPipeline, ValidPipelineConfig};
use ckv_core::{Element, ParamError};

/// Instantiates the test body `$body` (a `fn(&Device)`) once per backend: `$cpu` runs it on
/// [`Device::cpu`], `$cuda` (feature `cuda`) on [`Device::cuda`], or prints why not and
/// passes. A body generic over the KV element is named with the CPU's element,
/// `body::<f32>`; its GPU instance runs with [`GpuKv`], the only element the GPU backend
/// stores.
macro_rules! test_device {
    ($body:ident::<$elem:ty>, $cpu:ident, $cuda:ident) => {
        #[test]
        fn $cpu() {
            $body::<$elem>(&$crate::common::Device::cpu());
        }

        #[cfg(feature = "cuda")]
        #[test]
        fn $cuda() {
            if let Some(device) = $crate::common::Device::cuda() {
                $body::<$crate::common::GpuKv>(&device);
            }
        }
    };
    ($body:ident, $cpu:ident, $cuda:ident) => {
        #[test]
        fn $cpu() {
            $body(&$crate::common::Device::cpu());
        }

        #[cfg(feature = "cuda")]
        #[test]
        fn $cuda() {
            if let Some(device) = $crate::common::Device::cuda() {
                $body(&device);
            }
        }
    };
}
pub(crate) use test_device;

/// The KV element of the GPU instances: the GPU backend stores f16 only (it refuses f32 KV).
#[cfg(feature = "cuda")]
pub type GpuKv = half::f16;

/// Relative error of the GPU backend's outputs against the CPU's arithmetic on the same
/// inputs (f16 KV, f32 accumulation in another order): the figure the kernel tests of
/// `ckv-sim/tests/gpu.rs` hold the attention kernel to.
#[cfg(feature = "cuda")]
const GPU_TOLERANCE: f64 = 1e-3;

/// A backend under test and what its contract promises (`ckv_attn::Backend`: the same API,
/// the same selections, outputs within f32 rounding; `LayerPipeline::with_backend`: what it
/// refuses, by name).
pub struct Device {
    backend: Backend,
    /// `None`: outputs are bitwise those of the CPU arithmetic; `Some(e)`: within relative
    /// error `e` ([`rel_err`]).
    tolerance: Option<f64>,
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.backend)
    }
}

impl Device {
    /// The CPU backend: it takes every configuration, and is the reference.
    pub fn cpu() -> Self {
        Self { backend: Backend::Cpu, tolerance: None }
    }

    /// GPU 0 (its kernels compiled once, shared by every test), or `None` after printing one
    /// `skipped: <why>` line where there is no usable GPU. A GPU whose kernels do not load
    /// fails the test.
    #[cfg(feature = "cuda")]
    pub fn cuda() -> Option<Self> {
        use std::sync::{Arc, OnceLock};

        use ckv_kernels::{Gpu, KernelError};

        /// The GPU, why there is none, or why it is unusable.
        static GPU: OnceLock<Result<Arc<Gpu>, KernelError>> = OnceLock::new();
        let toolkit = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/cuda-toolkit/unzipped/nvidia/cu13/include");
        let opened = GPU.get_or_init(|| {
            let mut dirs = ckv_kernels::default_include_dirs();
            dirs.push(toolkit);
            Gpu::open(0, &dirs).map(Arc::new)
        });
        match opened {
            Ok(gpu) => Some(Self { backend: Backend::Cuda(gpu.clone()), tolerance: Some(GPU_TOLERANCE) }),
            Err(KernelError::NoGpu(why)) => {
                eprintln!("skipped: {why}");
                None
            }
            Err(e) => panic!("a GPU is present but the kernels do not load: {e}"),
        }
    }

    /// The head dimension a test of group size `g` uses on this backend in place of `d`:
    /// `d` itself on the CPU; on the GPU the smallest instantiated dimension of that group
    /// (`ckv_kernels::ATTENTION_SHAPES`) at least `d`, else the largest (`d` when the group
    /// has none: the backend then refuses it).
    #[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
    pub fn head_dim(&self, g: usize, d: usize) -> usize {
        match &self.backend {
            Backend::Cpu => d,
            #[cfg(feature = "cuda")]
            Backend::Cuda(_) => {
                let dims = || ckv_kernels::ATTENTION_SHAPES.iter().filter(move |s| s.0 == g).map(|s| s.1);
                dims().filter(|&x| x >= d).min().or_else(|| dims().max()).unwrap_or(d)
            }
        }
    }

    /// The typed error this backend's contract refuses `config` with for `E` KV (only its
    /// name and value are compared), or `None` when it takes it. The CPU takes everything;
    /// the GPU takes dense and token-budget ClusterKV layers of f16 KV in the group sizes and
    /// head dimensions its kernels instantiate, an even head dimension with offload; the first
    /// rule broken names the error, in the order the GPU backend checks them (`src/device.rs`).
    #[cfg_attr(not(feature = "cuda"), allow(unused_variables, clippy::extra_unused_type_parameters))]
    pub fn refusal<E: Element>(&self, config: &ValidPipelineConfig) -> Option<ParamError> {
        match &self.backend {
            Backend::Cpu => None,
            #[cfg(feature = "cuda")]
            Backend::Cuda(_) => {
                use ckv_select::{GqaPolicy, Method};
                let shapes = ckv_kernels::ATTENTION_SHAPES;
                let (g, d, select) = (config.group(), config.head_dim(), config.select());
                let method = select.method();
                let bad = |name, value: String| Some(ParamError::new(name, value, "(not compared)"));
                if config.offload().is_some() && !d.is_multiple_of(2) {
                    return bad("head_dim", d.to_string());
                }
                if !matches!(method, Method::Dense | Method::ClusterKv) {
                    return bad("method", method.to_string());
                }
                if method == Method::ClusterKv && select.mass().is_some() {
                    return bad("budget", select.budget_rule().to_string());
                }
                if E::NAME != "f16" {
                    return bad("KV element", E::NAME.into());
                }
                let rows = match select.gqa() {
                    GqaPolicy::PerQueryHead if method == Method::ClusterKv => 1,
                    _ => g,
                };
                if !shapes.contains(&(rows, d)) || !shapes.contains(&(g, d)) {
                    return bad("group and head_dim", format!("{g} x {d}"));
                }
                None
            }
        }
    }

    /// A pipeline of `config` with `E` KV on this backend, or `None` when the backend's
    /// contract refuses it, after checking that it refused with exactly that typed error
    /// ([`refusal`](Self::refusal)); any other outcome fails the test.
    pub fn layer<E: Element>(&self, config: ValidPipelineConfig) -> Option<LayerPipeline<E>> {
        let expected = self.refusal::<E>(&config);
        let what = format!("{self}, {} KV, {config:?}", E::NAME);
        match (LayerPipeline::<E>::with_backend(config, self.backend.clone()), expected) {
            (Ok(layer), None) => Some(layer),
            (Err(AttnError::Param(got)), Some(want))
                if (got.name, &got.value) == (want.name, &want.value) =>
            {
                None
            }
            (Ok(_), Some(want)) => panic!("{what}: taken, though its contract refuses it ({want})"),
            (Err(got), want) => panic!("{what}: refused with {got:?}, its contract says {want:?}"),
        }
    }

    /// Whether `got` (this backend's output) matches `want` (the same computation by the
    /// CPU, or by this backend on other inputs that must not change it): bitwise on the CPU,
    /// within the backend's tolerance elsewhere; `Err` says by how much it misses.
    pub fn close(&self, got: &[f32], want: &[f32]) -> Result<(), String> {
        if got.len() != want.len() {
            return Err(format!("{} values, expected {}", got.len(), want.len()));
        }
        match self.tolerance {
            None => match got.iter().zip(want).position(|(a, b)| a.to_bits() != b.to_bits()) {
                None => Ok(()),
                Some(i) => Err(format!("not bitwise: [{i}] is {} instead of {}", got[i], want[i])),
            },
            Some(tolerance) => {
                let err = rel_err(got, want);
                if err <= tolerance { Ok(()) } else { Err(format!("relative error {err} above {tolerance}")) }
            }
        }
    }

    /// [`close`](Self::close), failing the test with `what` when it does not hold.
    #[track_caller]
    pub fn assert_close(&self, got: &[f32], want: &[f32], what: impl fmt::Display) {
        if let Err(e) = self.close(got, want) {
            panic!("{self}, {what}: {e}");
        }
    }
}

/// The relative error `|a - b| / |b|` (Euclidean norms, in f64; 0 when both are zero), the
/// output error of DESIGN section 8.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let diff: f64 = a.iter().zip(b).map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2)).sum();
    let norm: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    if diff == 0.0 { 0.0 } else { (diff / norm.max(f64::MIN_POSITIVE)).sqrt() }
}
