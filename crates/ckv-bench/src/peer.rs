//! llama.cpp as the bench's peer: runs its `llama-bench` (built by `cargo xtask peer` into
//! `target/peer/build/bin`) for dense decode at the bench's depths, so that the bench can
//! print llama.cpp's tokens/s beside ours (DESIGN section 9).
//!
//! `llama-bench` decodes one sequence only, so its rows stand beside the batch-1 figures.
//! Each depth is measured with flash attention off and on (`-fa 0,1`) and the faster is
//! kept: llama.cpp's best dense decode on this machine.

use std::path::Path;
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::BenchError;

/// One llama-bench measurement: decode tok/s at a depth, best of flash attention off and on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PeerRow {
    /// Tokens already in the context when decoding starts (`n_depth`).
    pub depth: usize,
    /// Decoded tokens per second (`avg_ts`, the mean over llama-bench's repetitions).
    pub tokens_per_s: f64,
    /// Whether the faster run, the one kept, had flash attention on.
    pub flash_attn: bool,
    /// Threads llama-bench ran with (`n_threads`).
    pub threads: usize,
}

/// Runs `llama_bench` on `model` for `tokens` decoded tokens at each depth in `depths` with
/// `threads` threads (`-p 0 -n tokens -d d1,d2 -fa 0,1 -t threads -o json`), returns one row
/// per depth (best of fa 0/1), in the order of `depths`.
///
/// Errors: [`BenchError::Param`] for no depth or zero tokens or threads,
/// [`BenchError::Io`] when the program cannot be started, [`BenchError::Peer`] when it fails,
/// its output is not understood, or a depth is missing from it.
pub fn llama_bench(
    llama_bench: &Path,
    model: &Path,
    depths: &[usize],
    tokens: usize,
    threads: usize,
) -> Result<Vec<PeerRow>, BenchError> {
    let invalid =
        |name, value: usize, expected| BenchError::from(ckv_core::ParamError::new(name, value, expected));
    if depths.is_empty() {
        return Err(invalid("llama-bench depths", 0, "at least one depth"));
    }
    if tokens == 0 {
        return Err(invalid("llama-bench tokens", tokens, "at least 1"));
    }
    if threads == 0 {
        return Err(invalid("llama-bench threads", threads, "at least 1"));
    }
    let depth_list = depths.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
    let mut cmd = Command::new(llama_bench);
    cmd.arg("-m").arg(model).args(["-p", "0", "-n", &tokens.to_string(), "-d", &depth_list]);
    cmd.args(["-fa", "0,1", "-t", &threads.to_string(), "-o", "json"]);
    let command = render(&cmd);
    tracing::info!("running {command}");
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| BenchError::Io { path: llama_bench.to_path_buf(), source })?;
    let peer_err = |message: String| BenchError::Peer { command: command.clone(), message };
    if !output.status.success() {
        return Err(peer_err(format!("{}; end of its stderr:\n{}", output.status, tail(&output.stderr))));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let rows = parse_llama_bench(&stdout).map_err(|err| match err {
        BenchError::Peer { message, .. } => peer_err(message),
        other => other,
    })?;
    depths
        .iter()
        .map(|&depth| {
            rows.iter()
                .find(|row| row.depth == depth)
                .copied()
                .ok_or_else(|| peer_err(format!("its output has no decode result at depth {depth}")))
        })
        .collect()
}

/// Parses the JSON that `llama-bench -o json` prints (an array of test results) into one
/// row per depth, sorted by depth: of the decode tests (`n_prompt` 0, `n_gen` > 0) at that
/// depth, the one with the highest `avg_ts`. Prompt-processing tests are left out.
///
/// Errors: [`BenchError::Peer`] (its `command` reads `llama-bench -o json`) when the text is
/// not such an array or a decode test lacks a field.
pub fn parse_llama_bench(json: &str) -> Result<Vec<PeerRow>, BenchError> {
    let err = |message: String| BenchError::Peer { command: "llama-bench -o json".to_owned(), message };
    let tests: Vec<Value> =
        serde_json::from_str(json).map_err(|e| err(format!("its output is not a JSON array: {e}")))?;
    let mut rows: Vec<PeerRow> = Vec::new();
    for (i, test) in tests.iter().enumerate() {
        let uint = |name: &str| {
            test.get(name)
                .and_then(Value::as_u64)
                .and_then(|v| usize::try_from(v).ok())
                .ok_or_else(|| err(format!("test {i} has no unsigned integer field `{name}`")))
        };
        if uint("n_prompt")? != 0 || uint("n_gen")? == 0 {
            continue;
        }
        let tokens_per_s = test
            .get("avg_ts")
            .and_then(Value::as_f64)
            .filter(|ts| ts.is_finite())
            .ok_or_else(|| err(format!("test {i} has no finite number field `avg_ts`")))?;
        let flash_attn = test
            .get("flash_attn")
            .and_then(flash_attn_on)
            .ok_or_else(|| err(format!("test {i} has no understood field `flash_attn`")))?;
        let row = PeerRow { depth: uint("n_depth")?, tokens_per_s, flash_attn, threads: uint("n_threads")? };
        match rows.iter_mut().find(|r| r.depth == row.depth) {
            Some(best) if best.tokens_per_s >= row.tokens_per_s => {}
            Some(best) => *best = row,
            None => rows.push(row),
        }
    }
    rows.sort_by_key(|r| r.depth);
    Ok(rows)
}

/// Whether a `flash_attn` value means on: llama-bench writes a boolean, older or newer
/// builds a number (1 on, 0 off, -1 auto) or a string (`"on"`, `"off"`, `"auto"`); auto
/// counts as off, as llama-bench's `-fa 0,1` never asks for it.
fn flash_attn_on(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(on) => Some(*on),
        Value::Number(n) => n.as_i64().map(|n| n > 0),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "1" | "on" | "true" | "enabled" => Some(true),
            "0" | "-1" | "off" | "false" | "disabled" | "auto" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// A command line for messages.
fn render(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// The last 20 lines of a program's stderr, trimmed.
fn tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.trim_end().lines().collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
    if tail.trim().is_empty() { "(empty)".to_owned() } else { tail }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real `llama-bench -o json` output on the default model (2 threads, build 0c1e570):
    /// the first record whole, from `-p 0 -n 32 -d 4064,8160 -fa 0,1`; the others cut to
    /// a few fields: the rest of that run, then `-p 0 -n 4 -d 16 -fa 0,1 -r 2` (where flash
    /// attention won), then a prompt-processing test (`-p 8 -n 0 -r 1`).
    const SAMPLE: &str = r#"[
  {
    "build_commit": "0c1e570",
    "build_number": 1,
    "cpu_info": "AMD EPYC",
    "gpu_info": "",
    "backends": "CPU",
    "model_filename": "assets/SmolLM2-135M-Instruct.Q4_1.gguf",
    "model_type": "llama 256M Q4_1",
    "model_size": 96576768,
    "model_n_params": 134515008,
    "n_batch": 2048,
    "n_ubatch": 512,
    "n_threads": 2,
    "cpu_mask": "0x0",
    "cpu_strict": false,
    "poll": 50,
    "type_k": "f16",
    "type_v": "f16",
    "n_gpu_layers": -1,
    "n_cpu_moe": 0,
    "split_mode": "layer",
    "main_gpu": 0,
    "no_kv_offload": false,
    "flash_attn": 0,
    "devices": "auto",
    "tensor_split": "0.00",
    "tensor_buft_overrides": "none",
    "load_mode": "auto",
    "lazy_mode": "auto",
    "embeddings": false,
    "no_op_offload": 0,
    "no_host": false,
    "repack": true,
    "fit_target": 0,
    "fit_min_ctx": 0,
    "n_prompt": 0,
    "n_gen": 32,
    "n_depth": 4064,
    "test_time": "2026-12-02T00:09:28Z",
    "avg_ns": 2783357821,
    "stddev_ns": 1331281093,
    "avg_ts": 17.135408,
    "stddev_ts": 8.427951,
    "samples_ns": [ 2370164972, 7237032072, 1666242054, 1388972287, 1254377724 ],
    "samples_ts": [ 13.5012, 4.4217, 19.2049, 23.0386, 25.5107 ]
  },
  {"n_threads": 2, "flash_attn": 0, "n_prompt": 0, "n_gen": 32, "n_depth": 8160, "avg_ts": 10.429073, "stddev_ts": 0.661594},
  {"n_threads": 2, "flash_attn": 1, "n_prompt": 0, "n_gen": 32, "n_depth": 4064, "avg_ts": 4.353972, "stddev_ts": 2.694215},
  {"n_threads": 2, "flash_attn": 1, "n_prompt": 0, "n_gen": 32, "n_depth": 8160, "avg_ts": 5.786194, "stddev_ts": 0.449282},
  {"n_threads": 2, "flash_attn": 0, "n_prompt": 0, "n_gen": 4, "n_depth": 16, "avg_ts": 18.207933, "stddev_ts": 2.487703},
  {"n_threads": 2, "flash_attn": 1, "n_prompt": 0, "n_gen": 4, "n_depth": 16, "avg_ts": 18.721084, "stddev_ts": 0.244309},
  {"n_threads": 2, "flash_attn": 0, "n_prompt": 8, "n_gen": 0, "n_depth": 0, "avg_ts": 104.568265}
]"#;

    #[test]
    fn parses_real_llama_bench_output() {
        let rows = parse_llama_bench(SAMPLE).unwrap();
        let row = |depth, tokens_per_s, flash_attn| PeerRow { depth, tokens_per_s, flash_attn, threads: 2 };
        assert_eq!(
            rows,
            vec![row(16, 18.721084, true), row(4064, 17.135408, false), row(8160, 10.429073, false)]
        );
        assert_eq!(parse_llama_bench("[]").unwrap(), vec![]);
    }

    #[test]
    fn flash_attn_values() {
        for (value, on) in [
            (Value::Bool(true), Some(true)),
            (Value::from(0), Some(false)),
            (Value::from(1), Some(true)),
            (Value::from(-1), Some(false)),
            (Value::from("on"), Some(true)),
            (Value::from("auto"), Some(false)),
            (Value::from("maybe"), None),
            (Value::Null, None),
        ] {
            assert_eq!(flash_attn_on(&value), on, "{value}");
        }
    }

    #[test]
    fn not_json_is_a_clear_error() {
        let err = parse_llama_bench("main: error: failed to load model").unwrap_err();
        assert!(matches!(err, BenchError::Peer { .. }), "{err:?}");
        assert!(err.to_string().contains("not a JSON array"), "{err}");
        let err = parse_llama_bench(r#"[{"n_prompt": 0, "n_gen": 32, "n_depth": 8}]"#).unwrap_err();
        assert!(err.to_string().contains("avg_ts"), "{err}");
    }

    #[test]
    fn missing_program_is_an_io_error() {
        let err =
            llama_bench(Path::new("/nonexistent/llama-bench"), Path::new("m.gguf"), &[8], 4, 1).unwrap_err();
        assert!(matches!(err, BenchError::Io { .. }), "{err:?}");
        let err = llama_bench(Path::new("llama-bench"), Path::new("m.gguf"), &[], 4, 1).unwrap_err();
        assert!(matches!(err, BenchError::Param(ckv_core::ParamError { .. })), "{err:?}");
    }

    #[test]
    fn runs_the_built_llama_bench() {
        // Where `cargo xtask peer` and `cargo xtask fetch` put them; skipped without them.
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let program = root.join("target/peer/build/bin/llama-bench");
        let model = root.join("assets/SmolLM2-135M-Instruct.Q4_1.gguf");
        if !program.is_file() || !model.is_file() {
            eprintln!("llama-bench or the model absent (`cargo xtask peer`): not run");
            return;
        }
        let rows = llama_bench(&program, &model, &[32, 16], 2, 1).unwrap();
        assert_eq!(rows.iter().map(|r| (r.depth, r.threads)).collect::<Vec<_>>(), [(32, 1), (16, 1)]);
        assert!(rows.iter().all(|r| r.tokens_per_s > 0.0), "{rows:?}");
    }
}
