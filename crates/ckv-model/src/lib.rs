//! The real-model side of clusterkv-rs: reading Llama-family GGUF files.
//!
//! Today this crate reads GGUF v2/v3 files, memory-mapped: metadata of every value type,
//! tensor infos, tensor bytes, and dequantization of F32, F16, Q4_0, Q4_1 and Q8_0 tensors
//! to `f32`. A truncated or corrupt file, an unsupported tensor type or a missing metadata
//! key gets a typed [`GgufError`], never a panic. The tokenizer and the forward pass with
//! attention through `ckv-attn` come next.
//!
//! ```no_run
//! use ckv_model::GgufFile;
//!
//! let gguf = GgufFile::open("assets/SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! let layers = gguf.get_u32("llama.block_count")?;
//! let embeddings = gguf.dequantize("token_embd.weight")?;
//! println!("{layers} layers, {} embedding values", embeddings.len());
//! # Ok::<(), ckv_model::GgufError>(())
//! ```

mod dequant;
mod error;
mod gguf;

pub use dequant::{GgmlType, dequantize};
pub use error::GgufError;
pub use gguf::{GgufFile, GgufValue, TensorInfo};
