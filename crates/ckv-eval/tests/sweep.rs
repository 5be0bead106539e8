//! The settings sweep (`clusterkv sweep`) end to end on the default model and text (skipped,
//! saying so, when `cargo xtask fetch` has not been run).

use std::path::PathBuf;

use ckv_eval::{
    DEFAULT_MODEL, DEFAULT_TEXT, RunMeta, SweepConfig, SweepReport, Task, pareto_front, run_sweep,
    sweep_tables, write_sweep,
};
use ckv_model::{GgufFile, Model, Tokenizer};

fn assets() -> Option<(PathBuf, PathBuf)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets");
    let (model, text) = (dir.join(DEFAULT_MODEL), dir.join(DEFAULT_TEXT));
    (model.exists() && text.exists()).then_some((model, text))
}

/// The quick sweep through the library (shorter probes, to fit a test): a record per
/// (point, task), step times, a front, and the three report files.
#[test]
fn quick_sweep_records_step_times_and_a_front() {
    let Some((model_path, text_path)) = assets() else {
        eprintln!("skipped: no default model or text (run `cargo xtask fetch`)");
        return;
    };
    let gguf = GgufFile::open(&model_path).unwrap();
    let model = Model::from_gguf(&gguf).unwrap();
    let tokenizer = Tokenizer::from_gguf(&gguf).unwrap();
    let tokens = tokenizer.encode(&std::fs::read_to_string(&text_path).unwrap()).unwrap();
    let mut config = SweepConfig::quick();
    config.eval.decode = 24;
    config.eval.passage_len = 32;
    config.eval.copy_depths = vec![0.25, 0.75];
    let run = run_sweep(&model, &tokenizer, &tokens, &config, &()).unwrap();

    let labels = ["default", "tpc=16", "tpc=80", "oracle", "quest", "streamingllm"];
    assert_eq!(run.records.len(), labels.len() * 2, "{:?}", run.records);
    assert!(run.skipped.is_empty(), "{:?}", run.skipped);
    for task in [Task::Ppl, Task::Copy] {
        for label in labels {
            let r = run.records.iter().find(|r| r.task == task && r.label == label).unwrap();
            assert_eq!((r.context, r.budget, r.fraction), (1024, 128, 8), "{r:?}");
            assert!(r.score.is_finite() && r.dense_score.is_finite(), "{r:?}");
            assert!(r.attended > 0.0 && r.attended <= 128.0 + 1e-9, "{r:?}");
            assert!(r.dense_step_ms > 0.0, "{r:?}");
            if matches!(label, "oracle" | "streamingllm") {
                assert!(r.step_ms.is_none(), "{r:?}");
            } else {
                let ms = r.step_ms.unwrap();
                assert!(ms > 0.0 && ms.is_finite(), "{r:?}");
                assert!((r.ratio_to_dense.unwrap() - r.dense_step_ms / ms).abs() < 1e-9);
            }
        }
    }
    let tpc = |label: &str| {
        run.records
            .iter()
            .find(|r| r.label == label)
            .map(|r| (r.params.tokens_per_cluster, r.step_tokens_per_cluster))
    };
    // The default derives its cluster size from each budget: at B = 128 and at 8192 / 8.
    let derived = ckv_select::default_tokens_per_cluster;
    assert_eq!(tpc("default"), Some((derived(128), Some(derived(1024)))));
    assert_eq!(tpc("tpc=80"), Some((80, Some(80))));
    let gap = |task: Task, label: &str| {
        run.summary.iter().find(|s| s.task == task && s.label == label).unwrap().mean_gap
    };
    // The exact top-k reaches a passage deep in the context; the sink and recent tokens do
    // not. (On 2 x 24 perplexity tokens the order of the ppl gaps is noise: only finite.)
    assert!(gap(Task::Copy, "oracle") <= gap(Task::Copy, "streamingllm"), "{:?}", run.summary);
    assert!(run.summary.iter().all(|s| s.mean_gap.is_finite()), "{:?}", run.summary);
    for task in [Task::Ppl, Task::Copy] {
        let rows: Vec<_> = run.summary.iter().filter(|s| s.task == task).collect();
        assert_eq!(rows.len(), labels.len());
        assert!(rows.iter().any(|s| s.on_front), "{task:?}: {rows:?}");
        assert!(rows.iter().filter(|s| s.on_front).all(|s| !s.reference));
        // The marked front is the front of the complete, timed ClusterKV points.
        let candidates: Vec<_> = rows.iter().filter(|s| !s.reference).collect();
        let xy: Vec<(f64, f64)> = candidates.iter().map(|s| (s.mean_step_ms.unwrap(), s.mean_gap)).collect();
        let front = pareto_front(&xy);
        for (i, s) in candidates.iter().enumerate() {
            assert_eq!(s.on_front, front.contains(&i), "{s:?}");
        }
    }

    let meta = RunMeta {
        model: model_path.display().to_string(),
        model_sha256: String::new(),
        text: text_path.display().to_string(),
        text_sha256: String::new(),
        text_tokens: tokens.len(),
        commit: "test".into(),
        seed: 0,
        mode: "quick".into(),
        dense_layers: config.eval.dense_layers,
        positions: config.eval.positions,
        decode: config.eval.decode,
        command: "test".into(),
        seconds: 0.0,
    };
    let report = SweepReport { meta, run };
    let dir = std::env::temp_dir().join(format!("ckv-sweep-{}", std::process::id()));
    let files = write_sweep(&dir, &report).unwrap();
    let names: Vec<_> = files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["sweep.json", "sweep.md", "sweep.svg"]);
    let back: SweepReport = serde_json::from_str(&std::fs::read_to_string(&files[0]).unwrap()).unwrap();
    assert_eq!(back.run.records.len(), report.run.records.len());
    let md = std::fs::read_to_string(&files[1]).unwrap();
    assert_eq!(md, sweep_tables(&report));
    assert!(md.contains("| default") && md.contains("1024 B=128") && md.contains("## copy"), "{md}");
    let svg = std::fs::read_to_string(&files[2]).unwrap();
    for want in ["default", "tpc=80", "quest", "Pareto front", "oracle"] {
        assert!(svg.contains(want), "sweep.svg lacks {want}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
