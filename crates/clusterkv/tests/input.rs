//! Bad input to the `clusterkv` command line is refused by name, before any work; the
//! simulator's table names every method. Cases that need a model load a tiny random Llama
//! GGUF (`ckv_model::testing`) with a byte-level vocabulary of one token per character.

use std::path::PathBuf;
use std::process::Command;

use ckv_model::testing::{Tensor, Val, gguf_bytes, tiny_model};
use ckv_model::{GgufFile, GgufValue};
use ckv_sim::Variant;

/// A model path that does not exist: a refusal that does not name it came before the load.
const NO_MODEL: &str = "/nonexistent/model.gguf";

/// Runs `clusterkv` with `args`; asserts that it failed without a panic, and returns its
/// exit code and standard error.
fn refused<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_clusterkv")).args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let shown: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
    assert!(!out.status.success(), "{shown:?} succeeded: {err}");
    assert!(!err.contains("panicked"), "{shown:?} panicked: {err}");
    (out.status.code().unwrap_or(-1), err)
}

/// Asserts that `args` are refused (exit 1) with a message holding every one of `want`, and,
/// unless `loads` (the model must be read to see the problem), before the model is loaded.
fn refused_with(args: &[&str], want: &[&str], loads: bool) {
    let (code, err) = refused(args);
    assert_eq!(code, 1, "{args:?}: {err}");
    for w in want {
        assert!(err.contains(w), "{args:?}: {w:?} missing in {err}");
    }
    assert!(loads || !err.contains(NO_MODEL), "{args:?} loaded the model first: {err}");
}

/// `args`, then `--model model` where the command takes one (all but `simulate`).
fn with_model<'a>(args: &[&'a str], model: &'a str) -> Vec<&'a str> {
    let model: &[&str] = if args[0] == "simulate" { &[] } else { &["--model", model] };
    [args, model].concat()
}

/// A folder of its own for one test, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("ckv-input-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// A file `name` in the folder holding `bytes`, as a string for the command line.
    fn file(&self, name: &str, bytes: &[u8]) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, bytes).unwrap();
        self.path(name)
    }

    /// The path `name` in the folder, as a string for the command line.
    fn path(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The tiny random Llama model (context 512) under `architecture`, its matrices of the
/// types `code_of` gives (F32 where `None`), with a byte-level vocabulary: the end of text,
/// every printable ASCII character, space and newline.
fn tiny_gguf(architecture: &str, code_of: impl Fn(&str) -> Option<u32>) -> Vec<u8> {
    let gguf = GgufFile::from_bytes(tiny_model(code_of, 7)).unwrap();
    let mut metadata: Vec<(&str, Val<'_>)> = gguf
        .metadata()
        .iter()
        .map(|(key, value)| {
            let value = match value {
                _ if key == "general.architecture" => Val::Str(architecture),
                GgufValue::U32(x) => Val::U32(*x),
                GgufValue::F32(x) => Val::F32(*x),
                other => panic!("tiny_model wrote {key} = {other:?}, which this copy does not know"),
            };
            (key.as_str(), value)
        })
        .collect();
    let chars: Vec<String> = ('!'..='~').map(String::from).collect();
    let mut tokens = vec!["<|endoftext|>", "\u{120}", "\u{10A}"];
    tokens.extend(chars.iter().map(String::as_str));
    let mut types = vec![1; tokens.len()];
    types[0] = 3;
    metadata.extend([
        ("tokenizer.ggml.model", Val::Str("gpt2")),
        ("tokenizer.ggml.pre", Val::Str("gpt2")),
        ("tokenizer.ggml.tokens", Val::Strs(tokens)),
        ("tokenizer.ggml.merges", Val::Strs(Vec::new())),
        ("tokenizer.ggml.token_type", Val::I32s(types)),
        ("tokenizer.ggml.eos_token_id", Val::U32(0)),
    ]);
    let tensors: Vec<Tensor<'_>> = gguf
        .tensors()
        .iter()
        .map(|t| {
            (t.name.as_str(), t.dims.clone(), t.dtype.code(), gguf.tensor_bytes(&t.name).unwrap().to_vec())
        })
        .collect();
    gguf_bytes(&metadata, &tensors, 32)
}

/// Text of about `len` characters (one token each for the tiny vocabulary).
fn book(len: usize) -> Vec<u8> {
    "Call me Ishmael. Some years ago, never mind how long precisely. ".bytes().cycle().take(len).collect()
}

#[test]
fn cli_prints_a_table_for_every_method() {
    let out = Command::new(env!("CARGO_BIN_EXE_clusterkv"))
        .args(["simulate", "--context", "700", "--budget", "128", "--steps", "2", "--head-dim", "16"])
        .args(["--q-heads", "4", "--kv-heads", "2", "--topics", "8", "--kv", "f32"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8(out.stdout).unwrap();
    for variant in Variant::all() {
        assert!(table.contains(&format!("| {} |", variant.label())), "{} missing:\n{table}", variant.label());
    }
}

#[test]
fn cli_rejects_bad_parameters_with_a_clear_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_clusterkv"))
        .args(["simulate", "--context", "5000", "--budget", "10"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("budget = 10"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_clusterkv"))
        .args(["simulate", "--methods", "bogus"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown method"));
}

/// Bad input is refused by name before the model is loaded.
#[test]
fn bad_sweep_input_is_refused_by_name() {
    for (args, want) in [
        (&["--budget-fractions", "0"][..], "budget_fraction"),
        (&["--masses", "1.5"][..], "mass"),
        (&["--inits", "kmeans--"][..], "kmeans--"),
        (&["--gqa", "per-token"][..], "per-token"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_clusterkv"))
            .arg("sweep")
            .args(args)
            .args(["--model", "/nonexistent/model.gguf"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want) && !err.contains("/nonexistent"), "{args:?}: {err}");
    }
}

/// The tiny model and a text long enough for it are good input: the checks refuse only bad
/// input (the control of the cases below).
#[test]
fn the_tiny_model_is_good_input() {
    let dir = Scratch::new("control");
    let (model, text) =
        (dir.file("tiny.gguf", &tiny_gguf("llama", |_| None)), dir.file("text.txt", &book(400)));
    let out = Command::new(env!("CARGO_BIN_EXE_clusterkv"))
        .args(["ppl", "--model", &model, "--text", &text, "--context", "64", "--decode", "3"])
        .args(["--positions", "1", "--budgets", "40", "--methods", "dense,clusterkv"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("| clusterkv |"));
}

/// Case 1: a model file that is not GGUF, for every command that loads one.
#[test]
fn a_model_file_that_is_not_gguf_is_refused_by_name() {
    let dir = Scratch::new("not-gguf");
    let (model, text, out) =
        (dir.file("model.gguf", b"not a model\n"), dir.file("text.txt", &book(400)), dir.path("out"));
    let want = ["invalid --model", &model, "not a GGUF file"];
    for args in [
        &["eval", "--out", &out][..],
        &["ppl"],
        &["generate", "--prompt", "Call me Ishmael."],
        &["sweep", "--out", &out],
        &["bench"],
        &["cache-sim"],
    ] {
        let text_flag: &[&str] = if args[0] == "generate" { &[] } else { &["--text", &text] };
        refused_with(&[args, &["--model", &model], text_flag].concat(), &want, true);
    }
}

/// Case 2: a GGUF of another architecture, and one holding a tensor type the runtime does
/// not decode (ggml type 16, IQ2_XXS).
#[test]
fn an_unsupported_architecture_or_tensor_type_is_refused_by_name() {
    let dir = Scratch::new("unsupported");
    let gpt2 = dir.file("gpt2.gguf", &tiny_gguf("gpt2", |_| None));
    let iq2 = dir.file("iq2.gguf", &tiny_gguf("llama", |name| (name == "blk.0.attn_q.weight").then_some(16)));
    let text = dir.file("text.txt", &book(400));
    for command in [&["ppl", "--text", &text][..], &["generate", "--prompt", "Call me Ishmael."]] {
        let args = [command, &["--model", &gpt2]].concat();
        refused_with(&args, &["invalid --model", &gpt2, "general.architecture \"gpt2\""], true);
        let args = [command, &["--model", &iq2]].concat();
        refused_with(
            &args,
            &["invalid --model", &iq2, "\"blk.0.attn_q.weight\" has type ggml type 16"],
            true,
        );
    }
}

/// Case 3: a text of fewer tokens than the context, for every command that reads one.
#[test]
fn a_text_shorter_than_the_context_is_refused_by_name() {
    let dir = Scratch::new("short-text");
    let (model, text, out) = (
        dir.file("tiny.gguf", &tiny_gguf("llama", |_| None)),
        dir.file("short.txt", &book(40)),
        dir.path("out"),
    );
    for (args, context) in [
        (&["ppl", "--context", "64", "--budgets", "40"][..], "--context 64"),
        (&["eval", "--contexts", "64", "--budgets", "40", "--tasks", "ppl", "--out", &out], "--contexts 64"),
        (&["cache-sim", "--context", "64", "--budget", "40", "--steps", "4"], "--context 64"),
        (&["bench", "--e2e-contexts", "64", "--e2e-tokens", "4"], "--e2e-contexts 64"),
    ] {
        let want =
            ["invalid --text", &text, &format!("at least 64 tokens of text for {context} (it holds 40)")];
        refused_with(&[args, &["--model", &model, "--text", &text]].concat(), &want, true);
    }
    // The copy and passkey prompts take fillers half a context on: a context and a half.
    let longer = dir.file("longer.txt", &book(80));
    for args in [
        &["eval", "--contexts", "64", "--budgets", "40", "--out", &out][..],
        &["sweep", "--contexts", "64", "--out", &out],
    ] {
        let want =
            ["invalid --text", &longer, "at least 96 tokens of text for --contexts 64 (a context and a half"];
        refused_with(&[args, &["--model", &model, "--text", &longer]].concat(), &want, true);
    }
}

/// Case 4: an empty text and one that is not UTF-8, refused before the model is loaded.
#[test]
fn an_empty_or_non_utf8_text_is_refused_by_name() {
    let dir = Scratch::new("bad-text");
    let (empty, latin1, out) =
        (dir.file("empty.txt", b""), dir.file("latin1.txt", b"Ahab\xe9s leg"), dir.path("out"));
    for command in
        [&["eval", "--out", &out][..], &["ppl"], &["sweep", "--out", &out], &["bench"], &["cache-sim"]]
    {
        let args = [command, &["--model", NO_MODEL, "--text", &empty]].concat();
        refused_with(&args, &["invalid --text", &empty, "the file is empty"], false);
        let args = [command, &["--model", NO_MODEL, "--text", &latin1]].concat();
        refused_with(&args, &["invalid --text", &latin1, "UTF-8 text (byte 4 is not)"], false);
    }
}

/// Case 5: a prompt and its generated tokens, or a probe's context, beyond the model's
/// context (512 tokens for the tiny model).
#[test]
fn a_prompt_longer_than_the_model_context_is_refused_by_name() {
    let dir = Scratch::new("long-prompt");
    let (model, text, out) = (
        dir.file("tiny.gguf", &tiny_gguf("llama", |_| None)),
        dir.file("text.txt", &book(2000)),
        dir.path("out"),
    );
    let prompt = String::from_utf8(book(505)).unwrap();
    refused_with(
        &["generate", "--model", &model, "--prompt", &prompt, "--max-tokens", "8", "--budget", "256"],
        &[
            "invalid --prompt + --max-tokens = 505 tokens + 8: expected at most the model's context length (512 tokens)",
        ],
        true,
    );
    let context_length = "expected at most the model's context length (512 tokens)";
    for (args, given) in [
        (&["ppl", "--context", "1024", "--decode", "64"][..], "invalid --context = 1024"),
        (
            &["eval", "--contexts", "256,1024", "--budgets", "128", "--out", &out],
            "invalid --contexts = 256,1024",
        ),
        (&["sweep", "--contexts", "1024", "--out", &out], "invalid --contexts = 1024"),
        (&["cache-sim", "--context", "1024"], "invalid --context = 1024"),
    ] {
        refused_with(&[args, &["--model", &model, "--text", &text]].concat(), &[given, context_length], true);
    }
}

/// Case 6: a budget of 0, before the model is loaded.
#[test]
fn a_budget_of_zero_is_refused_by_name() {
    let dir = Scratch::new("budget-zero");
    let out = dir.path("out");
    for args in [
        &["eval", "--budgets", "128,0", "--out", &out][..],
        &["ppl", "--budgets", "0"],
        &["generate", "--prompt", "Call me Ishmael.", "--budget", "0"],
        &["cache-sim", "--budget", "0"],
        &["bench", "--budgets", "0"],
        &["simulate", "--budget", "0"],
    ] {
        refused_with(&with_model(args, NO_MODEL), &["invalid budget = 0"], false);
    }
}

/// Case 7: a budget above the context it runs in (the model's context for `generate`).
#[test]
fn a_budget_above_the_context_is_refused_by_name() {
    let dir = Scratch::new("budget-above");
    let out = dir.path("out");
    for (args, want) in [
        (
            &["ppl", "--context", "1024", "--budgets", "256,2048"][..],
            "invalid --budgets = 2048: expected at most the context, --context 1024",
        ),
        (
            &["eval", "--contexts", "2048,512", "--budgets", "1024", "--out", &out],
            "invalid --budgets = 1024: expected at most the context, 512 of --contexts 2048,512",
        ),
        (
            &["cache-sim", "--context", "512", "--budget", "1024"],
            "invalid --budget = 1024: expected at most the context, --context 512",
        ),
        (
            &["bench", "--contexts", "1024", "--budgets", "2048", "--no-model"],
            "invalid --budgets = 2048: expected at most the context, 1024 of --contexts 1024",
        ),
        (
            &["simulate", "--context", "700", "--budget", "1024"],
            "invalid --budget = 1024: expected at most the context, --context 700",
        ),
    ] {
        refused_with(&with_model(args, NO_MODEL), &[want], false);
    }
    let model = dir.file("tiny.gguf", &tiny_gguf("llama", |_| None));
    refused_with(
        &["generate", "--model", &model, "--prompt", "Call me Ishmael.", "--budget", "1024"],
        &["invalid --budget = 1024: expected at most the model's context length (512 tokens)"],
        true,
    );
}

/// Case 8: unknown methods, tasks, GQA policies and k-means starts (clap's usage error,
/// exit 2).
#[test]
fn unknown_methods_tasks_and_gqa_policies_are_refused_by_name() {
    for (args, want) in [
        (&["eval", "--methods", "dense,snapkv"][..], "unknown method \"snapkv\""),
        (&["ppl", "--methods", "snapkv"], "unknown method \"snapkv\""),
        (&["generate", "--prompt", "Call me Ishmael.", "--method", "snapkv"], "unknown method \"snapkv\""),
        (&["simulate", "--methods", "snapkv"], "unknown method \"snapkv\""),
        (&["eval", "--tasks", "ppl,needle"], "unknown task \"needle\""),
        (&["sweep", "--gqa", "per-token"], "unknown GQA policy \"per-token\""),
        (&["sweep", "--inits", "kmeans--"], "kmeans--"),
    ] {
        let (code, err) = refused(&with_model(args, NO_MODEL));
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(want) && !err.contains(NO_MODEL), "{args:?}: {want:?} missing in {err}");
    }
}

/// Case 9: a value listed twice, before the model is loaded.
#[test]
fn duplicate_values_in_a_list_are_refused_by_name() {
    let dir = Scratch::new("duplicates");
    let out = dir.path("out");
    for (args, want) in [
        (
            &["eval", "--budgets", "128,256,128", "--out", &out][..],
            "invalid --budgets = 128,256,128: expected distinct values (128 is given twice)",
        ),
        (&["eval", "--methods", "dense,dense", "--out", &out], "invalid --methods = dense,dense"),
        (&["eval", "--contexts", "1024,1024", "--out", &out], "invalid --contexts = 1024,1024"),
        (&["eval", "--tasks", "ppl,copy,ppl", "--out", &out], "invalid --tasks = ppl,copy,ppl"),
        (&["eval", "--masses", "0.9,0.9", "--out", &out], "invalid --masses = 0.9,0.9"),
        (&["ppl", "--budgets", "256,256"], "invalid --budgets = 256,256"),
        (&["ppl", "--methods", "quest,h2o,quest"], "invalid --methods = quest,h2o,quest"),
        (&["sweep", "--contexts", "2048,2048", "--out", &out], "invalid --contexts = 2048,2048"),
        (&["sweep", "--sinks", "4,4", "--out", &out], "invalid --sinks = 4,4"),
        (
            &["sweep", "--gqa", "per-kv-head,per-kv-head", "--out", &out],
            "invalid --gqa = per-kv-head,per-kv-head",
        ),
        (&["simulate", "--methods", "dense,dense"], "invalid --methods = dense,dense"),
        (&["bench", "--budgets", "512,512"], "invalid --budgets = 512,512"),
        (&["bench", "--e2e-batches", "1,1"], "invalid --e2e-batches = 1,1"),
        (&["cache-sim", "--reuse", "1,1"], "invalid --reuse = 1,1"),
    ] {
        refused_with(&with_model(args, NO_MODEL), &[want], false);
    }
}

/// Case 10: an `--out` folder or `--json` file that cannot be written, before the model is
/// loaded; a folder that does not exist yet (of `--out`, or `--json`'s) is not created by the
/// check.
#[test]
fn an_unwritable_out_is_refused_before_the_work() {
    let dir = Scratch::new("unwritable");
    let file = dir.file("file.txt", b"a regular file\n");
    let (under_file, in_proc) = (format!("{file}/reports"), "/proc/clusterkv-reports".to_owned());
    let json = format!("{file}/records.json");
    for (args, flag, path) in [
        (&["eval", "--out", &under_file][..], "--out", &under_file),
        (&["eval", "--out", &in_proc], "--out", &in_proc),
        (&["sweep", "--out", &under_file], "--out", &under_file),
        (&["eval", "--out", &dir.path("out"), "--json", &json], "--json", &json),
        (&["ppl", "--json", &json], "--json", &json),
        (&["bench", "--json", &json], "--json", &json),
        (&["cache-sim", "--json", &in_proc], "--json", &in_proc),
    ] {
        let want = format!("invalid {flag} = {path}: expected a f");
        refused_with(&with_model(args, NO_MODEL), &[&want], false);
    }
    // Writable: the run gets as far as the model, and leaves no folder behind.
    let (new, text) = (dir.path("new/reports"), dir.file("text.txt", &book(400)));
    let json = dir.path("new/records.json");
    let args = ["eval", "--out", &new, "--json", &json, "--text", &text, "--model", NO_MODEL];
    refused_with(&args, &["invalid --model", NO_MODEL], true);
    assert!(!PathBuf::from(dir.path("new")).exists());
}
