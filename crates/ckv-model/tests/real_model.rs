//! The default model of DESIGN section 7, when `cargo xtask fetch` has put it in `assets/`
//! (or `CKV_MODEL` names a file): its architecture facts, and every tensor dequantizes to
//! finite values. Without the file the test says it skipped, in one line.

mod common;

use std::path::PathBuf;

use ckv_model::{GgmlType, GgufFile};
use common::asset;

fn model_path() -> Option<PathBuf> {
    asset("CKV_MODEL", "SmolLM2-135M-Instruct.Q4_1.gguf")
}

#[test]
fn default_model_matches_design_section_7() {
    let Some(path) = model_path() else {
        eprintln!("skipped: no default model (run `cargo xtask fetch` or set CKV_MODEL)");
        return;
    };
    let gguf = GgufFile::open(&path).unwrap();
    assert_eq!(gguf.get_str("general.architecture").unwrap(), "llama");
    let facts = [
        ("llama.block_count", 30),
        ("llama.embedding_length", 576),
        ("llama.feed_forward_length", 1536),
        ("llama.attention.head_count", 9),
        ("llama.attention.head_count_kv", 3),
        ("llama.context_length", 8192),
        ("tokenizer.ggml.bos_token_id", 1),
        ("tokenizer.ggml.eos_token_id", 2),
    ];
    for (key, want) in facts {
        assert_eq!(gguf.get_u32(key).unwrap(), want, "{key}");
    }
    assert_eq!(gguf.get_f32("llama.rope.freq_base").unwrap(), 100000.0);
    assert_eq!(gguf.get_f32("llama.attention.layer_norm_rms_epsilon").unwrap(), 1e-5);
    assert_eq!(gguf.get_array("tokenizer.ggml.tokens").unwrap().len(), 49152);
    assert!(gguf.tensor("output.weight").is_err(), "tied embeddings: no output.weight");
    let embd = gguf.tensor("token_embd.weight").unwrap();
    assert_eq!(embd.dims, [576, 49152]);
    assert_eq!(gguf.tensors().len(), 2 + 30 * 9);
    for t in gguf.tensors() {
        assert!(
            matches!(t.dtype, GgmlType::F32 | GgmlType::Q4_1 | GgmlType::Q8_0),
            "{}: {}",
            t.name,
            t.dtype
        );
        let values = gguf.dequantize(&t.name).unwrap();
        assert_eq!(values.len(), t.n_elements());
        assert!(values.iter().all(|x| x.is_finite()), "{}", t.name);
    }
}
