//! The default model of DESIGN section 7, when `cargo xtask fetch` has put it in `assets/`
//! (or `CKV_MODEL` names a file): its architecture facts, and every tensor dequantizes to
//! finite values. Without the file the test says it skipped, in one line.

mod common;

use ckv_model::{GgmlType, GgufFile};
use common::{asset, default_model_path};

#[test]
fn default_model_matches_design_section_7() {
    let Some(path) = default_model_path() else {
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

/// llama.cpp's perplexity of exactly tokens 1024..2048 of Moby-Dick given the first 1024, on
/// the default model: `llama-perplexity -c 1536 --ppl-stride 1024 --chunks 1 -t 2` (llama.cpp
/// as vendored by llama-cpp-python 0.3.36, built by `cargo xtask peer`; its plain `-c 2048
/// --chunks 1`, which scores tokens 1025..2048, gives 36.66; DESIGN section 7 quotes 36.74
/// from another build).
const LLAMA_CPP_PERPLEXITY: f64 = 36.53;

/// Perplexity of tokens 1024..2048 given the first 1024, prefilled in chunks of `chunk`.
fn second_half_perplexity(model: &ckv_model::Model, tokens: &[u32], chunk: usize) -> f64 {
    use ckv_select::{Method, SelectParams};
    let mut runner = model.runner(&SelectParams::new(Method::Dense), 0).unwrap().with_prefill_chunk(chunk);
    let (_, hidden) = runner.prefill(&tokens[..2048]).unwrap();
    let h = model.config().hidden;
    let logits = model.logits(&hidden[1023 * h..2047 * h]);
    let vocab = model.config().vocab;
    let total: f64 =
        (0..1024).map(|i| ckv_model::nll(&logits[i * vocab..(i + 1) * vocab], tokens[1024 + i])).sum();
    (total / 1024.0).exp()
}

/// The perplexity of tokens 1024..2048 of the default text given the first 1024, through both
/// product paths (chunks of 512: dequantized tiles in the sgemm; chunks of 32: the integer
/// kernels, as a decode batch), each within 1% of `llama_cpp`'s on the same file.
fn check_perplexity(path: &std::path::Path, llama_cpp: f64) {
    let Some(text) = asset("CKV_TEXT", "moby-dick.txt") else {
        eprintln!("skipped: no default text (run `cargo xtask fetch`)");
        return;
    };
    let gguf = GgufFile::open(path).unwrap();
    let model = ckv_model::Model::from_gguf(&gguf).unwrap();
    let tokens = ckv_model::Tokenizer::from_gguf(&gguf)
        .unwrap()
        .encode(&std::fs::read_to_string(text).unwrap())
        .unwrap();
    for chunk in [512, 32] {
        let ppl = second_half_perplexity(&model, &tokens, chunk);
        eprintln!(
            "{}, prefill chunks of {chunk}: perplexity {ppl:.3} (llama.cpp {llama_cpp})",
            path.display()
        );
        assert!((ppl / llama_cpp - 1.0).abs() <= 0.01, "chunks of {chunk}: perplexity {ppl}");
    }
}

/// The default model (Q4_1) keeps its perplexity within 1% of llama.cpp's.
#[test]
fn perplexity_is_within_one_percent_of_llama_cpp() {
    match default_model_path() {
        Some(path) => check_perplexity(&path, LLAMA_CPP_PERPLEXITY),
        None => eprintln!("skipped: no default model (run `cargo xtask fetch`)"),
    }
}

/// A real Q4_K_M file (the default model requantized by llama.cpp's `llama-quantize`, made by
/// `cargo xtask peer`: Q4_K and Q6_K for ffn_down, Q5_0 and Q8_0 where rows of 576 are not
/// whole super-blocks) keeps its perplexity within 1% of llama.cpp's on the same file,
/// `llama-perplexity -c 1536 --ppl-stride 1024 --chunks 1 -t 2`: 38.41. Skipped when the file
/// is not there (not in CI: building llama.cpp takes 15 minutes).
#[test]
fn a_q4_k_m_file_from_llama_quantize_matches_llama_cpp() {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/peer/SmolLM2-135M-Instruct.Q4_K_M.gguf");
    if path.exists() {
        check_perplexity(&path, 38.41);
    } else {
        eprintln!("skipped: no {} (run `cargo xtask peer`)", path.display());
    }
}
