//! The model's weights, kept in their GGUF types: float matrices as typed rows, quantized
//! ones as their blocks inside the file's mapping (DESIGN section 7). Norm vectors are read
//! to `f32`.

use std::ops::Range;

use half::f16;

use crate::gguf::SharedBytes;
use crate::quant::DotKernel;
use crate::{GgmlType, GgufError, GgufFile, LlamaConfig, ModelError, dequantize};

/// How a matrix holds its rows.
#[derive(Debug, Clone)]
pub(crate) enum Rows {
    /// `f32` rows.
    F32(Vec<f32>),
    /// `f16` rows.
    F16(Vec<f16>),
    /// GGUF blocks (BF16 and the quantized types), `row_bytes` per row; `kernel` is the
    /// integer dot product of a quantized type.
    Blocks { bytes: SharedBytes, row_bytes: usize, kernel: Option<DotKernel> },
}

/// A weight matrix `[out, inp]`, row-major (GGML dims `[inp, out]`).
#[derive(Debug, Clone)]
pub(crate) struct Matrix {
    pub(crate) inp: usize,
    pub(crate) out: usize,
    pub(crate) dtype: GgmlType,
    pub(crate) rows: Rows,
}

impl Matrix {
    /// Tensor `name` of dims `[inp, out]`, in its type.
    pub(crate) fn load(gguf: &GgufFile, name: &str, inp: usize, out: usize) -> Result<Self, ModelError> {
        check_dims(gguf, name, &[inp as u64, out as u64])?;
        let dtype = gguf.tensor(name)?.dtype;
        let Some(row_bytes) = dtype.row_bytes(inp) else {
            return Err(match dtype.block() {
                None => GgufError::UnsupportedType { name: name.to_owned(), dtype },
                Some((per_block, _)) => GgufError::BadTensor {
                    name: name.to_owned(),
                    reason: format!("rows of {inp} elements are not whole blocks of {per_block} for {dtype}"),
                },
            }
            .into());
        };
        let rows = match dtype {
            GgmlType::F32 => Rows::F32(gguf.dequantize(name)?),
            GgmlType::F16 => Rows::F16(
                gguf.tensor_bytes(name)?.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]])).collect(),
            ),
            _ => Rows::Blocks { bytes: gguf.shared_bytes(name)?, row_bytes, kernel: DotKernel::of(dtype) },
        };
        Ok(Self { inp, out, dtype, rows })
    }

    /// Dequantizes row `r` into `out` (`inp` long).
    pub(crate) fn row_into(&self, r: usize, out: &mut [f32]) {
        let span = r * self.inp..(r + 1) * self.inp;
        match &self.rows {
            Rows::F32(w) => out.copy_from_slice(&w[span]),
            Rows::F16(w) => out.iter_mut().zip(&w[span]).for_each(|(o, w)| *o = w.to_f32()),
            Rows::Blocks { bytes, row_bytes, .. } => {
                let ok = dequantize(self.dtype, &bytes[r * row_bytes..(r + 1) * row_bytes], out);
                debug_assert!(ok, "rows are whole blocks (checked at load)");
            }
        }
    }

    /// Rows `rows` as `f32` `[rows.len(), inp]`: borrowed when the matrix holds `f32`,
    /// otherwise dequantized into `buf`.
    pub(crate) fn f32_rows<'a>(&'a self, rows: Range<usize>, buf: &'a mut Vec<f32>) -> &'a [f32] {
        if let Rows::F32(w) = &self.rows {
            return &w[rows.start * self.inp..rows.end * self.inp];
        }
        buf.resize(rows.len() * self.inp, 0.0);
        for (r, out) in rows.zip(buf.chunks_exact_mut(self.inp)) {
            self.row_into(r, out);
        }
        buf
    }

    /// Bytes the matrix holds.
    pub(crate) fn memory_bytes(&self) -> usize {
        match &self.rows {
            Rows::F32(w) => w.len() * 4,
            Rows::F16(w) => w.len() * 2,
            Rows::Blocks { bytes, .. } => bytes.len(),
        }
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

impl Block {
    fn matrices(&self) -> [&Matrix; 7] {
        [&self.wq, &self.wk, &self.wv, &self.wo, &self.gate, &self.up, &self.down]
    }
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

    /// The output head: `output.weight`, or the embeddings when tied.
    pub(crate) fn head(&self) -> &Matrix {
        self.output.as_ref().unwrap_or(&self.embed)
    }

    /// Bytes the weights hold (the matrices and the norm vectors).
    pub(crate) fn memory_bytes(&self) -> usize {
        let norms = 4
            * (self.output_norm.len()
                + self.blocks.iter().map(|b| b.attn_norm.len() + b.ffn_norm.len()).sum::<usize>());
        let matrices: usize = self.blocks.iter().flat_map(Block::matrices).map(Matrix::memory_bytes).sum();
        norms + matrices + self.embed.memory_bytes() + self.output.as_ref().map_or(0, Matrix::memory_bytes)
    }

    /// Tensors of each type among the matrices, in code order.
    pub(crate) fn types(&self) -> Vec<(GgmlType, usize)> {
        let mut counts = std::collections::BTreeMap::new();
        let all =
            self.blocks.iter().flat_map(Block::matrices).chain([&self.embed]).chain(self.output.as_ref());
        for m in all {
            *counts.entry(m.dtype.code()).or_insert(0) += 1;
        }
        counts.into_iter().map(|(code, n)| (GgmlType::from_code(code), n)).collect()
    }
}
