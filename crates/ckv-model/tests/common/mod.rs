//! Helpers shared by the test files: GGUF files written in memory, temporary files, and
//! the default assets (`cargo xtask fetch`).

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A metadata value to write.
pub enum Val {
    U8(u8),
    I32(i32),
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(&'static str),
    Strs(Vec<&'static str>),
    F32s(Vec<f32>),
    I32s(Vec<i32>),
    U64(u64),
    F64(f64),
}

pub fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

pub fn put_val(out: &mut Vec<u8>, v: &Val) {
    match v {
        Val::U8(x) => out.extend(0u32.to_le_bytes().into_iter().chain([*x])),
        Val::U32(x) => out.extend(4u32.to_le_bytes().into_iter().chain(x.to_le_bytes())),
        Val::I32(x) => out.extend(5u32.to_le_bytes().into_iter().chain(x.to_le_bytes())),
        Val::F32(x) => out.extend(6u32.to_le_bytes().into_iter().chain(x.to_le_bytes())),
        Val::Bool(x) => out.extend(7u32.to_le_bytes().into_iter().chain([*x as u8])),
        Val::Str(s) => {
            out.extend(8u32.to_le_bytes());
            put_str(out, s);
        }
        Val::Strs(items) => {
            out.extend(9u32.to_le_bytes().into_iter().chain(8u32.to_le_bytes()));
            out.extend((items.len() as u64).to_le_bytes());
            for s in items {
                put_str(out, s);
            }
        }
        Val::F32s(items) => {
            out.extend(9u32.to_le_bytes().into_iter().chain(6u32.to_le_bytes()));
            out.extend((items.len() as u64).to_le_bytes());
            out.extend(items.iter().flat_map(|x| x.to_le_bytes()));
        }
        Val::I32s(items) => {
            out.extend(9u32.to_le_bytes().into_iter().chain(5u32.to_le_bytes()));
            out.extend((items.len() as u64).to_le_bytes());
            out.extend(items.iter().flat_map(|x| x.to_le_bytes()));
        }
        Val::U64(x) => out.extend(10u32.to_le_bytes().into_iter().chain(x.to_le_bytes())),
        Val::F64(x) => out.extend(12u32.to_le_bytes().into_iter().chain(x.to_le_bytes())),
    }
}

/// A tensor to write: name, dims (fastest first), GGML type code, data bytes.
pub type Tensor = (&'static str, Vec<u64>, u32, Vec<u8>);

/// The bytes of a GGUF v3 file.
pub fn gguf_bytes(metadata: &[(&str, Val)], tensors: &[Tensor], alignment: usize) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((metadata.len() as u64).to_le_bytes());
    for (key, v) in metadata {
        put_str(&mut out, key);
        put_val(&mut out, v);
    }
    let mut offset = 0usize;
    let mut offsets = Vec::new();
    for (name, dims, code, data) in tensors {
        put_str(&mut out, name);
        out.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            out.extend(d.to_le_bytes());
        }
        out.extend(code.to_le_bytes());
        out.extend((offset as u64).to_le_bytes());
        offsets.push(offset);
        offset = (offset + data.len()).div_ceil(alignment) * alignment;
    }
    out.resize(out.len().div_ceil(alignment) * alignment, 0);
    let start = out.len();
    for ((_, _, _, data), off) in tensors.iter().zip(offsets) {
        out.resize(start + off, 0);
        out.extend(data);
    }
    out
}

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
