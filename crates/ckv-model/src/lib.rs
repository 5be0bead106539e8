//! A CPU runtime for Llama-family GGUF models whose attention goes through `ckv-attn`, so
//! that every method (dense, ClusterKV, each baseline) runs inside a real model.
//!
//! - [`GgufFile`]: GGUF v2/v3, memory-mapped; metadata of every type, tensor infos, and
//!   dequantization of F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and the K-quants Q4_K,
//!   Q5_K, Q6_K (what Q4_K_M files hold) to `f32`. A truncated or corrupt file,
//!   an unsupported tensor type or a missing metadata key is a typed [`GgufError`].
//! - [`Tokenizer`]: byte-level BPE rebuilt from the GGUF metadata with `tokenizers`.
//! - [`Model`] and [`Runner`]: embeddings, RMSNorm, RoPE (adjacent pairs), attention through
//!   one `LayerPipeline` per layer for a batch of sequences, SwiGLU FFN, tied output.
//!   Prefill takes a prompt in chunks (dense, causal; clustering at the end); decode takes
//!   one token per sequence, allocation-free once warm. Weights stay in their GGUF types;
//!   decode products quantize the activations per block to 8 bits and take integer dot
//!   products (AVX2 where the CPU has it, a portable path otherwise); prefill products
//!   dequantize tiles of the weights into the sgemm.
//!
//! ```no_run
//! use ckv_model::{GgufFile, Model, Tokenizer, nll};
//! use ckv_select::{Method, SelectParams};
//!
//! let gguf = GgufFile::open("assets/SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! let (model, tokenizer) = (Model::from_gguf(&gguf)?, Tokenizer::from_gguf(&gguf)?);
//! let tokens = tokenizer.encode("Call me Ishmael. Some years ago")?;
//! let select = SelectParams::new(Method::ClusterKv).budget(256);
//! let mut runner = model.runner(&select, 2)?;
//! let (mut seq, _hidden) = runner.prefill(&tokens[..4])?;
//! runner.decode(&mut [(&mut seq, tokens[4])])?;
//! println!("NLL of the next token: {:.3}", nll(runner.logits(), tokens[5]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod config;
mod error;
mod gguf;
mod model;
mod ops;
mod quant;
pub mod testing;
mod tokenizer;
mod weights;

pub use config::LlamaConfig;
pub use error::{GgufError, ModelError};
pub use gguf::{GgufFile, GgufValue, MAX_ARRAY_DEPTH, TensorInfo};
pub use model::{DecodeObserver, Model, PREFILL_CHUNK, PromptSnapshot, Runner, Sequence};
pub use ops::{argmax, nll};
pub use quant::{GgmlType, dequantize};
pub use tokenizer::{Tokenizer, TokenizerError};
