//! What the commands share: loading the model and text, refused by name (with hints when
//! they are missing), the progress bar, run metadata and the JSON writer.

use std::error::Error;
use std::path::Path;
use std::time::Instant;

use ckv_core::ParamError;
use ckv_eval::{EvalConfig, Progress, RunMeta};
use ckv_model::{GgufFile, Model, Tokenizer};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tracing::info;

/// Loads the model and its tokenizer from the file of `--model`, refused by name when it is
/// missing (with a hint) or not a model this runtime loads.
pub(crate) fn load(path: &Path) -> Result<(Model, Tokenizer), ParamError> {
    let refuse =
        |why: String| ParamError::new("--model", path.display(), format!("a Llama GGUF file ({why})"));
    if !path.exists() {
        return Err(refuse("not found: run `cargo xtask fetch` or pass --model".into()));
    }
    let started = Instant::now();
    let gguf = GgufFile::open(path).map_err(|e| refuse(e.to_string()))?;
    let model = Model::from_gguf(&gguf).map_err(|e| refuse(e.to_string()))?;
    let tokenizer = Tokenizer::from_gguf(&gguf).map_err(|e| refuse(e.to_string()))?;
    info!(path = %path.display(), seconds = started.elapsed().as_secs_f64(), "model loaded");
    Ok((model, tokenizer))
}

/// Reads the text file of `--text`, refused by name when it cannot be read (with a hint),
/// is not UTF-8 or is empty.
pub(crate) fn read_text(path: &Path) -> Result<String, ParamError> {
    let refuse = |expected: String| ParamError::new("--text", path.display(), expected);
    let bytes = std::fs::read(path)
        .map_err(|e| refuse(format!("a readable text file ({e}; run `cargo xtask fetch` or pass --text)")))?;
    let text = String::from_utf8(bytes)
        .map_err(|e| refuse(format!("UTF-8 text (byte {} is not)", e.utf8_error().valid_up_to())))?;
    if text.is_empty() {
        return Err(refuse("some text (the file is empty)".into()));
    }
    Ok(text)
}

/// What the text of an evaluation is for (`tokenize`'s `within`): the contexts as the user
/// gave them (`contexts`), and the fillers of the retrieval prompts where they need more.
pub(crate) fn text_for(config: &EvalConfig, contexts: &str) -> String {
    let largest = config.contexts.iter().copied().max().unwrap_or(0);
    if config.text_tokens() > largest {
        format!("--contexts {contexts} (a context and a half: the copy and passkey prompts' fillers)")
    } else {
        format!("--contexts {contexts}")
    }
}

/// Tokenizes the text of `--text` (`path`), refused by name when it holds fewer than
/// `needed` tokens (the context `within` names, as the user gave it).
pub(crate) fn tokenize(
    tokenizer: &Tokenizer,
    text: &str,
    path: &Path,
    needed: usize,
    within: &str,
) -> Result<Vec<u32>, Box<dyn Error>> {
    let tokens = tokenizer.encode(text)?;
    info!(tokens = tokens.len(), "text tokenized");
    if tokens.len() < needed {
        return Err(ParamError::new(
            "--text",
            path.display(),
            format!("at least {needed} tokens of text for {within} (it holds {})", tokens.len()),
        )
        .into());
    }
    Ok(tokens)
}

/// The metadata of an evaluation or sweep run of `config` on `model` and `text` (`tokens`
/// tokens); its `seconds` are set when the run ends.
pub(crate) fn run_meta(
    model: &Path,
    text: &Path,
    tokens: usize,
    config: &EvalConfig,
    quick: bool,
) -> Result<RunMeta, Box<dyn Error>> {
    Ok(RunMeta {
        model: model.display().to_string(),
        model_sha256: sha256(model)?,
        text: text.display().to_string(),
        text_sha256: sha256(text)?,
        text_tokens: tokens,
        commit: commit(),
        seed: config.seed,
        mode: if quick { "quick" } else { "full" }.to_owned(),
        dense_layers: config.dense_layers,
        positions: config.positions,
        decode: config.decode,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        seconds: 0.0,
    })
}

/// The sha256 of a file, in hex.
fn sha256(path: &Path) -> Result<String, Box<dyn Error>> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect())
}

/// The git commit of the working directory (`-dirty` when it has changes), or `unknown`.
fn commit() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match (git(&["rev-parse", "--short=12", "HEAD"]), git(&["status", "--porcelain", "--untracked-files=no"]))
    {
        (Some(head), Some(status)) if !status.is_empty() => format!("{head}-dirty"),
        (Some(head), _) => head,
        _ => "unknown".to_owned(),
    }
}

/// Writes `value` as pretty JSON to `path`, creating its folder.
pub(crate) fn write_json(path: &Path, value: &impl Serialize) -> Result<(), Box<dyn Error>> {
    let json = serde_json::to_string_pretty(value)?;
    path.parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(path, json))
        .map_err(|e| format!("cannot write {}: {e}", path.display()).into())
}

/// A terminal bar counting dense prefills and decode steps, with the current setting.
pub(crate) struct Bar(ProgressBar);

impl Bar {
    /// A bar with no units yet.
    pub(crate) fn new() -> Result<Self, Box<dyn Error>> {
        Ok(Self(
            ProgressBar::new(0).with_style(
                ProgressStyle::with_template(
                    "{prefix} {elapsed_precise} [{bar:30}] {pos}/{len} prefills + steps, eta {eta} {msg}",
                )?
                .progress_chars("=> "),
            ),
        ))
    }

    /// Clears the bar from the terminal.
    pub(crate) fn finish(&self) {
        self.0.finish_and_clear();
    }
}

impl Progress for Bar {
    fn start(&self, prefix: &str, units: u64) {
        self.0.reset();
        self.0.set_prefix(prefix.to_owned());
        self.0.set_length(units);
    }

    fn set_units(&self, units: u64) {
        self.0.set_length(units);
    }

    fn message(&self, message: &str) {
        self.0.set_message(message.to_owned());
    }

    fn advance(&self, units: u64) {
        self.0.inc(units);
    }
}
