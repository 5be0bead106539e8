//! The `clusterkv` command line.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use ckv_model::{GgufFile, Model, Tokenizer, argmax};
use ckv_select::{GqaPolicy, Init, Method, SelectParams};
use ckv_sim::{
    BenchConfig, EvalConfig, EvalReport, PplConfig, RunMeta, SimConfig, SweepConfig, SweepReport, Task,
    Trace, TraceConfig, Variant, bench_tables, evaluate, perplexity, ppl_table, run_bench, run_sweep,
    score_tables, simulate, sweep_tables, table, write_reports, write_sweep,
};
use clap::{Parser, Subcommand, ValueEnum};
use half::f16;
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use tracing::info;

/// Where `cargo xtask fetch` puts the default model and text.
const DEFAULT_MODEL: &str = "assets/SmolLM2-135M-Instruct.Q4_1.gguf";
const DEFAULT_TEXT: &str = "assets/moby-dick.txt";

#[derive(Parser)]
#[command(
    name = "clusterkv",
    version,
    about = "ClusterKV: recallable KV-cache compression for long-context decoding"
)]
struct Cli {
    /// Worker threads (default: one per core).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
struct SweepArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Text file.
    #[arg(long, default_value = DEFAULT_TEXT)]
    text: PathBuf,
    /// Quick mode (a test): context 1024, budget fraction 8, tokens per cluster 16 and 80
    /// beside the default, no other factor, 3 reps, step context 8192. Explicit flags still
    /// win.
    #[arg(long)]
    quick: bool,
    /// Contexts, comma separated (default 2048,4096,8192).
    #[arg(long, value_delimiter = ',')]
    contexts: Option<Vec<usize>>,
    /// Budget fractions f, comma separated: B = context / f (default 32,16,8).
    #[arg(long, value_delimiter = ',')]
    budget_fractions: Option<Vec<usize>>,
    /// Explicit tokens per cluster, comma separated, beside the derived default (default
    /// 8,16,32,80).
    #[arg(long, value_delimiter = ',')]
    tokens_per_cluster: Option<Vec<usize>>,
    /// Explicit tail windows, comma separated (default 64,128).
    #[arg(long, value_delimiter = ',')]
    windows: Option<Vec<usize>>,
    /// Explicit clusters per tail window, comma separated (default 1,2,4,8).
    #[arg(long, value_delimiter = ',')]
    window_clusters: Option<Vec<usize>>,
    /// Sink lengths, comma separated (default 4,16,64).
    #[arg(long, value_delimiter = ',')]
    sinks: Option<Vec<usize>>,
    /// k-means initialisations, comma separated: random, kmeans++ (default both).
    #[arg(long, value_delimiter = ',')]
    inits: Option<Vec<Init>>,
    /// k-means iteration caps, comma separated (default 5,10,20).
    #[arg(long, value_delimiter = ',')]
    iters: Option<Vec<usize>>,
    /// GQA policies, comma separated: per-query-head, per-kv-head (default both).
    #[arg(long, value_delimiter = ',')]
    gqa: Option<Vec<GqaPolicy>>,
    /// Mass targets p in (0, 1], comma separated: ClusterKV and the exact top-p oracle,
    /// capped by each budget (default 0.9,0.95,0.98).
    #[arg(long, value_delimiter = ',')]
    masses: Option<Vec<f32>>,
    /// Perplexity positions per context (default 2).
    #[arg(long)]
    positions: Option<usize>,
    /// Teacher-forced tokens scored per perplexity position (default 64).
    #[arg(long)]
    decode: Option<usize>,
    /// Tokens of a copied passage (its first 8 are the cue; default 64).
    #[arg(long)]
    passage_len: Option<usize>,
    /// Context of the timed decode step (default 32768; 8192 quick).
    #[arg(long)]
    step_context: Option<usize>,
    /// Timed steps per point, the median kept (default 9; 3 quick).
    #[arg(long)]
    reps: Option<usize>,
    /// Seed of the clustering and of the synthetic timed layer.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Folder of the reports.
    #[arg(long, default_value = "reports/sweep")]
    out: PathBuf,
}

#[derive(clap::Args)]
struct CacheSimArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Text file (the prompt).
    #[arg(long, default_value = DEFAULT_TEXT)]
    text: PathBuf,
    /// Context at the last step: prompt plus decoded tokens.
    #[arg(long, default_value_t = 8192)]
    context: usize,
    /// ClusterKV's budget.
    #[arg(long, default_value_t = 512)]
    budget: usize,
    /// Tokens decoded (greedy).
    #[arg(long, default_value_t = 64)]
    steps: usize,
    /// Reuse windows, comma separated: steps whose attended rows the device tier keeps.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    reuse: Vec<usize>,
    /// Also write the records as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(clap::Args)]
struct GpuBenchArgs {
    /// Contexts of the decode steps, comma separated (default 32768,131072).
    #[arg(long, value_delimiter = ',')]
    contexts: Vec<usize>,
    /// Budgets of ClusterKV, comma separated (default 1024,2048).
    #[arg(long, value_delimiter = ',')]
    budgets: Vec<usize>,
    /// Timed runs per case (default 30).
    #[arg(long)]
    reps: Option<usize>,
    /// Context of the clustering case (default 32768).
    #[arg(long)]
    cluster_context: Option<usize>,
    /// GPU ordinal.
    #[arg(long, default_value_t = 0)]
    device: usize,
    /// Also write the records as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(clap::Args)]
struct BenchArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Text file (prompts of the end-to-end case).
    #[arg(long, default_value = DEFAULT_TEXT)]
    text: PathBuf,
    /// Quick mode (about a minute): contexts 2048 and 8192, budgets 512 and 1024, prefill at
    /// 2048, the real model at 520. Without it: contexts 8k, 32k and 128k, budgets 512 to
    /// 2048, prefill at 32k, the real model at 4k and 8k.
    #[arg(long)]
    quick: bool,
    /// Contexts of the decode sweep, comma separated (default: by mode).
    #[arg(long, value_delimiter = ',')]
    contexts: Vec<usize>,
    /// Budgets of the decode sweep, comma separated (default: by mode).
    #[arg(long, value_delimiter = ',')]
    budgets: Vec<usize>,
    /// Timed runs per decode case (default: by mode).
    #[arg(long)]
    reps: Option<usize>,
    /// Time decode steps back to back, without flushing the cache before each.
    #[arg(long)]
    no_flush: bool,
    /// Prompt length of the prefill case (default: by mode).
    #[arg(long)]
    prefill_context: Option<usize>,
    /// Contexts of the end-to-end case (prompt plus decoded tokens), comma separated
    /// (default: by mode).
    #[arg(long, value_delimiter = ',')]
    e2e_contexts: Vec<usize>,
    /// Tokens decoded per end-to-end run (default: by mode).
    #[arg(long)]
    e2e_tokens: Option<usize>,
    /// Batch sizes of the end-to-end case, comma separated (default: 1,4,16; quick: 1,2).
    #[arg(long, value_delimiter = ',')]
    e2e_batches: Vec<usize>,
    /// llama.cpp's `llama-bench` program (`cargo xtask peer` builds it into
    /// target/peer/build/bin): runs it on the same model at the end-to-end depths and prints
    /// its row beside ours.
    #[arg(long, value_name = "PATH")]
    llama_cpp: Option<PathBuf>,
    /// Skip the end-to-end case (no model or text needed).
    #[arg(long)]
    no_model: bool,
    /// Seed of the synthetic data and the clusterings.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also write the records as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The model file (default: the one `cargo xtask fetch` gets).
#[derive(clap::Args)]
struct ModelArg {
    /// GGUF model file (any Llama-family GGUF).
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: PathBuf,
    /// Leading layers that always attend densely.
    #[arg(long, default_value_t = 2)]
    dense_layers: usize,
}

#[derive(clap::Args)]
struct PplArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Text file.
    #[arg(long, default_value = DEFAULT_TEXT)]
    text: PathBuf,
    /// Prompt tokens P, prefilled densely at each position.
    #[arg(long, default_value_t = 1024)]
    context: usize,
    /// Teacher-forced tokens T decoded through each method.
    #[arg(long, default_value_t = 64)]
    decode: usize,
    /// Prefix positions K spread over the text.
    #[arg(long, default_value_t = 2)]
    positions: usize,
    /// Methods, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "dense,clusterkv,quest,streamingllm")]
    methods: Vec<Method>,
    /// Budgets, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "256")]
    budgets: Vec<usize>,
    /// Seed of the clustering.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also write the records as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(clap::Args)]
struct EvalArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Text file.
    #[arg(long, default_value = DEFAULT_TEXT)]
    text: PathBuf,
    /// Quick mode: context 1024, budgets 128 and 256, 2 perplexity positions (a few minutes
    /// on 2 cores). Without it: the full protocol, contexts 2048, 4096 and 8192, budgets 128
    /// to 1024, 8 positions.
    #[arg(long)]
    quick: bool,
    /// Contexts C, comma separated: each probe fills exactly C tokens (default: by mode).
    #[arg(long, value_delimiter = ',')]
    contexts: Vec<usize>,
    /// Budgets, comma separated (default: by mode).
    #[arg(long, value_delimiter = ',')]
    budgets: Vec<usize>,
    /// Methods, comma separated (dense, oracle, clusterkv, quest, streamingllm, h2o); ClusterKV
    /// runs under both GQA policies. Default: all.
    #[arg(long, value_delimiter = ',')]
    methods: Vec<Method>,
    /// Tasks, comma separated (ppl, copy, passkey, fidelity). Default: all.
    #[arg(long, value_delimiter = ',')]
    tasks: Vec<Task>,
    /// Perplexity positions spread over the text (default: by mode).
    #[arg(long)]
    positions: Option<usize>,
    /// Teacher-forced tokens scored per perplexity position.
    #[arg(long, default_value_t = 64)]
    decode: usize,
    /// Tokens of a copied passage (its first 8 are the cue).
    #[arg(long, default_value_t = 64)]
    passage_len: usize,
    /// Passkeys per depth (10%, 50%, 90%), each with its own key (default: 1 quick, 2 full).
    #[arg(long)]
    passkey_seeds: Option<usize>,
    /// Measure attention fidelity every this many decode steps (default: 1 quick, 4 full).
    #[arg(long)]
    fidelity_every: Option<usize>,
    /// Seed of the clustering and of the passkeys.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Sink tokens s (default 16).
    #[arg(long)]
    sink: Option<usize>,
    /// Prompt tokens per cluster (default: derived from the budget, see the README).
    #[arg(long)]
    tokens_per_cluster: Option<usize>,
    /// Tail window: tokens re-clustered at a time (default min(320, (B - s) / 2)).
    #[arg(long)]
    window: Option<usize>,
    /// Clusters per tail window (default from the window).
    #[arg(long)]
    window_clusters: Option<usize>,
    /// k-means initialisation: random (seeded distinct rows, the default) or kmeans++.
    #[arg(long)]
    init: Option<Init>,
    /// Mass targets p, comma separated: ClusterKV and the oracle (exact top-p) also run with
    /// a mass-targeted budget at each p, capped by each budget.
    #[arg(long, value_delimiter = ',')]
    masses: Vec<f32>,
    /// Folder of the reports.
    #[arg(long, default_value = "reports")]
    out: PathBuf,
    /// Also write the records as a JSON array to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(clap::Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArg,
    /// The prompt.
    #[arg(long)]
    prompt: String,
    /// Attention method.
    #[arg(long, default_value = "clusterkv")]
    method: Method,
    /// Budget B.
    #[arg(long, default_value_t = 1024)]
    budget: usize,
    /// Tokens to generate at most (stops early at the end-of-sequence token).
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
}

#[derive(Clone, Copy, ValueEnum)]
enum KvType {
    F16,
    F32,
}

#[derive(clap::Args)]
struct SimulateArgs {
    /// Prompt tokens.
    #[arg(long, default_value_t = 32768)]
    context: usize,
    /// Budget B: KV entries one head attends to per step (sink, tail and current included).
    #[arg(long, default_value_t = 1024)]
    budget: usize,
    /// Decode steps measured after the prompt.
    #[arg(long, default_value_t = 16)]
    steps: usize,
    /// Head dimension (even).
    #[arg(long, default_value_t = 128)]
    head_dim: usize,
    /// Query heads.
    #[arg(long, default_value_t = 8)]
    q_heads: usize,
    /// KV heads.
    #[arg(long, default_value_t = 2)]
    kv_heads: usize,
    /// Topics (true clusters) per KV head in the trace.
    #[arg(long, default_value_t = 64)]
    topics: usize,
    /// Sink tokens s.
    #[arg(long, default_value_t = 16)]
    sink: usize,
    /// Seed of the trace and the clustering.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Storage type of the KV.
    #[arg(long, value_enum, default_value_t = KvType::F16)]
    kv: KvType,
    /// Methods to run, comma separated (dense, oracle, clusterkv, quest, streamingllm, h2o);
    /// ClusterKV runs under both GQA policies. Default: all.
    #[arg(long, value_delimiter = ',')]
    methods: Vec<Method>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    if let Some(threads) = cli.threads {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build_global()?;
    }
    match cli.command {
        Command::Simulate(args) => simulate_command(args),
        Command::Ppl(args) => ppl_command(args),
        Command::Eval(args) => eval_command(args),
        Command::Generate(args) => generate_command(args),
        Command::Bench(args) => bench_command(args),
        Command::GpuBench(args) => gpu_bench_command(args),
        Command::CacheSim(args) => cache_sim_command(args),
        Command::Sweep(args) => sweep_command(args),
    }
}

fn bench_command(args: BenchArgs) -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let mut config = if args.quick { BenchConfig::quick() } else { BenchConfig::full() };
    if !args.contexts.is_empty() {
        config.contexts = args.contexts;
    }
    if !args.budgets.is_empty() {
        config.budgets = args.budgets;
    }
    if !args.e2e_contexts.is_empty() {
        config.e2e_contexts = args.e2e_contexts;
    }
    if !args.e2e_batches.is_empty() {
        config.e2e_batches = args.e2e_batches;
    }
    config.reps = args.reps.unwrap_or(config.reps);
    config.flush = !args.no_flush;
    config.prefill_context = args.prefill_context.unwrap_or(config.prefill_context);
    config.e2e_tokens = args.e2e_tokens.unwrap_or(config.e2e_tokens);
    config.dense_layers = args.model.dense_layers;
    config.seed = args.seed;
    config.validate()?;
    let peer = match args.llama_cpp {
        Some(llama_bench) if args.no_model => {
            return Err(format!(
                "--llama-cpp {} needs the end-to-end case: drop --no-model",
                llama_bench.display()
            )
            .into());
        }
        Some(llama_bench) if !llama_bench.is_file() => {
            return Err(format!(
                "--llama-cpp {}: no such program (`cargo xtask peer` builds it)",
                llama_bench.display()
            )
            .into());
        }
        Some(llama_bench) => Some(ckv_sim::Peer { llama_bench, model: args.model.model.clone() }),
        None => None,
    };
    let real = if args.no_model {
        None
    } else {
        let (model, tokenizer) = load(&args.model.model)?;
        let tokens = read_text(&args.text, &tokenizer)?;
        Some((model, tokens))
    };
    let report = run_bench(&config, real.as_ref().map(|(m, t)| (m, t.as_slice())), peer.as_ref())?;
    println!("{}", bench_tables(&report));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report.records)?)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    eprintln!("bench done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn cache_sim_command(args: CacheSimArgs) -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let config = ckv_sim::CacheSimConfig {
        context: args.context,
        budget: args.budget,
        steps: args.steps,
        reuse: args.reuse,
        dense_layers: args.model.dense_layers,
    };
    let (model, tokenizer) = load(&args.model.model)?;
    let tokens = read_text(&args.text, &tokenizer)?;
    let records = ckv_sim::cache_sim(&config, &model, &tokens)?;
    println!("{}", ckv_sim::cache_sim_table(&config, &records));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&records)?)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    eprintln!("cache-sim done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

#[cfg(feature = "cuda")]
fn gpu_bench_command(args: GpuBenchArgs) -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let mut config = ckv_sim::GpuBenchConfig::full();
    if !args.contexts.is_empty() {
        config.contexts = args.contexts;
    }
    if !args.budgets.is_empty() {
        config.budgets = args.budgets;
    }
    config.reps = args.reps.unwrap_or(config.reps);
    config.cluster_context = args.cluster_context.unwrap_or(config.cluster_context);
    config.validate()?;
    let gpu = ckv_kernels::Gpu::open(args.device, &ckv_kernels::default_include_dirs())?;
    eprintln!("GPU: {}", gpu.describe());
    let report = ckv_sim::run_gpu_bench(&gpu, &config)?;
    println!("{}", ckv_sim::gpu_bench_tables(&report));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report.records)?)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    eprintln!("gpu-bench done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn gpu_bench_command(_: GpuBenchArgs) -> Result<(), Box<dyn std::error::Error>> {
    Err("this clusterkv was built without the `cuda` feature: run `cargo xtask gpu-check`, or build \
         with `--features cuda`"
        .into())
}

/// Loads the model and its tokenizer, with a hint when the default file is missing.
fn load(path: &Path) -> Result<(Model, Tokenizer), Box<dyn std::error::Error>> {
    if !path.exists() {
        return Err(format!(
            "model file {} not found: run `cargo xtask fetch` or pass --model",
            path.display()
        )
        .into());
    }
    let started = Instant::now();
    let gguf = GgufFile::open(path)?;
    let model = Model::from_gguf(&gguf)?;
    let tokenizer = Tokenizer::from_gguf(&gguf)?;
    info!(path = %path.display(), seconds = started.elapsed().as_secs_f64(), "model loaded");
    Ok((model, tokenizer))
}

/// A bar counting dense prefills and decode steps, with the current setting.
fn progress_bar() -> Result<ProgressBar, Box<dyn std::error::Error>> {
    Ok(ProgressBar::new(0).with_style(
        ProgressStyle::with_template(
            "{prefix} {elapsed_precise} [{bar:30}] {pos}/{len} prefills + steps, eta {eta} {msg}",
        )?
        .progress_chars("=> "),
    ))
}

/// Reads and tokenizes the text, with a hint when it is missing.
fn read_text(path: &Path, tokenizer: &Tokenizer) -> Result<Vec<u32>, Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!("cannot read text {}: {e} (run `cargo xtask fetch` or pass --text)", path.display())
    })?;
    let tokens = tokenizer.encode(&text)?;
    info!(tokens = tokens.len(), "text tokenized");
    Ok(tokens)
}

/// The sha256 of a file, in hex.
/// The metadata of an evaluation or sweep run of `config` on `model` and `text` (`tokens`
/// tokens); its `seconds` are set when the run ends.
fn run_meta(
    model: &Path,
    text: &Path,
    tokens: usize,
    config: &EvalConfig,
    quick: bool,
) -> Result<RunMeta, Box<dyn std::error::Error>> {
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

fn sha256(path: &Path) -> Result<String, Box<dyn std::error::Error>> {
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

fn eval_command(args: EvalArgs) -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let mut config = if args.quick { EvalConfig::quick() } else { EvalConfig::full() };
    if !args.contexts.is_empty() {
        config.contexts = args.contexts.clone();
    }
    if !args.budgets.is_empty() {
        config.budgets = args.budgets.clone();
    }
    if !args.methods.is_empty() {
        config.variants.retain(|v| args.methods.contains(&v.method));
    }
    if !args.tasks.is_empty() {
        config.tasks = args.tasks.clone();
    }
    config.positions = args.positions.unwrap_or(config.positions);
    config.decode = args.decode;
    config.passage_len = args.passage_len;
    config.passkey_seeds = args.passkey_seeds.unwrap_or(config.passkey_seeds);
    config.fidelity_every = args.fidelity_every.unwrap_or(config.fidelity_every);
    config.dense_layers = args.model.dense_layers;
    config.seed = args.seed;
    let select = &mut config.select;
    if let Some(sink) = args.sink {
        *select = select.clone().sink(sink);
    }
    if let Some(tpc) = args.tokens_per_cluster {
        *select = select.clone().tokens_per_cluster(tpc);
    }
    if let Some(window) = args.window {
        *select = select.clone().window(window);
    }
    if let Some(clusters) = args.window_clusters {
        *select = select.clone().window_clusters(clusters);
    }
    if let Some(init) = args.init {
        *select = select.clone().init(init);
    }
    config.masses = args.masses.clone();
    let (model, tokenizer) = load(&args.model.model)?;
    let tokens = read_text(&args.text, &tokenizer)?;
    let bar = progress_bar()?;
    let mut meta = run_meta(&args.model.model, &args.text, tokens.len(), &config, args.quick)?;
    // One context at a time, the reports rewritten after each: a long run stopped early
    // keeps the contexts it finished.
    let mut records = Vec::new();
    let mut files = Vec::new();
    for &context in &config.contexts {
        let one = EvalConfig { contexts: vec![context], ..config.clone() };
        records.extend(evaluate(&model, &tokenizer, &tokens, &one, &bar)?);
        meta.seconds = started.elapsed().as_secs_f64();
        let report = EvalReport { meta: meta.clone(), records: records.clone() };
        files = write_reports(&args.out, &report)?;
        if let Some(path) = &args.json {
            std::fs::write(path, serde_json::to_string_pretty(&report.records)?)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        info!(context, out = %args.out.display(), "context done, reports written");
    }
    bar.finish_and_clear();
    println!("{}", score_tables(&EvalReport { meta, records }));
    eprintln!(
        "wrote {} ({} files{}) in {:.1} s",
        args.out.display(),
        files.len(),
        args.json.as_ref().map_or(String::new(), |p| format!(" and {}", p.display())),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn sweep_command(args: SweepArgs) -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let mut config = if args.quick { SweepConfig::quick() } else { SweepConfig::full() };
    let set = |field: &mut Vec<usize>, value: Option<Vec<usize>>| {
        if let Some(v) = value {
            *field = v;
        }
    };
    set(&mut config.contexts, args.contexts);
    set(&mut config.budget_fractions, args.budget_fractions);
    set(&mut config.tokens_per_cluster, args.tokens_per_cluster);
    set(&mut config.windows, args.windows);
    set(&mut config.window_clusters, args.window_clusters);
    set(&mut config.sinks, args.sinks);
    set(&mut config.iters, args.iters);
    if let Some(v) = args.inits {
        config.inits = v;
    }
    if let Some(v) = args.gqa {
        config.gqa = v;
    }
    if let Some(v) = args.masses {
        config.masses = v;
    }
    config.eval.positions = args.positions.unwrap_or(config.eval.positions);
    config.eval.decode = args.decode.unwrap_or(config.eval.decode);
    config.eval.passage_len = args.passage_len.unwrap_or(config.eval.passage_len);
    config.eval.dense_layers = args.model.dense_layers;
    config.eval.seed = args.seed;
    config.step_context = args.step_context.unwrap_or(config.step_context);
    config.reps = args.reps.unwrap_or(config.reps);
    // Refuse bad input before loading anything.
    config.validate()?;
    let (model, tokenizer) = load(&args.model.model)?;
    let tokens = read_text(&args.text, &tokenizer)?;
    let bar = progress_bar()?;
    let mut meta = run_meta(&args.model.model, &args.text, tokens.len(), &config.eval, args.quick)?;
    let run = run_sweep(&model, &tokenizer, &tokens, &config, &bar)?;
    bar.finish_and_clear();
    meta.seconds = started.elapsed().as_secs_f64();
    let report = SweepReport { meta, run };
    let files = write_sweep(&args.out, &report)?;
    println!("{}", sweep_tables(&report));
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    eprintln!("wrote {} in {:.1} s", names.join(", "), started.elapsed().as_secs_f64());
    Ok(())
}

fn ppl_command(args: PplArgs) -> Result<(), Box<dyn std::error::Error>> {
    let (model, tokenizer) = load(&args.model.model)?;
    let tokens = read_text(&args.text, &tokenizer)?;
    let mut methods = args.methods.clone();
    if !methods.contains(&Method::Dense) {
        methods.insert(0, Method::Dense);
    }
    let config = PplConfig {
        context: args.context,
        decode: args.decode,
        positions: args.positions,
        methods,
        budgets: args.budgets.clone(),
        dense_layers: args.model.dense_layers,
        seed: args.seed,
    };
    let bar = progress_bar()?;
    let records = perplexity(&model, &tokens, &config, &bar)?;
    bar.finish_and_clear();
    println!(
        "model {}, text {}: context {}, {} decoded tokens at each of {} positions, dense layers {}, seed {}\n",
        args.model.model.display(),
        args.text.display(),
        args.context,
        args.decode,
        args.positions,
        args.model.dense_layers,
        args.seed
    );
    println!("{}", ppl_table(&records));
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_string_pretty(&records)?)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn generate_command(args: GenerateArgs) -> Result<(), Box<dyn std::error::Error>> {
    let (model, tokenizer) = load(&args.model.model)?;
    let prompt = tokenizer.encode(&args.prompt)?;
    if prompt.is_empty() {
        return Err("the prompt is empty".into());
    }
    let max_context = (prompt.len() + args.max_tokens).max(args.budget);
    let select = SelectParams::new(args.method).budget(args.budget).max_context(max_context);
    let mut runner = model.runner(&select, args.model.dense_layers)?;
    let started = Instant::now();
    let (mut seq, hidden) = runner.prefill(&prompt)?;
    let h = model.config().hidden;
    let mut next = argmax(&model.logits(&hidden[(prompt.len() - 1) * h..]));
    let mut generated = Vec::new();
    let mut shown = 0;
    let mut out = std::io::stdout();
    print!("{}", args.prompt);
    while generated.len() < args.max_tokens && Some(next) != tokenizer.eos_id() {
        generated.push(next);
        // Decode everything generated so far and print what is new, so that characters
        // split over several tokens come out whole.
        let text = tokenizer.decode(&generated)?;
        if !text.ends_with('\u{FFFD}') {
            print!("{}", &text[shown..]);
            out.flush()?;
            shown = text.len();
        }
        runner.decode(&mut [(&mut seq, next)])?;
        next = argmax(runner.logits());
    }
    println!();
    let seconds = started.elapsed().as_secs_f64();
    eprintln!("{} tokens generated in {seconds:.1} s ({})", generated.len(), args.method);
    Ok(())
}

fn simulate_command(args: SimulateArgs) -> Result<(), Box<dyn std::error::Error>> {
    let trace_config = TraceConfig {
        context: args.context,
        steps: args.steps,
        head_dim: args.head_dim,
        n_q_heads: args.q_heads,
        n_kv_heads: args.kv_heads,
        topics: args.topics,
        seed: args.seed,
        ..TraceConfig::default()
    };
    let started = Instant::now();
    eprintln!("generating the synthetic trace ({} + {} tokens)...", args.context, args.steps);
    let trace = Trace::generate(&trace_config)?;
    let select = SelectParams::default().budget(args.budget).sink(args.sink).seed(args.seed);
    let config = SimConfig { select };
    // Fail on bad parameters before any long work.
    config.select.clone().validate()?;
    let variants: Vec<Variant> = Variant::all()
        .into_iter()
        .filter(|v| args.methods.is_empty() || args.methods.contains(&v.method))
        .collect();
    let mut reports = Vec::with_capacity(variants.len());
    for (i, variant) in variants.iter().enumerate() {
        eprintln!("[{}/{}] {} ...", i + 1, variants.len(), variant.label());
        let one = std::slice::from_ref(variant);
        reports.extend(match args.kv {
            KvType::F16 => simulate::<f16>(&trace, &config, one)?,
            KvType::F32 => simulate::<f32>(&trace, &config, one)?,
        });
    }
    println!("{}", table(&trace, &config, &reports));
    eprintln!("done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
