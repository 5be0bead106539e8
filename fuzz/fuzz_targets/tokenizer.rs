//! Fuzz target `tokenizer`: tokenizer metadata built with `arbitrary` (vocabulary, merges,
//! token types, BOS/EOS ids, model and pre-tokenizer names, each possibly missing or of the
//! wrong type), written into a GGUF with `ckv_model::testing::gguf_bytes`, then
//! `Tokenizer::from_gguf`, the encoding of arbitrary text and the decoding of arbitrary ids.
//!
//! Nothing may panic. A tokenizer that builds must decode exactly the ids inside its
//! vocabulary, encode into ids inside it, and, when its vocabulary holds every byte and no
//! special token, decode what it encoded back to the text.

#![no_main]

use arbitrary::Arbitrary;
use ckv_model::testing::{Val, gguf_bytes};
use ckv_model::{GgufFile, Tokenizer, TokenizerError};
use libfuzzer_sys::fuzz_target;

/// One vocabulary entry.
#[derive(Arbitrary, Debug)]
enum Token {
    /// The byte-level character of a byte.
    Byte(u8),
    /// Two earlier entries joined, with their merge (indices taken modulo the entries so far).
    Join(u16, u16),
    /// Any text.
    Raw(String),
}

/// A metadata value that is right, missing, or of another type.
#[derive(Arbitrary, Debug)]
enum Slot<T> {
    Right(T),
    Missing,
    WrongType(u32),
}

/// What `tokenizer.ggml.pre` names.
#[derive(Arbitrary, Debug)]
enum Pre {
    Smollm,
    Gpt2,
    LlamaBpe,
    Other(String),
}

/// The fuzz input.
#[derive(Arbitrary, Debug)]
struct Input {
    /// Starts the vocabulary with all 256 byte-level characters.
    all_bytes: bool,
    tokens: Vec<Token>,
    /// Extra merges `"a b"` of entries (modulo the vocabulary) or of any text.
    merges: Vec<(u16, u16)>,
    raw_merge: Option<String>,
    token_types: Slot<Vec<i32>>,
    bos: Slot<u32>,
    eos: Slot<u32>,
    model: Slot<bool>,
    pre: Slot<Pre>,
    tokens_slot: Slot<()>,
    merges_slot: Slot<()>,
    text: String,
    ids: Vec<u32>,
}

/// GPT-2's byte-level character of `b`: printable Latin-1 bytes stand for themselves, the
/// others for code points from 256 on, in byte order.
fn byte_char(b: u8) -> char {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(b) {
        char::from(b)
    } else {
        let n = (0..b).filter(|&c| !printable(c)).count() as u32;
        char::from_u32(256 + n).unwrap_or('?')
    }
}

/// The metadata value of `slot`, `right` turning a right one into its value.
fn slot<'a, T>(slot: &'a Slot<T>, right: impl FnOnce(&'a T) -> Val<'a>) -> Option<Val<'a>> {
    match slot {
        Slot::Right(x) => Some(right(x)),
        Slot::Missing => None,
        Slot::WrongType(x) => Some(if x % 2 == 0 { Val::U32(*x) } else { Val::Str("x") }),
    }
}

fuzz_target!(|input: Input| {
    let mut vocab: Vec<String> = Vec::new();
    let mut merges: Vec<String> = Vec::new();
    if input.all_bytes {
        vocab.extend((0..=255).map(|b| byte_char(b).to_string()));
    }
    for token in input.tokens.iter().take(512) {
        match token {
            Token::Byte(b) => vocab.push(byte_char(*b).to_string()),
            Token::Join(a, b) if !vocab.is_empty() => {
                let (a, b) = (&vocab[*a as usize % vocab.len()], &vocab[*b as usize % vocab.len()]);
                merges.push(format!("{a} {b}"));
                vocab.push(format!("{a}{b}"));
            }
            Token::Join(..) => {}
            Token::Raw(s) => vocab.push(s.clone()),
        }
    }
    for &(a, b) in input.merges.iter().take(64) {
        if !vocab.is_empty() {
            merges.push(format!("{} {}", vocab[a as usize % vocab.len()], vocab[b as usize % vocab.len()]));
        }
    }
    merges.extend(input.raw_merge.clone());
    let pre_name = match &input.pre {
        Slot::Right(Pre::Smollm) => "smollm",
        Slot::Right(Pre::Gpt2) => "gpt2",
        Slot::Right(Pre::LlamaBpe) => "llama-bpe",
        Slot::Right(Pre::Other(s)) => s.as_str(),
        _ => "",
    };
    let vocab_refs: Vec<&str> = vocab.iter().map(String::as_str).collect();
    let merge_refs: Vec<&str> = merges.iter().map(String::as_str).collect();
    let values = [
        ("tokenizer.ggml.model", slot(&input.model, |&gpt2| Val::Str(if gpt2 { "gpt2" } else { "llama" }))),
        ("tokenizer.ggml.pre", slot(&input.pre, |_| Val::Str(pre_name))),
        ("tokenizer.ggml.tokens", slot(&input.tokens_slot, |()| Val::Strs(vocab_refs.clone()))),
        ("tokenizer.ggml.merges", slot(&input.merges_slot, |()| Val::Strs(merge_refs.clone()))),
        ("tokenizer.ggml.token_type", slot(&input.token_types, |t| Val::I32s(t.clone()))),
        ("tokenizer.ggml.bos_token_id", slot(&input.bos, |&id| Val::U32(id))),
        ("tokenizer.ggml.eos_token_id", slot(&input.eos, |&id| Val::U32(id))),
    ];
    let metadata: Vec<(&str, Val<'_>)> =
        values.into_iter().filter_map(|(key, value)| value.map(|v| (key, v))).collect();
    let gguf = GgufFile::from_bytes(gguf_bytes(&metadata, &[], 32)).expect("the writer's GGUF reads back");
    let tokenizer = match Tokenizer::from_gguf(&gguf) {
        Ok(tokenizer) => tokenizer,
        Err(TokenizerError::Build(_) | TokenizerError::BadMetadata { .. }) => return,
        Err(
            TokenizerError::Gguf(_)
            | TokenizerError::Unsupported { .. }
            | TokenizerError::UnsupportedPre { .. },
        ) => {
            return;
        }
        Err(other) => panic!("building gives {other}"),
    };
    let n = tokenizer.vocab_size();
    assert_eq!(n, vocab.len());
    let special = match &input.token_types {
        Slot::Right(types) => types.iter().any(|&t| t == 3 || t == 4),
        _ => false,
    };
    match tokenizer.encode(&input.text) {
        Ok(ids) => {
            assert!(ids.iter().all(|&id| (id as usize) < n), "{ids:?} outside {n} tokens");
            let decoded = tokenizer.decode(&ids).expect("encoded ids decode");
            if input.all_bytes && !special {
                assert_eq!(decoded, input.text);
            }
        }
        Err(TokenizerError::Encode(_)) => {}
        Err(other) => panic!("encoding gives {other}"),
    }
    let inside = input.ids.iter().all(|&id| (id as usize) < n);
    match tokenizer.decode(&input.ids) {
        Ok(_) => assert!(inside, "decoded ids outside the vocabulary of {n}: {:?}", input.ids),
        Err(TokenizerError::Decode(_)) => {}
        Err(other) => panic!("decoding gives {other}"),
    }
    for id in input.ids.iter().take(8) {
        if let Some(token) = tokenizer.token(*id) {
            assert_eq!(token, vocab[*id as usize]);
        }
    }
});
