//! The tokenizer: byte-level BPE rebuilt from a GGUF file's `tokenizer.ggml.*` metadata with
//! the `tokenizers` crate.
//!
//! The vocabulary is `tokenizer.ggml.tokens` (id = index), the merges are
//! `tokenizer.ggml.merges` (each `"a b"`, in rank order), and tokens whose
//! `tokenizer.ggml.token_type` is control (3) or user-defined (4) become special added
//! tokens, matched whole in the input text. The pre-tokenizer follows
//! `tokenizer.ggml.pre`: `smollm` splits digits one by one and then applies GPT-2's
//! byte-level split; `gpt2` is GPT-2's byte-level split alone; `llama-bpe` (Llama 3) splits
//! with Llama 3's pattern first. There is no normalizer and no post-processor: encoding never
//! adds BOS.

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::{GgufError, GgufFile, GgufValue};

/// GGUF token type of control tokens (`<|im_start|>`, `<|endoftext|>`).
const TOKEN_TYPE_CONTROL: i64 = 3;
/// GGUF token type of user-defined tokens.
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Llama 3's pre-tokenizer pattern, as in its `tokenizer.json`.
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Errors of building or running a [`Tokenizer`].
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A metadata key is missing or of the wrong type.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// `tokenizer.ggml.model` is not a tokenizer this crate rebuilds (only `gpt2`, byte-level
    /// BPE, is).
    #[error("unsupported tokenizer model {model:?}: only \"gpt2\" (byte-level BPE) is supported")]
    Unsupported {
        /// The value of `tokenizer.ggml.model`.
        model: String,
    },
    /// `tokenizer.ggml.pre` names a pre-tokenizer this crate does not know, or is missing.
    #[error(
        "unsupported pre-tokenizer {pre:?} (tokenizer.ggml.pre): supported are \"smollm\", \"gpt2\", \"llama-bpe\""
    )]
    UnsupportedPre {
        /// The value of `tokenizer.ggml.pre`, or `<missing>`.
        pre: String,
    },
    /// Tokenizer metadata that is present but malformed.
    #[error("bad tokenizer metadata {key:?}: {reason}")]
    BadMetadata {
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The `tokenizers` crate refused the rebuilt tokenizer.
    #[error("cannot build the tokenizer: {0}")]
    Build(String),
    /// Encoding failed.
    #[error("cannot encode: {0}")]
    Encode(String),
    /// Decoding failed (an id outside the vocabulary, for one).
    #[error("cannot decode: {0}")]
    Decode(String),
}

/// Byte-level BPE tokenizer rebuilt from a GGUF file's metadata.
///
/// ```no_run
/// use ckv_model::{GgufFile, Tokenizer};
///
/// let gguf = GgufFile::open("assets/SmolLM2-135M-Instruct.Q4_1.gguf")?;
/// let tokenizer = Tokenizer::from_gguf(&gguf)?;
/// let ids = tokenizer.encode("CHAPTER 1. Loomings.")?;
/// assert_eq!(tokenizer.decode(&ids)?, "CHAPTER 1. Loomings.");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    tokens: Vec<String>,
    bos: Option<u32>,
    eos: Option<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.tokens.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish_non_exhaustive()
    }
}

fn bad(key: &str, reason: impl Into<String>) -> TokenizerError {
    TokenizerError::BadMetadata { key: key.to_owned(), reason: reason.into() }
}

/// The array at `key` as strings.
fn strings<'a>(gguf: &'a GgufFile, key: &str) -> Result<Vec<&'a str>, TokenizerError> {
    gguf.get_array(key)?
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            GgufValue::String(s) => Ok(s.as_str()),
            other => Err(bad(key, format!("item {i} is {}, expected a string", other.type_name()))),
        })
        .collect()
}

/// The token id at `key`: `None` when the key is absent; an error when it is not a
/// non-negative integer below `n_vocab`.
fn token_id(gguf: &GgufFile, key: &str, n_vocab: usize) -> Result<Option<u32>, TokenizerError> {
    match gguf.get_u32(key) {
        Ok(id) if (id as usize) < n_vocab => Ok(Some(id)),
        Ok(id) => Err(bad(key, format!("token id {id} is outside the vocabulary of {n_vocab}"))),
        Err(GgufError::MissingKey(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The pre-tokenizer named by `tokenizer.ggml.pre`.
fn pre_tokenizer(pre: Option<&str>) -> Result<PreTokenizerWrapper, TokenizerError> {
    let byte_level = |use_regex| ByteLevel::new(false, true, use_regex);
    Ok(match pre {
        Some("smollm") => Sequence::new(vec![Digits::new(true).into(), byte_level(true).into()]).into(),
        Some("gpt2") => byte_level(true).into(),
        Some("llama-bpe" | "llama3" | "dbrx" | "smaug-bpe") => {
            let split = Split::new(
                SplitPattern::Regex(LLAMA3_PATTERN.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| TokenizerError::Build(e.to_string()))?;
            Sequence::new(vec![split.into(), byte_level(false).into()]).into()
        }
        other => {
            return Err(TokenizerError::UnsupportedPre { pre: other.unwrap_or("<missing>").to_owned() });
        }
    })
}

impl Tokenizer {
    /// Rebuilds the tokenizer from `gguf`'s `tokenizer.ggml.*` metadata.
    ///
    /// Needs `tokenizer.ggml.model` = `gpt2`, `tokenizer.ggml.pre` (see the module docs),
    /// `tokenizer.ggml.tokens` and `tokenizer.ggml.merges`; `tokenizer.ggml.token_type`,
    /// `tokenizer.ggml.bos_token_id` and `tokenizer.ggml.eos_token_id` are optional.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self, TokenizerError> {
        let model = gguf.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(TokenizerError::Unsupported { model: model.to_owned() });
        }
        let pre = match gguf.get_str("tokenizer.ggml.pre") {
            Ok(pre) => Some(pre),
            Err(GgufError::MissingKey(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let pre_tokenizer = pre_tokenizer(pre)?;

        let tokens = strings(gguf, "tokenizer.ggml.tokens")?;
        if tokens.is_empty() {
            return Err(bad("tokenizer.ggml.tokens", "empty vocabulary"));
        }
        let n_vocab = tokens.len();
        let n_vocab_u32 = u32::try_from(n_vocab)
            .map_err(|_| bad("tokenizer.ggml.tokens", format!("{n_vocab} tokens do not fit u32 ids")))?;
        let vocab: Vocab = tokens.iter().zip(0..n_vocab_u32).map(|(&t, id)| (t.to_owned(), id)).collect();

        let merges = strings(gguf, "tokenizer.ggml.merges")?
            .into_iter()
            .enumerate()
            .map(|(i, m)| match m.split_once(' ') {
                Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains(' ') => {
                    Ok((a.to_owned(), b.to_owned()))
                }
                _ => Err(bad("tokenizer.ggml.merges", format!("merge {i} is {m:?}, expected \"a b\""))),
            })
            .collect::<Result<Vec<_>, _>>()?;

        let special = match gguf.get_array("tokenizer.ggml.token_type") {
            Ok(types) => {
                if types.len() != n_vocab {
                    return Err(bad(
                        "tokenizer.ggml.token_type",
                        format!("{} types for {n_vocab} tokens", types.len()),
                    ));
                }
                let mut special = Vec::new();
                for (i, t) in types.iter().enumerate() {
                    let t = match *t {
                        GgufValue::I32(x) => i64::from(x),
                        ref other => other.as_u64().and_then(|x| i64::try_from(x).ok()).ok_or_else(|| {
                            bad(
                                "tokenizer.ggml.token_type",
                                format!("item {i} is {}, expected an integer", other.type_name()),
                            )
                        })?,
                    };
                    if t == TOKEN_TYPE_CONTROL || t == TOKEN_TYPE_USER_DEFINED {
                        special.push(AddedToken::from(tokens[i], true));
                    }
                }
                special
            }
            Err(GgufError::MissingKey(_)) => Vec::new(),
            Err(e) => return Err(e.into()),
        };

        let bos = token_id(gguf, "tokenizer.ggml.bos_token_id", n_vocab)?;
        let eos = token_id(gguf, "tokenizer.ggml.eos_token_id", n_vocab)?;

        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| TokenizerError::Build(e.to_string()))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        inner.add_special_tokens(&special);

        Ok(Self { inner, tokens: tokens.into_iter().map(str::to_owned).collect(), bos, eos })
    }

    /// The token ids of `text`, without BOS. Special tokens written in the text (such as
    /// `<|im_start|>`) map to their ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let encoding =
            self.inner.encode_fast(text, false).map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The text of `ids`, special tokens included: `decode(encode(text)) == text`. Bytes that
    /// are not valid UTF-8 (a sequence cut inside a character) become U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.tokens.len()) {
            return Err(TokenizerError::Decode(format!(
                "token id {id} is outside the vocabulary of {}",
                self.tokens.len()
            )));
        }
        self.inner.decode(ids, false).map_err(|e| TokenizerError::Decode(e.to_string()))
    }

    /// Number of tokens in the vocabulary (`tokenizer.ggml.tokens`).
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The BOS token id, if the file names one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// The EOS token id, if the file names one.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// The vocabulary entry of `id` as stored in the file: byte-level form, so `"Ġthe"` for
    /// `" the"`.
    pub fn token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// The id of the vocabulary entry `token` (byte-level form, or a special token's text).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}
