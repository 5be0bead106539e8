//! The model's weights, dequantized to `f32` once at load time.

use crate::{GgufFile, LlamaConfig, ModelError};

/// A weight matrix `[out, inp]`, row-major (GGML dims `[inp, out]`).
#[derive(Debug, Clone)]
pub(crate) struct Matrix {
    pub(crate) inp: usize,
    pub(crate) w: Vec<f32>,
}

impl Matrix {
    fn load(gguf: &GgufFile, name: &str, inp: usize, out: usize) -> Result<Self, ModelError> {
        check_dims(gguf, name, &[inp as u64, out as u64])?;
        Ok(Self { inp, w: gguf.dequantize(name)? })
    }
}

fn check_dims(gguf: &GgufFile, name: &str, want: &[u64]) -> Result<(), ModelError> {
    let dims = &gguf.tensor(name)?.dims;
    if dims != want {
        return Err(ModelError::TensorShape {
            name: name.to_owned(),
            expected: want.to_vec(),
            found: dims.clone(),
        });
    }
    Ok(())
}

fn vector(gguf: &GgufFile, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
    check_dims(gguf, name, &[len as u64])?;
    Ok(gguf.dequantize(name)?)
}

/// One transformer block.
#[derive(Debug, Clone)]
pub(crate) struct Block {
    pub(crate) attn_norm: Vec<f32>,
    pub(crate) wq: Matrix,
    pub(crate) wk: Matrix,
    pub(crate) wv: Matrix,
    pub(crate) wo: Matrix,
    pub(crate) ffn_norm: Vec<f32>,
    pub(crate) gate: Matrix,
    pub(crate) up: Matrix,
    pub(crate) down: Matrix,
}

/// Every weight of the model.
#[derive(Debug, Clone)]
pub(crate) struct Weights {
    /// Token embeddings `[vocab, hidden]`.
    pub(crate) embed: Matrix,
    pub(crate) blocks: Vec<Block>,
    pub(crate) output_norm: Vec<f32>,
    /// `output.weight`, or `None` when the embeddings are tied.
    pub(crate) output: Option<Matrix>,
}

impl Weights {
    pub(crate) fn load(gguf: &GgufFile, c: &LlamaConfig) -> Result<Self, ModelError> {
        let (h, kv) = (c.hidden, c.n_kv_heads * c.head_dim);
        let blocks = (0..c.n_layers)
            .map(|l| {
                let m =
                    |name: &str, inp, out| Matrix::load(gguf, &format!("blk.{l}.{name}.weight"), inp, out);
                Ok(Block {
                    attn_norm: vector(gguf, &format!("blk.{l}.attn_norm.weight"), h)?,
                    wq: m("attn_q", h, h)?,
                    wk: m("attn_k", h, kv)?,
                    wv: m("attn_v", h, kv)?,
                    wo: m("attn_output", h, h)?,
                    ffn_norm: vector(gguf, &format!("blk.{l}.ffn_norm.weight"), h)?,
                    gate: m("ffn_gate", h, c.ffn)?,
                    up: m("ffn_up", h, c.ffn)?,
                    down: m("ffn_down", c.ffn, h)?,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let output = match gguf.tensor("output.weight") {
            Ok(_) => Some(Matrix::load(gguf, "output.weight", h, c.vocab)?),
            Err(_) => None,
        };
        Ok(Self {
            embed: Matrix::load(gguf, "token_embd.weight", h, c.vocab)?,
            blocks,
            output_norm: vector(gguf, "output_norm.weight", h)?,
            output,
        })
    }
}
