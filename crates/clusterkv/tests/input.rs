//! Bad input to the `clusterkv` command line is refused by name, before any work; the
//! simulator's table names every method.

use std::process::Command;

use ckv_sim::Variant;

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
