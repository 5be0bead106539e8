//! Selection parameters, validated once into [`ValidSelectParams`].

use std::fmt;
use std::str::FromStr;

use ckv_cluster::Init;
use ckv_core::ParamGuard;

use crate::SelectError;

/// A KV selection method. Every method gets the same budget, sink and tail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// Attend to every token (exact); ignores the budget.
    Dense,
    /// Exact top-k by `q · k`: the upper bound of any selection.
    Oracle,
    /// ClusterKV: rank clusters by `q · centroid`, take whole clusters up to the budget.
    ClusterKv,
    /// Quest: pages of tokens ranked by an upper bound of `q · k` from per-page min/max keys.
    Quest,
    /// StreamingLLM: the sink and the most recent tokens.
    StreamingLlm,
    /// H2O: heavy hitters by accumulated attention; evicted tokens never return.
    H2o,
}

impl Method {
    /// Every method, dense first.
    pub const ALL: [Method; 6] =
        [Method::Dense, Method::Oracle, Method::ClusterKv, Method::Quest, Method::StreamingLlm, Method::H2o];

    /// The method's name as the CLI spells it.
    pub fn name(self) -> &'static str {
        match self {
            Method::Dense => "dense",
            Method::Oracle => "oracle",
            Method::ClusterKv => "clusterkv",
            Method::Quest => "quest",
            Method::StreamingLlm => "streamingllm",
            Method::H2o => "h2o",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Method {
    type Err = SelectError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Method::ALL
            .into_iter()
            .find(|m| m.name() == s.to_ascii_lowercase())
            .ok_or_else(|| SelectError::UnknownMethod(s.to_owned()))
    }
}

/// How query heads that share a KV head (GQA) select.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum GqaPolicy {
    /// Each query head selects on its own (the paper's way).
    #[default]
    PerQueryHead,
    /// One selection per KV head from the group's summed scores; the KV is read once.
    PerKvHead,
}

impl GqaPolicy {
    /// The policy's name as the CLI spells it.
    pub fn name(self) -> &'static str {
        match self {
            GqaPolicy::PerQueryHead => "per-query-head",
            GqaPolicy::PerKvHead => "per-kv-head",
        }
    }

    /// Selections made per KV head whose group has `group` query heads.
    pub fn selections_per_group(self, group: usize) -> usize {
        match self {
            GqaPolicy::PerQueryHead => group,
            GqaPolicy::PerKvHead => 1,
        }
    }
}

impl fmt::Display for GqaPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for GqaPolicy {
    type Err = SelectError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [GqaPolicy::PerQueryHead, GqaPolicy::PerKvHead]
            .into_iter()
            .find(|p| p.name() == s.to_ascii_lowercase())
            .ok_or_else(|| SelectError::UnknownGqaPolicy(s.to_owned()))
    }
}

/// How many tokens one head attends to per step (DESIGN section 4). Sink, selected, tail
/// and current token all count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Budget {
    /// A fixed count `B` per step.
    Tokens(usize),
    /// Clusters (or tokens, for the oracle) in rank order until the estimated attention mass
    /// of the attended set reaches the share `p` of the estimated total, never more than `max`
    /// tokens. Only ClusterKV and the oracle take it (the oracle's mass is exact: top-p).
    Mass {
        /// The share of the attention mass to reach, in `(0, 1]`.
        p: f32,
        /// The cap: at most this many tokens per step.
        max: usize,
    },
}

impl Budget {
    /// The most tokens a step attends to: `B`, or the cap of a mass target.
    pub fn max_tokens(self) -> usize {
        match self {
            Budget::Tokens(b) | Budget::Mass { max: b, .. } => b,
        }
    }

    /// The mass target `p`, if this is a mass-targeted budget.
    pub fn mass(self) -> Option<f32> {
        match self {
            Budget::Tokens(_) => None,
            Budget::Mass { p, .. } => Some(p),
        }
    }
}

impl fmt::Display for Budget {
    /// `1024`, or `p0.9<=1024` for a mass target.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Budget::Tokens(b) => write!(f, "{b}"),
            Budget::Mass { p, max } => write!(f, "p{p}<={max}"),
        }
    }
}

/// Prompt tokens per cluster derived from the budget `B` when none is set:
/// `clamp(round(B / CLUSTERS_PER_BUDGET), MIN_TOKENS_PER_CLUSTER, MAX_TOKENS_PER_CLUSTER)`,
/// so that a step selects about `CLUSTERS_PER_BUDGET` clusters whatever the budget (from the
/// recorded sweep, README "The sweep": over the budgets up to 1/8 of 2k and 4k contexts, 8
/// tokens per cluster had the lowest mean gap of 8, 16, 32 and 80; at 8k, B = 1024, 16 beat
/// 32).
pub const CLUSTERS_PER_BUDGET: usize = 64;
/// The smallest derived cluster size.
pub const MIN_TOKENS_PER_CLUSTER: usize = 8;
/// The largest derived cluster size (the paper's 80).
pub const MAX_TOKENS_PER_CLUSTER: usize = 80;

/// Tokens per cluster the defaults give a budget of `budget` tokens.
pub fn default_tokens_per_cluster(budget: usize) -> usize {
    ((budget as f64 / CLUSTERS_PER_BUDGET as f64).round() as usize)
        .clamp(MIN_TOKENS_PER_CLUSTER, MAX_TOKENS_PER_CLUSTER)
}

/// Selection parameters (DESIGN section 4). Build with the setters, then
/// [`validate`](SelectParams::validate).
#[derive(Debug, Clone, PartialEq)]
pub struct SelectParams {
    method: Method,
    budget: usize,
    mass: Option<f32>,
    sink: usize,
    tokens_per_cluster: Option<usize>,
    init: Init,
    max_iters: usize,
    window: Option<usize>,
    window_clusters: Option<usize>,
    quest_page_size: usize,
    gqa: GqaPolicy,
    max_context: Option<usize>,
    seed: u64,
}

impl Default for SelectParams {
    fn default() -> Self {
        Self::new(Method::ClusterKv)
    }
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident: $ty:ty) => {
        $(#[$doc])*
        pub fn $name(mut self, $name: $ty) -> Self {
            self.$name = $name;
            self
        }
    };
}

impl SelectParams {
    /// Defaults of DESIGN section 4 for `method`: budget 1024, sink 16, tokens per cluster,
    /// window and window clusters derived from the budget, 20 k-means iterations, Quest
    /// pages of 16, seed 0.
    pub fn new(method: Method) -> Self {
        Self {
            method,
            budget: 1024,
            mass: None,
            sink: 16,
            tokens_per_cluster: None,
            init: Init::RandomRows,
            max_iters: 20,
            window: None,
            window_clusters: None,
            quest_page_size: 16,
            gqa: GqaPolicy::default(),
            max_context: None,
            seed: 0,
        }
    }

    setter!(
        /// The method.
        method: Method
    );
    /// A fixed budget `B`: KV entries one head attends to per step, sink, tail and current
    /// included ([`Budget::Tokens`]).
    pub fn budget(self, budget: usize) -> Self {
        self.budget_rule(Budget::Tokens(budget))
    }

    /// The budget rule: a fixed count or a mass target with a cap.
    pub fn budget_rule(mut self, budget: Budget) -> Self {
        self.budget = budget.max_tokens();
        self.mass = budget.mass();
        self
    }

    setter!(
        /// Sink length `s`.
        sink: usize
    );

    /// Prompt tokens per cluster: `C0 = ceil((P - s) / tokens_per_cluster)`; default
    /// [`default_tokens_per_cluster`] of the budget (of the cap, for a mass target).
    pub fn tokens_per_cluster(mut self, tokens_per_cluster: usize) -> Self {
        self.tokens_per_cluster = Some(tokens_per_cluster);
        self
    }
    setter!(
        /// k-means iterations at most.
        max_iters: usize
    );
    setter!(
        /// How k-means picks its initial centroids (seeded random rows, or k-means++).
        init: Init
    );
    setter!(
        /// The GQA policy.
        gqa: GqaPolicy
    );
    setter!(
        /// Tokens per Quest page.
        quest_page_size: usize
    );
    setter!(
        /// Base seed of every clustering.
        seed: u64
    );

    /// Tail length that triggers re-clustering; default `min(320, (B - s) / 2)`.
    pub fn window(mut self, window: usize) -> Self {
        self.window = Some(window);
        self
    }

    /// Clusters per window; default `max(1, round(4 * window / 320))`.
    pub fn window_clusters(mut self, window_clusters: usize) -> Self {
        self.window_clusters = Some(window_clusters);
        self
    }

    /// The longest context these parameters will see: longer contexts are rejected, and the
    /// decode pipeline reserves KV storage for it up front (no reallocation while decoding).
    /// When it fits the budget, every step is dense and the window needs no room in the budget.
    pub fn max_context(mut self, max_context: usize) -> Self {
        self.max_context = Some(max_context);
        self
    }
}

impl ParamGuard for SelectParams {
    type Checked = ValidSelectParams;
    type Error = SelectError;

    fn check_ref(&self) -> Result<(), SelectError> {
        self.clone().validate().map(drop)
    }

    fn validate(self) -> Result<ValidSelectParams, SelectError> {
        let bad = |name: &'static str, value: usize, expected: String| {
            SelectError::from(ckv_core::ParamError::new(name, value, expected))
        };
        if self.budget <= self.sink {
            return Err(bad(
                "budget",
                self.budget,
                format!("more than the sink ({}): room for the current token", self.sink),
            ));
        }
        let tokens_per_cluster = self.tokens_per_cluster.unwrap_or(default_tokens_per_cluster(self.budget));
        if tokens_per_cluster == 0 {
            return Err(bad("tokens_per_cluster", 0, "at least 1".into()));
        }
        if let Some(p) = self.mass {
            if !(p > 0.0 && p <= 1.0) {
                return Err(SelectError::from(ckv_core::ParamError::new(
                    "mass",
                    p,
                    "a share of the attention mass in (0, 1]",
                )));
            }
            if !matches!(self.method, Method::ClusterKv | Method::Oracle | Method::Dense) {
                return Err(SelectError::from(ckv_core::ParamError::new(
                    "method",
                    self.method,
                    "clusterkv or oracle with a mass-targeted budget",
                )));
            }
        }
        if self.quest_page_size == 0 {
            return Err(bad("quest_page_size", 0, "at least 1".into()));
        }
        let room = self.budget - self.sink;
        let window = self.window.unwrap_or((room / 2).clamp(1, 320));
        if window == 0 {
            return Err(bad("window", 0, "at least 1".into()));
        }
        let window_clusters =
            self.window_clusters.unwrap_or(((4 * window) as f64 / 320.0).round().max(1.0) as usize);
        if window_clusters == 0 || window_clusters > window {
            return Err(bad("window_clusters", window_clusters, format!("1 to the window ({window})")));
        }
        let fits = self.max_context.is_some_and(|m| m <= self.budget);
        if !fits && self.budget < self.sink + window + 1 {
            return Err(bad(
                "budget",
                self.budget,
                format!(
                    "at least sink + window + 1 = {} (sink {}, window {window}) unless the whole context fits the budget",
                    self.sink + window + 1,
                    self.sink
                ),
            ));
        }
        Ok(ValidSelectParams { params: self, tokens_per_cluster, window, window_clusters })
    }
}

/// Checked selection parameters; only [`SelectParams::validate`] makes them.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidSelectParams {
    params: SelectParams,
    tokens_per_cluster: usize,
    window: usize,
    window_clusters: usize,
}

impl ValidSelectParams {
    /// The settings these were validated from (derived values unresolved).
    pub fn params(&self) -> &SelectParams {
        &self.params
    }

    /// The method.
    pub fn method(&self) -> Method {
        self.params.method
    }
    /// Budget `B`: the fixed count, or the cap of a mass target.
    pub fn budget(&self) -> usize {
        self.params.budget
    }
    /// The budget rule.
    pub fn budget_rule(&self) -> Budget {
        match self.params.mass {
            None => Budget::Tokens(self.params.budget),
            Some(p) => Budget::Mass { p, max: self.params.budget },
        }
    }
    /// The mass target `p` of a mass-targeted budget.
    pub fn mass(&self) -> Option<f32> {
        self.params.mass
    }
    /// Sink length `s`.
    pub fn sink(&self) -> usize {
        self.params.sink
    }
    /// Prompt tokens per cluster (set, or derived from the budget).
    pub fn tokens_per_cluster(&self) -> usize {
        self.tokens_per_cluster
    }
    /// k-means iterations at most.
    pub fn max_iters(&self) -> usize {
        self.params.max_iters
    }
    /// k-means initialisation.
    pub fn init(&self) -> Init {
        self.params.init
    }
    /// Tail length that triggers re-clustering.
    pub fn window(&self) -> usize {
        self.window
    }
    /// Clusters per window.
    pub fn window_clusters(&self) -> usize {
        self.window_clusters
    }
    /// Tokens per Quest page.
    pub fn quest_page_size(&self) -> usize {
        self.params.quest_page_size
    }
    /// The GQA policy.
    pub fn gqa(&self) -> GqaPolicy {
        self.params.gqa
    }
    /// The longest context validated for, if one was given.
    pub fn max_context(&self) -> Option<usize> {
        self.params.max_context
    }
    /// Base seed.
    pub fn seed(&self) -> u64 {
        self.params.seed
    }
    /// The most ids one step attends to in a context of `context` tokens: all of them for
    /// [`Method::Dense`], at most the budget otherwise.
    pub fn max_attended(&self, context: usize) -> usize {
        match self.params.method {
            Method::Dense => context,
            _ => context.min(self.params.budget),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_derive_window_from_budget() {
        let p = SelectParams::default().validate().unwrap();
        assert_eq!((p.window(), p.window_clusters()), (320, 4));
        let small = SelectParams::default().budget(256).validate().unwrap();
        assert_eq!((small.window(), small.window_clusters()), (120, 2));
        let tiny = SelectParams::default().budget(20).validate().unwrap();
        assert_eq!((tiny.window(), tiny.window_clusters()), (2, 1));
    }

    #[test]
    fn cluster_size_follows_the_budget() {
        let tpc = |b: usize| SelectParams::default().budget(b).validate().unwrap().tokens_per_cluster();
        assert_eq!(tpc(128), MIN_TOKENS_PER_CLUSTER);
        assert_eq!(tpc(1024), 1024 / CLUSTERS_PER_BUDGET);
        assert_eq!(tpc(1 << 20), MAX_TOKENS_PER_CLUSTER);
        let set = SelectParams::default().budget(1024).tokens_per_cluster(5).validate().unwrap();
        assert_eq!(set.tokens_per_cluster(), 5);
        let mass = SelectParams::default().budget_rule(Budget::Mass { p: 0.9, max: 1024 });
        assert_eq!(mass.validate().unwrap().tokens_per_cluster(), tpc(1024));
    }

    #[test]
    fn mass_targets_are_checked() {
        let mass =
            |p: f32, m: Method| SelectParams::new(m).budget_rule(Budget::Mass { p, max: 512 }).validate();
        let ok = mass(0.9, Method::ClusterKv).unwrap();
        assert_eq!((ok.budget(), ok.mass()), (512, Some(0.9)));
        assert_eq!(ok.budget_rule(), Budget::Mass { p: 0.9, max: 512 });
        assert!(mass(1.0, Method::Oracle).is_ok());
        for p in [0.0, -0.5, 1.5, f32::NAN] {
            let err = mass(p, Method::ClusterKv).unwrap_err();
            assert!(matches!(err, SelectError::Param(ckv_core::ParamError { name: "mass", .. })), "{err}");
        }
        let err = mass(0.9, Method::Quest).unwrap_err();
        assert!(err.to_string().contains("method = quest"), "{err}");
        // A later fixed budget replaces the mass target.
        let fixed = SelectParams::default().budget_rule(Budget::Mass { p: 0.9, max: 512 }).budget(256);
        assert_eq!(fixed.validate().unwrap().budget_rule(), Budget::Tokens(256));
        assert_eq!(Budget::Mass { p: 0.9, max: 512 }.to_string(), "p0.9<=512");
    }

    #[test]
    fn budget_too_small_for_the_window_is_rejected() {
        let err = SelectParams::default().budget(200).window(320).validate().unwrap_err();
        assert!(matches!(err, SelectError::Param(ckv_core::ParamError { name: "budget", .. })), "{err}");
        assert!(err.to_string().contains("337"), "{err}");
        // The same budget is fine when the whole context fits it.
        SelectParams::default().budget(200).window(320).max_context(200).validate().unwrap();
        let below_sink = SelectParams::default().budget(16).validate().unwrap_err();
        assert!(below_sink.to_string().contains("budget = 16"), "{below_sink}");
        assert!(SelectParams::default().window_clusters(0).validate().is_err());
        assert!(SelectParams::default().window(3).window_clusters(4).validate().is_err());
        assert!(SelectParams::default().tokens_per_cluster(0).validate().is_err());
        assert!(SelectParams::default().quest_page_size(0).validate().is_err());
    }

    #[test]
    fn names_round_trip() {
        for m in Method::ALL {
            assert_eq!(m.name().parse::<Method>().unwrap(), m);
        }
        assert!("bogus".parse::<Method>().is_err());
        for p in [GqaPolicy::PerQueryHead, GqaPolicy::PerKvHead] {
            assert_eq!(p.to_string().parse::<GqaPolicy>().unwrap(), p);
        }
    }
}
