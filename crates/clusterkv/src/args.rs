//! The command line: every command's arguments (clap).

use std::path::{Path, PathBuf};

use ckv_eval::Task;
use ckv_select::{GqaPolicy, Init, Method};
use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "clusterkv",
    version,
    about = "ClusterKV: recallable KV-cache compression for long-context decoding"
)]
pub(crate) struct Cli {
    /// Worker threads (default: one per core).
    #[arg(long, global = true)]
    pub(crate) threads: Option<usize>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// Decode a synthetic trace with every method and print attention fidelity against dense.
    Simulate(SimulateArgs),
    /// Long-context perplexity on a real model and text, every method against dense.
    Ppl(PplArgs),
    /// The accuracy evaluation on a real model: perplexity, copy and passkey retrieval and
    /// attention fidelity against budget for every method; writes reports (JSON, CSV,
    /// Markdown, SVG plots).
    Eval(EvalArgs),
    /// Generate text from a prompt on a real model, streaming it.
    Generate(GenerateArgs),
    /// The performance protocol: decode-step sweep (dense, ClusterKV under each GQA policy,
    /// Quest) with ratios to dense and bandwidth shares, prefill clustering beside dense
    /// prefill attention, end-to-end decode tokens/s of the real model.
    Bench(BenchArgs),
    /// The GPU benchmark (CUDA events): dense against ClusterKV decode steps at 32k and 128k,
    /// budgets 1024 and 2048, the sparse attention kernels' bandwidth share, clustering one
    /// layer at 32k. Needs the `cuda` feature, a GPU and NVRTC (`cargo xtask gpu-check`).
    GpuBench(GpuBenchArgs),
    /// The device tier on the real model: ClusterKV decoding with offload, per layer the hit
    /// rate and the bytes fetched per step for each reuse window, against fetching the whole
    /// selection every step.
    CacheSim(CacheSimArgs),
    /// The settings sweep from which ClusterKV's defaults are chosen: a grid of ClusterKV
    /// settings varied one factor at a time around the defaults, on the perplexity and copy
    /// tasks at each context and budget, each point's decode step timed at 32k (8B layer
    /// shape) beside dense; writes sweep.json, sweep.md and sweep.svg (accuracy gap against
    /// step time, the Pareto front marked).
    Sweep(SweepArgs),
}

#[derive(clap::Args)]
pub(crate) struct SweepArgs {
    #[command(flatten)]
    pub(crate) model: ModelArg,
    #[command(flatten)]
    pub(crate) batch: BatchArg,
    /// Text file.
    #[arg(long, default_value_os_t = Path::new("assets").join(ckv_eval::DEFAULT_TEXT))]
    pub(crate) text: PathBuf,
    /// Quick mode (a test): context 1024, budget fraction 8, tokens per cluster 16 and 80
    /// beside the default, no other factor, 3 reps, step context 8192. Explicit flags still
    /// win.
    #[arg(long)]
    pub(crate) quick: bool,
    /// Contexts, comma separated (default 2048,4096,8192).
    #[arg(long, value_delimiter = ',')]
    pub(crate) contexts: Option<Vec<usize>>,
    /// Budget fractions f, comma separated: B = context / f (default 32,16,8).
    #[arg(long, value_delimiter = ',')]
    pub(crate) budget_fractions: Option<Vec<usize>>,
    /// Explicit tokens per cluster, comma separated, beside the derived default (default
    /// 8,16,32,80).
    #[arg(long, value_delimiter = ',')]
    pub(crate) tokens_per_cluster: Option<Vec<usize>>,
    /// Explicit tail windows, comma separated (default 64,128).
    #[arg(long, value_delimiter = ',')]
    pub(crate) windows: Option<Vec<usize>>,
    /// Explicit clusters per tail window, comma separated (default 1,2,4,8).
    #[arg(long, value_delimiter = ',')]
    pub(crate) window_clusters: Option<Vec<usize>>,
    /// Sink lengths, comma separated (default 4,16,64).
    #[arg(long, value_delimiter = ',')]
    pub(crate) sinks: Option<Vec<usize>>,
    /// k-means initialisations, comma separated: random, kmeans++ (default both).
    #[arg(long, value_delimiter = ',')]
    pub(crate) inits: Option<Vec<Init>>,
    /// k-means iteration caps, comma separated (default 5,10,20).
    #[arg(long, value_delimiter = ',')]
    pub(crate) iters: Option<Vec<usize>>,
    /// GQA policies, comma separated: per-query-head, per-kv-head (default both).
    #[arg(long, value_delimiter = ',')]
    pub(crate) gqa: Option<Vec<GqaPolicy>>,
    /// Mass targets p in (0, 1], comma separated: ClusterKV and the exact top-p oracle,
    /// capped by each budget (default 0.9,0.95,0.98).
    #[arg(long, value_delimiter = ',')]
    pub(crate) masses: Option<Vec<f32>>,
    /// Perplexity positions per context (default 2).
    #[arg(long)]
    pub(crate) positions: Option<usize>,
    /// Teacher-forced tokens scored per perplexity position (default 64).
    #[arg(long)]
    pub(crate) decode: Option<usize>,
    /// Tokens of a copied passage (its first 8 are the cue; default 64).
    #[arg(long)]
    pub(crate) passage_len: Option<usize>,
    /// Context of the timed decode step (default 32768; 8192 quick).
    #[arg(long)]
    pub(crate) step_context: Option<usize>,
    /// Timed steps per point, the median kept (default 9; 3 quick).
    #[arg(long)]
    pub(crate) reps: Option<usize>,
    /// Seed of the clustering and of the synthetic timed layer.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Folder of the reports.
    #[arg(long, default_value = "reports/sweep")]
    pub(crate) out: PathBuf,
}

#[derive(clap::Args)]
pub(crate) struct CacheSimArgs {
    #[command(flatten)]
    pub(crate) model: ModelArg,
    /// Text file (the prompt).
    #[arg(long, default_value_os_t = Path::new("assets").join(ckv_eval::DEFAULT_TEXT))]
    pub(crate) text: PathBuf,
    /// Context at the last step: prompt plus decoded tokens.
    #[arg(long, default_value_t = 8192)]
    pub(crate) context: usize,
    /// ClusterKV's budget.
    #[arg(long, default_value_t = 512)]
    pub(crate) budget: usize,
    /// Tokens decoded (greedy).
    #[arg(long, default_value_t = 64)]
    pub(crate) steps: usize,
    /// Reuse windows, comma separated: steps whose attended rows the device tier keeps.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    pub(crate) reuse: Vec<usize>,
    /// Also write the records as JSON to this file.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
}

#[derive(clap::Args)]
pub(crate) struct GpuBenchArgs {
    /// Contexts of the decode steps, comma separated (default 32768,131072).
    #[arg(long, value_delimiter = ',')]
    pub(crate) contexts: Vec<usize>,
    /// Budgets of ClusterKV, comma separated (default 1024,2048).
    #[arg(long, value_delimiter = ',')]
    pub(crate) budgets: Vec<usize>,
    /// Timed runs per case (default 30).
    #[arg(long)]
    pub(crate) reps: Option<usize>,
    /// Context of the clustering case (default 32768).
    #[arg(long)]
    pub(crate) cluster_context: Option<usize>,
    /// GPU ordinal.
    #[arg(long, default_value_t = 0)]
    pub(crate) device: usize,
    /// Also write the records as JSON to this file.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
}

#[derive(clap::Args)]
pub(crate) struct BenchArgs {
    #[command(flatten)]
    pub(crate) model: ModelArg,
    /// Text file (prompts of the end-to-end case).
    #[arg(long, default_value_os_t = Path::new("assets").join(ckv_eval::DEFAULT_TEXT))]
    pub(crate) text: PathBuf,
    /// Quick mode (about half a minute): contexts 2048 and 8192, budgets 512 and 1024, prefill at
    /// 2048, the real model at 520. Without it: contexts 8k, 32k and 128k, budgets 512 to
    /// 2048, prefill at 32k, the real model at 4k and 8k.
    #[arg(long)]
    pub(crate) quick: bool,
    /// Contexts of the decode sweep, comma separated (default: by mode).
    #[arg(long, value_delimiter = ',')]
    pub(crate) contexts: Vec<usize>,
    /// Budgets of the decode sweep, comma separated (default: by mode).
    #[arg(long, value_delimiter = ',')]
    pub(crate) budgets: Vec<usize>,
    /// Timed runs per decode case (default: by mode).
    #[arg(long)]
    pub(crate) reps: Option<usize>,
    /// Time decode steps back to back, without flushing the cache before each.
    #[arg(long)]
    pub(crate) no_flush: bool,
    /// Prompt length of the prefill case (default: by mode).
    #[arg(long)]
    pub(crate) prefill_context: Option<usize>,
    /// Contexts of the end-to-end case (prompt plus decoded tokens), comma separated
    /// (default: by mode).
    #[arg(long, value_delimiter = ',')]
    pub(crate) e2e_contexts: Vec<usize>,
    /// Tokens decoded per end-to-end run (default: by mode).
    #[arg(long)]
    pub(crate) e2e_tokens: Option<usize>,
    /// Batch sizes of the end-to-end case, comma separated (default: 1,4,16; quick: 1,2).
    #[arg(long, value_delimiter = ',')]
    pub(crate) e2e_batches: Vec<usize>,
    /// llama.cpp's `llama-bench` program (`cargo xtask peer` builds it into
    /// target/peer/build/bin): runs it on the same model at the end-to-end depths and prints
    /// its row beside ours.
    #[arg(long, value_name = "PATH")]
    pub(crate) llama_cpp: Option<PathBuf>,
    /// Skip the end-to-end case (no model or text needed).
    #[arg(long)]
    pub(crate) no_model: bool,
    /// Seed of the synthetic data and the clusterings.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Also write the records as JSON to this file.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
}

/// The model file (default: the one `cargo xtask fetch` gets).
#[derive(clap::Args)]
pub(crate) struct ModelArg {
    /// GGUF model file (any Llama-family GGUF).
    #[arg(long, default_value_os_t = Path::new("assets").join(ckv_eval::DEFAULT_MODEL))]
    pub(crate) model: PathBuf,
    /// Leading layers that always attend densely.
    #[arg(long, default_value_t = 2)]
    pub(crate) dense_layers: usize,
}

/// Probes decoded together by the evaluations (`eval`, `ppl`, `sweep`).
#[derive(clap::Args)]
pub(crate) struct BatchArg {
    /// Probes decoded together: their dense prefill snapshots and sequences are held at
    /// once, so memory grows with it (about two KV caches of a context per probe), not with
    /// the number of probes; results do not depend on it.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) batch: u16,
}

#[derive(clap::Args)]
pub(crate) struct PplArgs {
    #[command(flatten)]
    pub(crate) model: ModelArg,
    #[command(flatten)]
    pub(crate) batch: BatchArg,
    /// Text file.
    #[arg(long, default_value_os_t = Path::new("assets").join(ckv_eval::DEFAULT_TEXT))]
    pub(crate) text: PathBuf,
    /// Tokens C of each window, as in `eval`: its first C - T - 1 are prefilled densely, the
    /// rest is teacher-forced through each method and its last T are scored.
    #[arg(long, default_value_t = 1024)]
    pub(crate) context: usize,
    /// Scored tokens T of each window.
    #[arg(long, default_value_t = 64)]
    pub(crate) decode: usize,
    /// Windows K spread over the text.
    #[arg(long, default_value_t = 2)]
    pub(crate) positions: usize,
    /// Methods, comma separated (ClusterKV runs under both GQA policies; dense always runs).
    #[arg(long, value_delimiter = ',', default_value = "dense,clusterkv,quest,streamingllm")]
    pub(crate) methods: Vec<Method>,
    /// Budgets, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "256")]
    pub(crate) budgets: Vec<usize>,
    /// Seed of the clustering.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Also write the records as JSON to this file.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
}

#[derive(clap::Args)]
pub(crate) struct EvalArgs {
    #[command(flatten)]
    pub(crate) model: ModelArg,
    #[command(flatten)]
    pub(crate) batch: BatchArg,
    /// Text file.
    #[arg(long, default_value_os_t = Path::new("assets").join(ckv_eval::DEFAULT_TEXT))]
    pub(crate) text: PathBuf,
    /// Quick mode: context 1024, budgets 128 and 256, 2 perplexity positions (a few minutes
    /// on 2 cores). Without it: the full protocol, contexts 2048, 4096 and 8192, budgets 128
    /// to 1024, 8 positions.
    #[arg(long)]
    pub(crate) quick: bool,
    /// Contexts C, comma separated: each probe fills exactly C tokens (default: by mode).
    #[arg(long, value_delimiter = ',')]
    pub(crate) contexts: Vec<usize>,
    /// Budgets, comma separated (default: by mode).
    #[arg(long, value_delimiter = ',')]
    pub(crate) budgets: Vec<usize>,
    /// Methods, comma separated (dense, oracle, clusterkv, quest, streamingllm, h2o); ClusterKV
    /// runs under both GQA policies. Default: all.
    #[arg(long, value_delimiter = ',')]
    pub(crate) methods: Vec<Method>,
    /// Tasks, comma separated (ppl, copy, passkey, fidelity). Default: all.
    #[arg(long, value_delimiter = ',')]
    pub(crate) tasks: Vec<Task>,
    /// Perplexity positions spread over the text (default: by mode).
    #[arg(long)]
    pub(crate) positions: Option<usize>,
    /// Teacher-forced tokens scored per perplexity position.
    #[arg(long, default_value_t = 64)]
    pub(crate) decode: usize,
    /// Tokens of a copied passage (its first 8 are the cue).
    #[arg(long, default_value_t = 64)]
    pub(crate) passage_len: usize,
    /// Passkeys per depth (10%, 50%, 90%), each with its own key (default: 1 quick, 2 full).
    #[arg(long)]
    pub(crate) passkey_seeds: Option<usize>,
    /// Measure attention fidelity every this many decode steps (default: 1 quick, 4 full).
    #[arg(long)]
    pub(crate) fidelity_every: Option<usize>,
    /// Seed of the clustering and of the passkeys.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Sink tokens s (default 16).
    #[arg(long)]
    pub(crate) sink: Option<usize>,
    /// Prompt tokens per cluster (default: derived from the budget, see the README).
    #[arg(long)]
    pub(crate) tokens_per_cluster: Option<usize>,
    /// Tail window: tokens re-clustered at a time (default min(320, (B - s) / 2)).
    #[arg(long)]
    pub(crate) window: Option<usize>,
    /// Clusters per tail window (default from the window).
    #[arg(long)]
    pub(crate) window_clusters: Option<usize>,
    /// k-means initialisation: random (seeded distinct rows, the default) or kmeans++.
    #[arg(long)]
    pub(crate) init: Option<Init>,
    /// Mass targets p, comma separated: ClusterKV and the oracle (exact top-p) also run with
    /// a mass-targeted budget at each p, capped by each budget.
    #[arg(long, value_delimiter = ',')]
    pub(crate) masses: Vec<f32>,
    /// Folder of the reports.
    #[arg(long, default_value = "reports")]
    pub(crate) out: PathBuf,
    /// Also write the records as a JSON array to this file.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
}

#[derive(clap::Args)]
pub(crate) struct GenerateArgs {
    #[command(flatten)]
    pub(crate) model: ModelArg,
    /// The prompt.
    #[arg(long)]
    pub(crate) prompt: String,
    /// Attention method.
    #[arg(long, default_value = "clusterkv")]
    pub(crate) method: Method,
    /// Budget B.
    #[arg(long, default_value_t = 1024)]
    pub(crate) budget: usize,
    /// Tokens to generate at most (stops early at the end-of-sequence token).
    #[arg(long, default_value_t = 64)]
    pub(crate) max_tokens: usize,
    /// Keep generating after the end-of-sequence token, up to `--max-tokens` (long runs).
    #[arg(long)]
    pub(crate) ignore_eos: bool,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum KvType {
    F16,
    F32,
}

#[derive(clap::Args)]
pub(crate) struct SimulateArgs {
    /// Prompt tokens.
    #[arg(long, default_value_t = 32768)]
    pub(crate) context: usize,
    /// Budget B: KV entries one head attends to per step (sink, tail and current included).
    #[arg(long, default_value_t = 1024)]
    pub(crate) budget: usize,
    /// Decode steps measured after the prompt.
    #[arg(long, default_value_t = 16)]
    pub(crate) steps: usize,
    /// Head dimension (even).
    #[arg(long, default_value_t = 128)]
    pub(crate) head_dim: usize,
    /// Query heads.
    #[arg(long, default_value_t = 8)]
    pub(crate) q_heads: usize,
    /// KV heads.
    #[arg(long, default_value_t = 2)]
    pub(crate) kv_heads: usize,
    /// Topics (true clusters) per KV head in the trace.
    #[arg(long, default_value_t = 64)]
    pub(crate) topics: usize,
    /// Sink tokens s.
    #[arg(long, default_value_t = 16)]
    pub(crate) sink: usize,
    /// Seed of the trace and the clustering.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Storage type of the KV.
    #[arg(long, value_enum, default_value_t = KvType::F16)]
    pub(crate) kv: KvType,
    /// Methods to run, comma separated (dense, oracle, clusterkv, quest, streamingllm, h2o);
    /// ClusterKV runs under both GQA policies. Default: all.
    #[arg(long, value_delimiter = ',')]
    pub(crate) methods: Vec<Method>,
}
