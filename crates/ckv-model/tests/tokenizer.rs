//! The tokenizer rebuilt from GGUF metadata: on tiny files the tests write themselves
//! (encoding, special tokens, typed errors), and on the default model and text of DESIGN
//! section 7 when `cargo xtask fetch` has put them in `assets/` (or `CKV_MODEL` and
//! `CKV_TEXT` name them). Without those files the model tests say they skipped, in one line.

mod common;

use std::time::Instant;

use ckv_model::{GgufError, GgufFile, Tokenizer, TokenizerError};
use common::{Val, default_model_path, default_text_path, gguf_bytes, temp_file};

// ---------------------------------------------------------------------------------------
// Tiny GGUF files.

/// The tokenizer metadata of a tiny byte-level vocabulary, SmolLM2-style.
fn tiny_metadata() -> Vec<(&'static str, Val<'static>)> {
    vec![
        ("tokenizer.ggml.model", Val::Str("gpt2")),
        ("tokenizer.ggml.pre", Val::Str("smollm")),
        (
            "tokenizer.ggml.tokens",
            Val::Strs(vec![
                "<|endoftext|>",
                "<|im_start|>",
                "a",
                "b",
                "c",
                "Ġ",
                "ab",
                "Ġab",
                "1",
                "2",
                "3",
                "12",
                "Ċ",
            ]),
        ),
        ("tokenizer.ggml.merges", Val::Strs(vec!["a b", "Ġ ab", "1 2"])),
        ("tokenizer.ggml.token_type", Val::I32s(vec![3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1])),
        ("tokenizer.ggml.bos_token_id", Val::U32(1)),
        ("tokenizer.ggml.eos_token_id", Val::U32(0)),
    ]
}

/// The tiny metadata with `key` replaced by `val` (added if absent), or removed if `None`.
fn tiny_with(key: &'static str, val: Option<Val<'static>>) -> Vec<(&'static str, Val<'static>)> {
    let mut md: Vec<_> = tiny_metadata().into_iter().filter(|(k, _)| *k != key).collect();
    if let Some(v) = val {
        md.push((key, v));
    }
    md
}

fn build(metadata: &[(&str, Val<'_>)]) -> Result<Tokenizer, TokenizerError> {
    let file = temp_file(&gguf_bytes(metadata, &[], 32));
    let gguf = GgufFile::open(file.path()).unwrap();
    Tokenizer::from_gguf(&gguf)
}

#[test]
fn tiny_vocabulary_encodes_and_decodes() {
    let tok = build(&tiny_metadata()).unwrap();
    assert_eq!(tok.vocab_size(), 13);
    assert_eq!((tok.bos_id(), tok.eos_id()), (Some(1), Some(0)));
    assert_eq!(tok.token(7), Some("Ġab"));
    assert_eq!(tok.token(13), None);
    assert_eq!(tok.token_id("<|im_start|>"), Some(1));

    // "ab" merges; " ab" is Ġ + a + b, merged twice; digits stay apart although "1 2" merges.
    let text = "ab ab1c123\n";
    let ids = tok.encode(text).unwrap();
    assert_eq!(ids, [6, 7, 8, 4, 8, 9, 10, 12]);
    assert_eq!(tok.decode(&ids).unwrap(), text);

    // Control tokens are matched whole in the text.
    let text = "<|im_start|>ab<|endoftext|>";
    let ids = tok.encode(text).unwrap();
    assert_eq!(ids, [1, 6, 0]);
    assert_eq!(tok.decode(&ids).unwrap(), text);

    assert_eq!(tok.encode("").unwrap(), Vec::<u32>::new());
    assert_eq!(tok.decode(&[]).unwrap(), "");
    assert!(matches!(tok.decode(&[2, 13]), Err(TokenizerError::Decode(_))));
}

#[test]
fn other_pre_tokenizers() {
    // GPT-2 alone: digits are not split, so "12" merges.
    let tok = build(&tiny_with("tokenizer.ggml.pre", Some(Val::Str("gpt2")))).unwrap();
    assert_eq!(tok.encode("ab 12").unwrap(), [6, 5, 11]);
    // Llama 3: numbers in groups of up to three, byte-level afterwards.
    let tok = build(&tiny_with("tokenizer.ggml.pre", Some(Val::Str("llama-bpe")))).unwrap();
    let ids = tok.encode("ab ab123").unwrap();
    assert_eq!(ids, [6, 7, 11, 10]);
    assert_eq!(tok.decode(&ids).unwrap(), "ab ab123");
}

#[test]
fn typed_errors() {
    let err = build(&tiny_with("tokenizer.ggml.model", Some(Val::Str("llama")))).unwrap_err();
    assert!(matches!(&err, TokenizerError::Unsupported { model } if model == "llama"), "{err}");

    let err = build(&tiny_with("tokenizer.ggml.merges", None)).unwrap_err();
    assert!(
        matches!(&err, TokenizerError::Gguf(GgufError::MissingKey(k)) if k == "tokenizer.ggml.merges"),
        "{err}"
    );

    let err = build(&tiny_with("tokenizer.ggml.model", None)).unwrap_err();
    assert!(matches!(&err, TokenizerError::Gguf(GgufError::MissingKey(_))), "{err}");

    let err = build(&tiny_with("tokenizer.ggml.merges", Some(Val::Str("a b")))).unwrap_err();
    assert!(matches!(&err, TokenizerError::Gguf(GgufError::WrongType { .. })), "{err}");

    let err = build(&tiny_with("tokenizer.ggml.merges", Some(Val::Strs(vec!["a b", "ab"])))).unwrap_err();
    assert!(
        matches!(&err, TokenizerError::BadMetadata { key, .. } if key == "tokenizer.ggml.merges"),
        "{err}"
    );

    // A merge whose parts are not in the vocabulary: the `tokenizers` crate refuses it.
    let err = build(&tiny_with("tokenizer.ggml.merges", Some(Val::Strs(vec!["a x"])))).unwrap_err();
    assert!(matches!(&err, TokenizerError::Build(_)), "{err}");

    let err = build(&tiny_with("tokenizer.ggml.token_type", Some(Val::I32s(vec![1, 1])))).unwrap_err();
    assert!(
        matches!(&err, TokenizerError::BadMetadata { key, .. } if key == "tokenizer.ggml.token_type"),
        "{err}"
    );

    let err = build(&tiny_with("tokenizer.ggml.tokens", Some(Val::I32s(vec![1, 2])))).unwrap_err();
    assert!(matches!(&err, TokenizerError::BadMetadata { .. }), "{err}");

    let err = build(&tiny_with("tokenizer.ggml.bos_token_id", Some(Val::U32(13)))).unwrap_err();
    assert!(
        matches!(&err, TokenizerError::BadMetadata { key, .. } if key == "tokenizer.ggml.bos_token_id"),
        "{err}"
    );

    let err = build(&tiny_with("tokenizer.ggml.pre", Some(Val::Str("qwen2")))).unwrap_err();
    assert!(matches!(&err, TokenizerError::UnsupportedPre { pre } if pre == "qwen2"), "{err}");
    let err = build(&tiny_with("tokenizer.ggml.pre", None)).unwrap_err();
    assert!(matches!(&err, TokenizerError::UnsupportedPre { .. }), "{err}");

    // Optional keys.
    let tok = build(&tiny_with("tokenizer.ggml.bos_token_id", None)).unwrap();
    assert_eq!(tok.bos_id(), None);
    let tok = build(&tiny_with("tokenizer.ggml.token_type", None)).unwrap();
    assert_eq!(tok.vocab_size(), 13);
}

// ---------------------------------------------------------------------------------------
// The default model and text.

fn default_tokenizer() -> Option<Tokenizer> {
    let Some(path) = default_model_path() else {
        eprintln!("skipped: no default model (run `cargo xtask fetch` or set CKV_MODEL)");
        return None;
    };
    let start = Instant::now();
    let tok = Tokenizer::from_gguf(&GgufFile::open(path).unwrap()).unwrap();
    eprintln!("default tokenizer: opened and rebuilt in {:.2} s", start.elapsed().as_secs_f64());
    Some(tok)
}

fn default_text() -> Option<String> {
    let Some(path) = default_text_path() else {
        eprintln!("skipped: no default text (run `cargo xtask fetch` or set CKV_TEXT)");
        return None;
    };
    Some(std::fs::read_to_string(path).unwrap())
}

#[test]
fn default_model_vocabulary_and_special_tokens() {
    let Some(tok) = default_tokenizer() else { return };
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!((tok.bos_id(), tok.eos_id()), (Some(1), Some(2)));
    assert_eq!(tok.token(1), Some("<|im_start|>"));
    assert_eq!(tok.token(2), Some("<|im_end|>"));

    assert_eq!(tok.encode("<|im_start|>").unwrap(), [1]);
    let chat = "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|im_start|>assistant\n";
    let ids = tok.encode(chat).unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(ids.iter().filter(|&&id| id == 1).count(), 2);
    assert_eq!(ids.iter().filter(|&&id| id == 2).count(), 1);
    assert_eq!(tok.decode(&ids).unwrap(), chat);

    // Digits one by one, each decoding to itself.
    let ids = tok.encode("12345").unwrap();
    assert_eq!(ids.len(), 5);
    for (id, digit) in ids.iter().zip(["1", "2", "3", "4", "5"]) {
        assert_eq!(tok.decode(&[*id]).unwrap(), digit);
    }

    // Any UTF-8 round-trips through the byte-level alphabet.
    for text in ["", " ", "  leading spaces", "café — naïve 日本語 🐳\r\n\ttabs", "a\u{0}b", "\n\n\n"]
    {
        assert_eq!(tok.decode(&tok.encode(text).unwrap()).unwrap(), text, "{text:?}");
    }
}

#[test]
fn default_text_first_tokens_and_whole_book_round_trip() {
    let Some(tok) = default_tokenizer() else { return };
    let Some(text) = default_text() else { return };
    assert!(text.starts_with("CHAPTER 1. Loomings."));

    let start = Instant::now();
    let ids = tok.encode(&text).unwrap();
    let encode_s = start.elapsed().as_secs_f64();
    assert_eq!(ids[..12], [5229, 41958, 216, 33, 30, 450, 6364, 616, 30, 198, 198, 12800]);

    let start = Instant::now();
    let decoded = tok.decode(&ids).unwrap();
    let decode_s = start.elapsed().as_secs_f64();
    assert!(decoded == text, "decode(encode(book)) differs from the book");
    eprintln!(
        "whole book: {} bytes, {} tokens, encode {encode_s:.2} s, decode {decode_s:.2} s",
        text.len(),
        ids.len()
    );
}
