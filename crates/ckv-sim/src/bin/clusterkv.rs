//! The `clusterkv` command line.

use std::process::ExitCode;
use std::time::Instant;

use ckv_select::{Method, SelectParams};
use ckv_sim::{SimConfig, Trace, TraceConfig, Variant, simulate, table};
use clap::{Parser, Subcommand, ValueEnum};
use half::f16;

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
    if let Some(threads) = cli.threads {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build_global()?;
    }
    match cli.command {
        Command::Simulate(args) => simulate_command(args),
    }
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
