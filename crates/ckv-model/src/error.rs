//! Errors of GGUF reading.

use std::path::PathBuf;

/// Errors of reading a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be opened or mapped.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Not a GGUF file.
    #[error("not a GGUF file: magic {found:#010x}, expected 0x46554747 (\"GGUF\")")]
    BadMagic {
        /// The first four bytes, little-endian.
        found: u32,
    },
    /// A GGUF version this reader does not know.
    #[error("unsupported GGUF version {0}: expected 2 or 3")]
    UnsupportedVersion(u32),
    /// The file ends before a field it announces.
    #[error("truncated GGUF file: {what} needs {needed} bytes at offset {offset}, the file has {len}")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Where.
        offset: usize,
        /// Bytes needed from there.
        needed: u64,
        /// File length.
        len: usize,
    },
    /// A metadata value type that GGUF does not define.
    #[error("corrupt GGUF file: unknown metadata value type {value_type} for key {key:?}")]
    BadValueType {
        /// The key.
        key: String,
        /// The type code.
        value_type: u32,
    },
    /// Arrays nested deeper than [`MAX_ARRAY_DEPTH`](crate::MAX_ARRAY_DEPTH).
    #[error("corrupt GGUF file: key {key:?} nests arrays {depth} deep (at most {})", crate::MAX_ARRAY_DEPTH)]
    NestedTooDeep {
        /// The key.
        key: String,
        /// The depth reached.
        depth: usize,
    },
    /// A string that is not UTF-8.
    #[error("corrupt GGUF file: string at offset {offset} is not UTF-8")]
    InvalidUtf8 {
        /// Where the string starts.
        offset: usize,
    },
    /// A tensor whose shape or data range is impossible.
    #[error("corrupt GGUF file: tensor {name:?}: {reason}")]
    BadTensor {
        /// The tensor.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A metadata key the file lacks.
    #[error("missing GGUF metadata key {0:?}")]
    MissingKey(String),
    /// A metadata value of another type than expected.
    #[error("GGUF metadata key {key:?} holds {found}, expected {expected}")]
    WrongType {
        /// The key.
        key: String,
        /// The expected type.
        expected: &'static str,
        /// The type found.
        found: &'static str,
    },
    /// A tensor name the file lacks.
    #[error("missing tensor {0:?} in the GGUF file")]
    MissingTensor(String),
    /// A tensor type this reader cannot dequantize.
    #[error(
        "tensor {name:?} has type {dtype}, which is not supported (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)"
    )]
    UnsupportedType {
        /// The tensor.
        name: String,
        /// Its type.
        dtype: crate::GgmlType,
    },
}

/// Errors of loading and running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Reading the GGUF file failed.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// A tensor of another shape than the configuration implies.
    #[error("tensor {name:?} has dims {found:?}, expected {expected:?}")]
    TensorShape {
        /// The tensor.
        name: String,
        /// Expected GGML dims (fastest first).
        expected: Vec<u64>,
        /// Dims found.
        found: Vec<u64>,
    },
    /// A model this runtime does not support.
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// A token id outside the vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    TokenOutOfRange {
        /// The id.
        id: u32,
        /// Vocabulary size.
        vocab: usize,
    },
    /// A prompt snapshot of a model with another number of layers.
    #[error("prompt snapshot has {layers} layers, this model has {expected}")]
    SnapshotMismatch {
        /// Layers in the snapshot.
        layers: usize,
        /// Layers of the model.
        expected: usize,
    },
    /// The attention pipeline failed (bad configuration, bad values).
    #[error(transparent)]
    Attn(#[from] ckv_attn::AttnError),
}
