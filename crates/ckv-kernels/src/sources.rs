//! The CUDA C sources of the crate.

/// One CUDA C source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelSource {
    /// Its name, the file stem (`attention` for `kernels/attention.cu`).
    pub name: &'static str,
    /// Its text.
    pub code: &'static str,
}

/// Device functions every source may use (`kernels/common.cuh`): compiled in front of each.
pub const PRELUDE: &str = include_str!("../kernels/common.cuh");

/// Every source of `kernels/`.
pub const SOURCES: &[KernelSource] = &[
    KernelSource { name: "attention", code: include_str!("../kernels/attention.cu") },
    KernelSource { name: "kmeans", code: include_str!("../kernels/kmeans.cu") },
    KernelSource { name: "kv", code: include_str!("../kernels/kv.cu") },
    KernelSource { name: "select", code: include_str!("../kernels/select.cu") },
    KernelSource { name: "tier", code: include_str!("../kernels/tier.cu") },
];

/// The GPU architectures every kernel is compiled for: A100 (`sm_80`) and H100/H200
/// (`sm_90`).
pub const ARCHS: [&str; 2] = ["sm_80", "sm_90"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_source_declares_its_entry_points() {
        for source in SOURCES {
            assert!(source.code.contains("extern \"C\" __global__"), "{} has no kernel", source.name);
        }
    }
}
