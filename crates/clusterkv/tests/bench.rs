//! `clusterkv bench` end to end at small sizes: every case and method has its record with
//! the fields of the JSON format, and bad settings are refused before any work. Timings
//! are only checked to be positive and finite: speed is shown by the bench, not by tests.

use std::process::Command;

mod common;

use common::assets;

#[test]
fn quick_bench_writes_every_case() {
    let json = std::env::temp_dir().join(format!("ckv-bench-{}.json", std::process::id()));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clusterkv"));
    cmd.args(["bench", "--quick", "--contexts", "600,1500", "--budgets", "512", "--reps", "2"])
        .args(["--prefill-context", "400", "--e2e-contexts", "99", "--e2e-tokens", "3"])
        .arg("--json")
        .arg(&json);
    let with_model = match assets() {
        Some((model, text)) => {
            cmd.arg("--model").arg(model).arg("--text").arg(text);
            true
        }
        None => {
            eprintln!(
                "no default model or text (run `cargo xtask fetch`): bench without the end-to-end case"
            );
            cmd.arg("--no-model");
            false
        }
    };
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let records: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    for r in &records {
        for field in ["case", "method", "context", "budget", "median_s", "ratio_to_dense", "bandwidth_share"]
        {
            assert!(r.get(field).is_some(), "{field} missing in {r}");
        }
        let median = r["median_s"].as_f64().unwrap();
        assert!(median.is_finite() && median > 0.0, "{r}");
    }
    let count = |case: &str| records.iter().filter(|r| r["case"] == case).count();
    assert_eq!(count("memory_copy"), 1);
    assert_eq!(count("memory_read"), 1);
    // Per context: dense, then ClusterKV and Quest under both GQA policies.
    assert_eq!(count("decode_step"), 2 * 5, "{records:#?}");
    assert_eq!(count("prefill"), 2);
    // Batches 1 and 2 (quick): dense, ClusterKV, ClusterKV per KV head.
    assert_eq!(count("e2e_decode"), if with_model { 6 } else { 0 });
    for r in records.iter().filter(|r| r["case"] == "e2e_decode") {
        assert!(matches!(r["batch"].as_u64(), Some(1 | 2)), "{r}");
    }
    for method in
        ["clusterkv/per-query-head", "clusterkv/per-kv-head", "quest/per-query-head", "quest/per-kv-head"]
    {
        let r = records.iter().find(|r| r["method"] == method && r["context"] == 1500).unwrap();
        assert_eq!(r["budget"], 512);
        assert!(r["ratio_to_dense"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["bandwidth_share"].as_f64().unwrap() > 0.0, "{r}");
    }
    for dense in records.iter().filter(|r| r["method"] == "dense") {
        assert_eq!(dense["ratio_to_dense"].as_f64(), Some(1.0), "{dense}");
    }
    let clustering =
        records.iter().find(|r| r["case"] == "prefill" && r["method"] != "dense_attention").unwrap();
    // (400 - 16) / 80 rounded up, for 8 KV heads.
    assert_eq!(clustering["method"], "clustering/5x8");
    let table = String::from_utf8(out.stdout).unwrap();
    for heading in ["memory copy:", "Decode step", "Prefill", "| clusterkv/per-kv-head | 1500 | 512 |"] {
        assert!(table.contains(heading), "{heading} missing in {table}");
    }
}

#[test]
fn bad_settings_are_refused_by_name() {
    for (args, named) in [
        (&["--contexts", "10"][..], "context"),
        (&["--budgets", "8"][..], "budget"),
        (&["--reps", "0"][..], "repetitions"),
        (&["--prefill-context", "50"][..], "prefill context"),
        (&["--e2e-batches", "1,0"][..], "e2e batch"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_clusterkv"))
            .args(["bench", "--quick", "--no-model"])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(named), "{args:?}: {err}");
    }
}

#[test]
fn an_end_to_end_context_beyond_the_model_is_refused_first() {
    let Some((model, text)) = assets() else {
        eprintln!("skipped: no default model or text (run `cargo xtask fetch`)");
        return;
    };
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_clusterkv"))
        .args(["bench", "--quick", "--e2e-contexts", "9000"])
        .arg("--model")
        .arg(model)
        .arg("--text")
        .arg(text)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid e2e context = 9000"), "{err}");
    // Refused before the sweep, not after minutes of work.
    assert!(!String::from_utf8_lossy(&out.stdout).contains("Decode step"), "{err}");
    eprintln!("refused after {:.1} s", started.elapsed().as_secs_f64());
}

/// llama.cpp's row comes from running `--llama-cpp PATH` on the bench's model: a stand-in
/// program that checks its arguments and prints llama-bench's JSON.
#[cfg(unix)]
#[test]
fn llama_cpp_rows_stand_beside_ours() {
    use std::os::unix::fs::PermissionsExt;
    let Some((model, text)) = assets() else {
        eprintln!("skipped: no default model or text (run `cargo xtask fetch`)");
        return;
    };
    let dir = std::env::temp_dir().join(format!("ckv-peer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let program = dir.join("llama-bench");
    // Depth 96 (context 99 minus 3 decoded tokens), both flash-attention settings.
    let script = r#"#!/bin/sh
case "$*" in *"-p 0 -n 3 -d 96"*"-o json"*) ;; *) echo "unexpected arguments: $*" >&2; exit 2;; esac
echo '[{"n_prompt": 0, "n_gen": 3, "n_depth": 96, "n_threads": 2, "flash_attn": false, "avg_ts": 40.0},
 {"n_prompt": 0, "n_gen": 3, "n_depth": 96, "n_threads": 2, "flash_attn": true, "avg_ts": 50.0}]'
"#;
    std::fs::write(&program, script).unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    let json = dir.join("bench.json");
    let out = Command::new(env!("CARGO_BIN_EXE_clusterkv"))
        .args(["bench", "--quick", "--contexts", "600", "--budgets", "512", "--reps", "1"])
        .args(["--prefill-context", "400", "--e2e-contexts", "99", "--e2e-tokens", "3", "--e2e-batches", "1"])
        .arg("--model")
        .arg(&model)
        .arg("--text")
        .arg(text)
        .arg("--llama-cpp")
        .arg(&program)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let records: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let peer = records.iter().find(|r| r["method"] == "llama.cpp").expect("a llama.cpp record");
    assert_eq!((peer["context"].as_u64(), peer["batch"].as_u64()), (Some(99), Some(1)));
    assert!((peer["median_s"].as_f64().unwrap() - 1.0 / 50.0).abs() < 1e-12, "the faster setting: {peer}");
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("| llama.cpp | 99 | 1 | - | 20.0 | 50.0 |"), "{table}");
}

#[test]
fn a_missing_llama_bench_is_refused_by_name() {
    let out = Command::new(env!("CARGO_BIN_EXE_clusterkv"))
        .args(["bench", "--quick", "--llama-cpp", "/nonexistent/llama-bench"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/llama-bench") && err.contains("cargo xtask peer"), "{err}");
}
