//! Models in the GGUF types most published files hold: a synthetic Q4_K_M-like file
//! (Q4_K, Q5_K and Q6_K matrices) and one with the 32-block fallbacks llama.cpp writes for
//! rows that are not whole super-blocks (Q5_0, Q5_1, Q8_0, Q4_0, F16) load, keep their
//! types in memory, and decode like the same weights written as F32.

mod common;

use ckv_model::{GgmlType, GgufError, GgufFile, Model, ModelError};
use ckv_select::{Method, SelectParams};
use common::{TINY, as_f32, model_with, rel_err, temp_file, tiny_model};

/// Logits of a prefill of 24 tokens, then of 8 decode steps.
fn logits(model: &Model) -> (Vec<f32>, Vec<Vec<f32>>) {
    let tokens: Vec<u32> = (0..32u32).map(|i| (i * 131 + 7) % TINY.5 as u32).collect();
    let mut runner = model.runner(&SelectParams::new(Method::Dense), 0).unwrap();
    let (mut seq, hidden) = runner.prefill(&tokens[..24]).unwrap();
    let prefill = model.logits(&hidden);
    let decoded = tokens[24..]
        .iter()
        .map(|&t| {
            runner.decode(&mut [(&mut seq, t)]).unwrap();
            runner.logits().to_vec()
        })
        .collect();
    (prefill, decoded)
}

fn check_against_f32_twin(code_of: impl Fn(&str) -> Option<u32>, want: &[(GgmlType, usize)]) {
    let bytes = tiny_model(code_of, 11);
    let (file, twin) = (temp_file(&bytes), temp_file(&as_f32(&bytes)));
    let gguf = GgufFile::open(file.path()).unwrap();
    let model = Model::from_gguf(&gguf).unwrap();
    assert_eq!(model.weight_types(), want);
    let tensor_bytes: usize = gguf.tensors().iter().map(|t| t.data.len()).sum();
    assert_eq!(model.weight_bytes(), tensor_bytes, "weights are held as the file holds them");
    let reference = Model::load(twin.path()).unwrap();
    assert!(reference.weight_bytes() > model.weight_bytes());
    let ((prefill, decoded), (want_prefill, want_decoded)) = (logits(&model), logits(&reference));
    // Prefill of 24 rows and decode both take the integer kernels on 8-bit activations: the
    // error is that of quantizing activations per block (about 1/254 of a block's largest
    // value per element; blocks of 256 for the K-quants), carried through two layers. A
    // random model has the odd position whose residual nearly cancels, and the final norm
    // amplifies its noise: the bound is on the whole and on the median position.
    let rows: Vec<(&[f32], &[f32])> = prefill
        .chunks(TINY.5)
        .zip(want_prefill.chunks(TINY.5))
        .chain(decoded.iter().zip(&want_decoded).map(|(a, b)| (&a[..], &b[..])))
        .collect();
    let mut errors: Vec<f64> = rows.iter().map(|(a, b)| rel_err(a, b)).collect();
    errors.sort_by(f64::total_cmp);
    let (got, want): (Vec<f32>, Vec<f32>) =
        rows.iter().flat_map(|(a, b)| a.iter().copied().zip(b.iter().copied())).unzip();
    let (total, median) = (rel_err(&got, &want), errors[errors.len() / 2]);
    assert!(total < 0.05 && median < 0.02, "relative error {total} in all, {median} at the median position");
}

#[test]
fn a_q4_k_m_like_model_decodes_like_its_f32_twin() {
    // llama.cpp's Q4_K_M: Q4_K, with Q6_K for attn_v, ffn_down and the output head.
    let code_of = |name: &str| {
        Some(match name {
            n if n.contains("attn_v") || n.contains("ffn_down") => 14,
            "output.weight" => 14,
            n if n.contains("blk.1.ffn_up") => 13,
            _ => 12,
        })
    };
    check_against_f32_twin(code_of, &[(GgmlType::Q4_K, 10), (GgmlType::Q5_K, 1), (GgmlType::Q6_K, 5)]);
}

#[test]
fn the_32_block_fallback_types_decode_like_their_f32_twin() {
    let code_of = |name: &str| {
        Some(match name {
            n if n.contains("attn_q") => 6,
            n if n.contains("attn_k") => 7,
            n if n.contains("attn_v") => 8,
            n if n.contains("attn_output") => 2,
            n if n.contains("ffn_gate") => 3,
            n if n.contains("ffn_up") => 1,
            _ => 0,
        })
    };
    let want = [
        (GgmlType::F32, 4),
        (GgmlType::F16, 2),
        (GgmlType::Q4_0, 2),
        (GgmlType::Q4_1, 2),
        (GgmlType::Q5_0, 2),
        (GgmlType::Q5_1, 2),
        (GgmlType::Q8_0, 2),
    ];
    check_against_f32_twin(code_of, &want);
}

#[test]
fn rows_that_are_not_whole_blocks_are_a_named_error() {
    // Hidden 160: a Q4_K attn_q holds 160 x 160 values (100 super-blocks), in rows of 160.
    let bytes = model_with((160, 512, 4, 2, 1, 300), |n| n.contains("attn_q").then_some(12), 5);
    let err = Model::load(temp_file(&bytes).path()).unwrap_err();
    let ModelError::Gguf(GgufError::BadTensor { name, reason }) = &err else { panic!("{err}") };
    assert_eq!(name, "blk.0.attn_q.weight");
    assert!(reason.contains("rows of 160 elements are not whole blocks of 256 for Q4_K"), "{reason}");
}
