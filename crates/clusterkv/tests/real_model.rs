//! The `clusterkv ppl` and `generate` commands on the default model and text (skipped,
//! saying so, when `cargo xtask fetch` has not been run).

use std::process::Command;

mod common;

use common::assets;

#[test]
fn ppl_writes_one_record_per_method_and_budget() {
    let Some((model, text)) = assets() else {
        eprintln!("skipped: no default model or text (run `cargo xtask fetch`)");
        return;
    };
    let json = std::env::temp_dir().join(format!("ckv-ppl-{}.json", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_clusterkv"))
        .args(["ppl", "--context", "64", "--decode", "3", "--positions", "2", "--budgets", "40,48"])
        .args(["--methods", "dense,clusterkv,quest,streamingllm,h2o,oracle"])
        .arg("--model")
        .arg(&model)
        .arg("--text")
        .arg(&text)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let records: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    // The eval's ppl task: dense, the oracle, ClusterKV under both GQA policies, Quest,
    // StreamingLLM and H2O, at each budget.
    assert_eq!(records.len(), 7 * 2, "{records:?}");
    let dense_ppl = records[0]["dense_score"].as_f64().unwrap();
    for r in &records {
        for field in ["task", "method", "budget", "context", "score", "dense_score", "n", "nll", "dense_nll"]
        {
            assert!(r.get(field).is_some(), "{field} missing in {r}");
        }
        assert_eq!((&r["task"], &r["context"]), (&serde_json::json!("ppl"), &serde_json::json!(64)));
        assert_eq!(r["dense_score"].as_f64().unwrap(), dense_ppl);
        let ppl = r["score"].as_f64().unwrap();
        assert!(ppl.is_finite() && ppl > 1.0, "{r}");
        if r["method"] == "dense" {
            assert_eq!(ppl, dense_ppl);
        }
    }
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("ppl at context 64") && table.contains("| clusterkv |"), "{table}");
}

/// A tiny evaluation end to end: every report file exists and holds every method.
#[test]
fn eval_writes_reports_with_every_method() {
    let Some((model, text)) = assets() else {
        eprintln!("skipped: no default model or text (run `cargo xtask fetch`)");
        return;
    };
    let dir = std::env::temp_dir().join(format!("ckv-eval-{}", std::process::id()));
    let json = dir.join("records.json");
    let out = Command::new(env!("CARGO_BIN_EXE_clusterkv"))
        .args([
            "eval",
            "--quick",
            "--contexts",
            "160",
            "--budgets",
            "48",
            "--positions",
            "1",
            "--decode",
            "6",
        ])
        .args(["--passage-len", "16", "--passkey-seeds", "1"])
        .arg("--model")
        .arg(&model)
        .arg("--text")
        .arg(&text)
        .arg("--out")
        .arg(&dir)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let methods = ["dense", "oracle", "clusterkv", "clusterkv/per-kv-head", "quest", "streamingllm", "h2o"];
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let records: Vec<serde_json::Value> = serde_json::from_str(&read("records.json")).unwrap();
    for task in ["ppl", "copy", "passkey"] {
        for method in methods {
            let found: Vec<_> =
                records.iter().filter(|r| r["task"] == task && r["method"] == method).collect();
            assert_eq!(found.len(), 1, "{task} {method}: {found:?}");
            let r = found[0];
            for field in ["budget", "context", "score", "dense_score", "n"] {
                assert!(r.get(field).is_some(), "{field} missing in {r}");
            }
            assert_eq!((r["budget"].as_u64(), r["context"].as_u64()), (Some(48), Some(160)));
            let score = r["score"].as_f64().unwrap();
            assert!(score.is_finite() && score >= 0.0, "{r}");
        }
    }
    // Fidelity of every method but dense, per selecting layer (28 of 30 after 2 dense).
    for method in &methods[1..] {
        let r = records.iter().find(|r| r["task"] == "fidelity" && r["method"] == *method).unwrap();
        assert_eq!(r["layers"].as_array().unwrap().len(), 28, "{method}");
        let mass = r["score"].as_f64().unwrap();
        assert!(mass > 0.0 && mass <= 1.0 + 1e-9, "{r}");
    }
    let report: serde_json::Value = serde_json::from_str(&read("eval.json")).unwrap();
    assert_eq!(report["records"].as_array().unwrap().len(), records.len());
    assert_eq!(
        report["meta"]["model_sha256"],
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    );
    for name in
        ["eval.csv", "report.md", "ppl.svg", "copy.svg", "passkey.svg", "fidelity.svg", "fidelity_layers.svg"]
    {
        let content = read(name);
        for method in methods.iter().filter(|m| name != "fidelity_layers.svg" || **m != "dense") {
            assert!(content.contains(method), "{name} lacks {method}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn generate_streams_a_continuation() {
    let Some((model, _)) = assets() else {
        eprintln!("skipped: no default model (run `cargo xtask fetch`)");
        return;
    };
    let out = Command::new(env!("CARGO_BIN_EXE_clusterkv"))
        .args([
            "generate",
            "--prompt",
            "Call me Ishmael.",
            "--max-tokens",
            "48",
            "--budget",
            "32",
            "--ignore-eos",
        ])
        .arg("--model")
        .arg(&model)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("Call me Ishmael.") && text.trim_end().len() > "Call me Ishmael.".len(),
        "{text:?}"
    );
    // Past the budget, selecting and re-clustering, with no early stop.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("48 tokens generated"), "{err}");
}

#[test]
fn a_missing_model_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_clusterkv"))
        .args(["generate", "--prompt", "x", "--model", "/nonexistent/model.gguf"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/model.gguf") && err.contains("cargo xtask fetch"), "{err}");
}

/// `clusterkv cache-sim` on a short context: a record per (reuse, layer); dense layers
/// fetch nothing after the first step; a longer reuse window never hits less; bad settings
/// are refused by name.
#[test]
fn cache_sim_reports_every_layer_and_reuse_window() {
    let Some((model, text)) = assets() else {
        eprintln!("skipped: no default model or text (run `cargo xtask fetch`)");
        return;
    };
    let json = std::env::temp_dir().join(format!("ckv-cache-sim-{}.json", std::process::id()));
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_clusterkv"))
            .args(["cache-sim", "--context", "200", "--budget", "64", "--steps", "12"])
            .args(extra)
            .arg("--model")
            .arg(&model)
            .arg("--text")
            .arg(&text)
            .output()
            .unwrap()
    };
    let out = run(&["--reuse", "1,3", "--json", json.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let records: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    let layers = records.len() / 2;
    assert!(layers > 2 && records.len() == 2 * layers, "{records:?}");
    for r in &records {
        for field in ["layer", "reuse", "hit_rate", "bytes_per_step", "bytes_per_step_no_cache"] {
            assert!(r.get(field).is_some(), "{field} missing in {r}");
        }
        let (hit, fetched, no_cache) = (
            r["hit_rate"].as_f64().unwrap(),
            r["bytes_per_step"].as_f64().unwrap(),
            r["bytes_per_step_no_cache"].as_f64().unwrap(),
        );
        assert!((0.0..=1.0).contains(&hit) && fetched <= no_cache && no_cache > 0.0, "{r}");
        if r["method"] == "dense" {
            assert_eq!((hit, fetched), (1.0, 0.0), "a dense layer holds everything: {r}");
        }
    }
    for layer in 0..layers {
        let (one, three) = (&records[layer], &records[layers + layer]);
        assert_eq!((one["reuse"].as_u64(), three["reuse"].as_u64()), (Some(1), Some(3)));
        assert!(three["hit_rate"].as_f64() >= one["hit_rate"].as_f64(), "{one} {three}");
    }
    let sparse_hits: f64 = records[2..layers].iter().map(|r| r["hit_rate"].as_f64().unwrap()).sum();
    assert!(sparse_hits > 0.0, "consecutive steps reuse some rows");
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("Sparse layers together"), "{table}");
    let bad = run(&["--reuse", "0"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("reuse = 0"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}
