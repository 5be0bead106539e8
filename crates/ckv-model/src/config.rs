//! The shape of a Llama-family model, read from GGUF metadata.

use crate::{GgufFile, ModelError};

/// Hyper-parameters of a Llama-family model.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// `general.architecture` (the metadata prefix): `llama`, the only one that loads.
    pub architecture: String,
    /// Transformer blocks.
    pub n_layers: usize,
    /// Hidden size.
    pub hidden: usize,
    /// FFN inner size.
    pub ffn: usize,
    /// Query heads `Hq`.
    pub n_heads: usize,
    /// KV heads `Hkv`.
    pub n_kv_heads: usize,
    /// Head dimension `d = hidden / Hq`.
    pub head_dim: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// Trained context length.
    pub context: usize,
    /// RoPE base.
    pub rope_base: f32,
    /// RMSNorm epsilon.
    pub eps: f32,
}

impl LlamaConfig {
    /// Reads the configuration from `gguf`'s metadata; a missing or inconsistent key is a
    /// typed error naming it.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self, ModelError> {
        let architecture = gguf.get_str("general.architecture")?.to_owned();
        if architecture != "llama" {
            return Err(ModelError::Unsupported(format!(
                "general.architecture {architecture:?}: only llama (the Llama family) is supported"
            )));
        }
        let key = |k: &str| format!("{architecture}.{k}");
        let usize_of = |k: &str| -> Result<usize, ModelError> { Ok(gguf.get_u32(&key(k))? as usize) };
        let n_layers = usize_of("block_count")?;
        let hidden = usize_of("embedding_length")?;
        let ffn = usize_of("feed_forward_length")?;
        let n_heads = usize_of("attention.head_count")?;
        let n_kv_heads = usize_of("attention.head_count_kv").unwrap_or(n_heads);
        let context = usize_of("context_length")?;
        let eps = gguf.get_f32(&key("attention.layer_norm_rms_epsilon"))?;
        let rope_base = gguf.get_f32(&key("rope.freq_base")).unwrap_or(10000.0);
        let vocab = match gguf.get_u32(&key("vocab_size")) {
            Ok(v) => v as usize,
            Err(_) => gguf.get_array("tokenizer.ggml.tokens")?.len(),
        };
        let bad = |reason: String| ModelError::Unsupported(reason);
        if n_heads == 0 || n_kv_heads == 0 || hidden % n_heads != 0 || n_heads % n_kv_heads != 0 {
            return Err(bad(format!(
                "{n_heads} query heads, {n_kv_heads} KV heads, hidden {hidden}: heads must divide hidden and KV heads the heads"
            )));
        }
        let head_dim = hidden / n_heads;
        if head_dim % 2 != 0 {
            return Err(bad(format!("odd head dimension {head_dim}: RoPE rotates pairs")));
        }
        if let Ok(rope_dims) = gguf.get_u32(&key("rope.dimension_count"))
            && rope_dims as usize != head_dim
        {
            return Err(bad(format!("partial RoPE ({rope_dims} of {head_dim} dimensions)")));
        }
        Ok(Self {
            architecture,
            n_layers,
            hidden,
            ffn,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab,
            context,
            rope_base,
            eps,
        })
    }
}
