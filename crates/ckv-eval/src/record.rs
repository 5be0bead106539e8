//! The records of an evaluation run (`clusterkv eval`): one per (task, method, budget,
//! context), with the run's metadata.

use serde::{Deserialize, Serialize};

/// What a record measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Long-context perplexity of teacher-forced book text; `score` is the perplexity
    /// (lower is better).
    Ppl,
    /// Copy retrieval: a passage placed deep in the context, repeated at the end after a
    /// cue; `score` is the exact-match accuracy of the greedy continuation per token: the
    /// share of the passage's tokens after the cue that greedy decoding reproduces, each
    /// predicted from the true tokens before it.
    Copy,
    /// Passkey retrieval: a 5-digit key in the text, asked for at the end; `score` is the
    /// share of keys the greedy continuation reproduces whole.
    Passkey,
    /// Attention fidelity against dense attention over the same KV; `score` is the
    /// attention-mass recall averaged over the selecting layers, per layer in `layers`.
    Fidelity,
}

impl Task {
    /// Every task, in report order.
    pub const ALL: [Task; 4] = [Task::Ppl, Task::Copy, Task::Passkey, Task::Fidelity];

    /// The name used in files and tables.
    pub fn name(self) -> &'static str {
        match self {
            Task::Ppl => "ppl",
            Task::Copy => "copy",
            Task::Passkey => "passkey",
            Task::Fidelity => "fidelity",
        }
    }

    /// Whether a higher score is better (all but perplexity).
    pub fn higher_is_better(self) -> bool {
        self != Task::Ppl
    }
}

impl std::str::FromStr for Task {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Task::ALL
            .into_iter()
            .find(|t| t.name() == s.to_ascii_lowercase())
            .ok_or_else(|| format!("unknown task {s:?}: expected one of ppl, copy, passkey, fidelity"))
    }
}

/// Attention fidelity of one layer, averaged over heads, steps and sequences.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LayerFidelity {
    /// The layer.
    pub layer: usize,
    /// Share of the exact top-|S| tokens inside the attended set S.
    pub topk_recall: f64,
    /// Share of the dense softmax mass inside S.
    pub mass_recall: f64,
    /// `|o - o_dense| / |o_dense|`.
    pub output_rel_error: f64,
}

/// One measurement: a method at a budget and context on one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    /// The task.
    pub task: Task,
    /// The method label (`dense`, `clusterkv`, `clusterkv/per-kv-head`, `quest`, ...).
    pub method: String,
    /// The token budget (dense ignores it); the cap of a mass target.
    pub budget: usize,
    /// The mass target `p` of a mass-targeted run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mass: Option<f32>,
    /// Mean tokens one query head attended to per decode step in the selecting layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attended: Option<f64>,
    /// Prompt tokens prefilled densely before the scored decode.
    pub context: usize,
    /// The task's score (see [`Task`]).
    pub score: f64,
    /// Dense attention's score on the same tokens.
    pub dense_score: f64,
    /// What the score averages over: predicted tokens for `ppl`, probes for `copy` and
    /// `passkey`, (step, query head, sequence) samples per layer for `fidelity`.
    pub n: usize,
    /// Mean negative log-likelihood of the scored tokens (`ppl`, `copy`, `passkey`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nll: Option<f64>,
    /// Dense attention's mean negative log-likelihood on the same tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dense_nll: Option<f64>,
    /// Per-layer figures (`fidelity` only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<LayerFidelity>,
}

/// What produced a run: enough to reproduce it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunMeta {
    /// The model file.
    pub model: String,
    /// Its sha256.
    pub model_sha256: String,
    /// The text file.
    pub text: String,
    /// Its sha256.
    pub text_sha256: String,
    /// Tokens in the text.
    pub text_tokens: usize,
    /// The git commit of the code (`unknown` outside a checkout).
    pub commit: String,
    /// Seed of clustering and of the probes' placement.
    pub seed: u64,
    /// Quick or full mode.
    pub mode: String,
    /// Leading layers that always attend densely.
    pub dense_layers: usize,
    /// Perplexity positions per context.
    pub positions: usize,
    /// Teacher-forced tokens per perplexity position.
    pub decode: usize,
    /// The command line.
    pub command: String,
    /// Seconds the run took.
    pub seconds: f64,
}

/// A whole run: metadata and every record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// How the run was made.
    pub meta: RunMeta,
    /// Every measurement.
    pub records: Vec<EvalRecord>,
}
