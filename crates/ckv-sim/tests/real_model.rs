//! The `clusterkv ppl` and `generate` commands on the default model and text (skipped,
//! saying so, when `cargo xtask fetch` has not been run).

use std::path::PathBuf;
use std::process::Command;

fn assets() -> Option<(PathBuf, PathBuf)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets");
    let (model, text) = (dir.join("SmolLM2-135M-Instruct.Q4_1.gguf"), dir.join("moby-dick.txt"));
    (model.exists() && text.exists()).then_some((model, text))
}

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
    assert_eq!(records.len(), 6 * 2, "{records:?}");
    let dense_ppl = records[0]["ppl_dense"].as_f64().unwrap();
    for r in &records {
        for field in ["method", "budget", "context", "decode", "positions", "ppl", "nll", "ppl_dense"] {
            assert!(r.get(field).is_some(), "{field} missing in {r}");
        }
        assert_eq!(r["context"], 64);
        assert_eq!(r["positions"], 2);
        assert_eq!(r["ppl_dense"].as_f64().unwrap(), dense_ppl);
        let ppl = r["ppl"].as_f64().unwrap();
        assert!(ppl.is_finite() && ppl > 1.0, "{r}");
        if r["method"] == "dense" {
            assert_eq!(ppl, dense_ppl);
        }
    }
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("| clusterkv | 48 |"), "{table}");
}

#[test]
fn generate_streams_a_continuation() {
    let Some((model, _)) = assets() else {
        eprintln!("skipped: no default model (run `cargo xtask fetch`)");
        return;
    };
    let out = Command::new(env!("CARGO_BIN_EXE_clusterkv"))
        .args(["generate", "--prompt", "Call me Ishmael.", "--max-tokens", "5", "--budget", "64"])
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
    assert!(String::from_utf8_lossy(&out.stderr).contains("tokens generated"));
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
