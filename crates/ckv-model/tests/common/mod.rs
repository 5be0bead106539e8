//! Helpers shared by the test files: the GGUF writer of [`ckv_model::testing`] (tiny random
//! Llama models among them), temporary files, the default assets (`cargo xtask fetch`), and
//! comparisons.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

pub use ckv_model::testing::*;

/// A new file in the temporary folder holding `bytes`, removed when the result is dropped.
pub fn temp_file(bytes: &[u8]) -> TempFile {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("ckv-model-test-{}-{n}.gguf", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    TempFile(path)
}

/// A file removed when dropped.
pub struct TempFile(PathBuf);

impl TempFile {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The default asset `file` (in `assets/`), or the file the environment variable `var`
/// names; `None` when it does not exist.
pub fn asset(var: &str, file: &str) -> Option<PathBuf> {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets").join(file));
    path.exists().then_some(path)
}

/// The default model of DESIGN section 7 (`CKV_MODEL` overrides it), if it is there.
pub fn default_model_path() -> Option<PathBuf> {
    asset("CKV_MODEL", "SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// The default text of DESIGN section 7 (`CKV_TEXT` overrides it), if it is there.
pub fn default_text_path() -> Option<PathBuf> {
    asset("CKV_TEXT", "moby-dick.txt")
}

/// The model of the GGUF `bytes`, loaded from a temporary file (removed again at once: the
/// model keeps its mapping).
pub fn load_model(bytes: &[u8]) -> ckv_model::Model {
    let file = temp_file(bytes);
    ckv_model::Model::load(file.path()).unwrap()
}

/// `|got - want| / |want|` (Euclidean norms): the relative error of `got` against the
/// reference `want`.
pub fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "compared slices differ in length");
    let diff: f64 = got.iter().zip(want).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>().sqrt();
    diff / want.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt()
}

/// The GGUF `bytes` with every tensor dequantized to F32: the same model in floats.
pub fn as_f32(bytes: &[u8]) -> Vec<u8> {
    let gguf = ckv_model::GgufFile::from_bytes(bytes.to_vec()).unwrap();
    let metadata: Vec<(&str, Val<'_>)> = [
        ("general.architecture", Val::Str("llama")),
        ("llama.block_count", Val::U32(gguf.get_u32("llama.block_count").unwrap())),
        ("llama.embedding_length", Val::U32(gguf.get_u32("llama.embedding_length").unwrap())),
        ("llama.feed_forward_length", Val::U32(gguf.get_u32("llama.feed_forward_length").unwrap())),
        ("llama.attention.head_count", Val::U32(gguf.get_u32("llama.attention.head_count").unwrap())),
        ("llama.attention.head_count_kv", Val::U32(gguf.get_u32("llama.attention.head_count_kv").unwrap())),
        ("llama.context_length", Val::U32(gguf.get_u32("llama.context_length").unwrap())),
        ("llama.attention.layer_norm_rms_epsilon", Val::F32(1e-5)),
        ("llama.rope.freq_base", Val::F32(10000.0)),
        ("llama.vocab_size", Val::U32(gguf.get_u32("llama.vocab_size").unwrap())),
    ]
    .into_iter()
    .collect();
    let tensors: Vec<Tensor<'_>> = gguf
        .tensors()
        .iter()
        .map(|t| {
            let values = gguf.dequantize(&t.name).unwrap();
            (t.name.as_str(), t.dims.clone(), 0, values.iter().flat_map(|v| v.to_le_bytes()).collect())
        })
        .collect();
    gguf_bytes(&metadata, &tensors, 32)
}
