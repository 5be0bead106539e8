//! Seeded synthetic decode traces: clustered keys with RoPE applied, and queries that attend
//! mostly to a few clusters, so that which tokens a method selects matters.

use ckv_core::{rope, rope_inv_freq};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::SimError;

/// The shape and statistics of a synthetic trace.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceConfig {
    /// Tokens of the prompt.
    pub context: usize,
    /// Decode steps after the prompt.
    pub steps: usize,
    /// Head dimension (even, for RoPE pairs).
    pub head_dim: usize,
    /// Query heads.
    pub n_q_heads: usize,
    /// KV heads.
    pub n_kv_heads: usize,
    /// Topics (true clusters) per KV head.
    pub topics: usize,
    /// Topics each query head attends to at a step.
    pub active_topics: usize,
    /// Longest run of consecutive tokens on one topic; runs are 1 to this long, so topics
    /// interleave along the sequence.
    pub max_run: usize,
    /// Standard deviation of the per-coordinate noise of keys and queries.
    pub noise: f32,
    /// RoPE base (Llama 3 style: large, so low-frequency pairs carry meaning far away).
    pub rope_base: f32,
    /// Seed of everything.
    pub seed: u64,
}

impl Default for TraceConfig {
    fn default() -> Self {
        Self {
            context: 32768,
            steps: 16,
            head_dim: 128,
            n_q_heads: 8,
            n_kv_heads: 2,
            topics: 64,
            active_topics: 2,
            max_run: 24,
            noise: 0.5,
            rope_base: 500_000.0,
            seed: 0,
        }
    }
}

/// A generated trace; rows are token-major, as a model produces them.
#[derive(Debug, Clone)]
pub struct Trace {
    /// The configuration it was made from.
    pub config: TraceConfig,
    /// Keys after RoPE, `[context + steps, Hkv, d]`.
    pub keys: Vec<f32>,
    /// Values, `[context + steps, Hkv, d]`.
    pub values: Vec<f32>,
    /// Queries after RoPE of every decode step, `[steps, Hq, d]`.
    pub queries: Vec<f32>,
}

impl Trace {
    /// Generates the trace of `config`.
    pub fn generate(config: &TraceConfig) -> Result<Self, SimError> {
        let c = config;
        let check = |name: &'static str, ok: bool, expected: &'static str, value: usize| {
            if ok { Ok(()) } else { Err(SimError::from(ckv_core::ParamError::new(name, value, expected))) }
        };
        check(
            "head_dim",
            c.head_dim >= 2 && c.head_dim.is_multiple_of(2),
            "an even number >= 2",
            c.head_dim,
        )?;
        check("n_kv_heads", c.n_kv_heads >= 1, "at least 1", c.n_kv_heads)?;
        check(
            "n_q_heads",
            c.n_q_heads >= 1 && c.n_q_heads.is_multiple_of(c.n_kv_heads.max(1)),
            "a positive multiple of n_kv_heads",
            c.n_q_heads,
        )?;
        check("topics", c.topics >= 1, "at least 1", c.topics)?;
        check("active_topics", (1..=c.topics).contains(&c.active_topics), "1 to topics", c.active_topics)?;
        check("max_run", c.max_run >= 1, "at least 1", c.max_run)?;
        let (d, hkv, hq) = (c.head_dim, c.n_kv_heads, c.n_q_heads);
        let g = hq / hkv;
        let total = c.context + c.steps;
        let inv_freq = rope_inv_freq(c.rope_base, d);
        let mut rng = ChaCha8Rng::seed_from_u64(c.seed);
        // Topic centres live in the low-frequency half of the RoPE pairs (the last pairs),
        // where rotation is slow: they stay recognisable after RoPE across the context.
        let centres: Vec<Vec<f32>> = (0..hkv * c.topics)
            .map(|_| (0..d).map(|i| if i >= d / 2 { normal(&mut rng) } else { 0.0 }).collect())
            .collect();
        let mut topic_of = Vec::with_capacity(total);
        while topic_of.len() < total {
            let topic = rng.random_range(0..c.topics);
            let run = rng.random_range(1..=c.max_run);
            topic_of.extend(std::iter::repeat_n(topic, run));
        }
        topic_of.truncate(total);
        let mut keys = vec![0.0f32; total * hkv * d];
        let mut values = vec![0.0f32; total * hkv * d];
        for t in 0..total {
            for h in 0..hkv {
                let row = (t * hkv + h) * d;
                let centre = &centres[h * c.topics + topic_of[t]];
                for i in 0..d {
                    keys[row + i] = centre[i] + c.noise * normal(&mut rng);
                    values[row + i] = normal(&mut rng);
                }
                rope(&mut keys[row..row + d], t, &inv_freq);
            }
        }
        let mut queries = vec![0.0f32; c.steps * hq * d];
        for step in 0..c.steps {
            let t = c.context + step;
            for h in 0..hq {
                let row = (step * hq + h) * d;
                let q = &mut queries[row..row + d];
                for _ in 0..c.active_topics {
                    let centre = &centres[(h / g) * c.topics + rng.random_range(0..c.topics)];
                    for (x, y) in q.iter_mut().zip(centre) {
                        *x += y;
                    }
                }
                for x in q.iter_mut() {
                    *x += c.noise * normal(&mut rng);
                }
                rope(q, t, &inv_freq);
            }
        }
        Ok(Self { config: c.clone(), keys, values, queries })
    }

    /// Rows `[tokens, H, d]` of the first `tokens` tokens of `rows` (keys or values).
    pub fn prefix<'a>(&self, rows: &'a [f32], tokens: usize) -> &'a [f32] {
        &rows[..tokens * self.config.n_kv_heads * self.config.head_dim]
    }

    /// The `[Hkv, d]` rows of token `t` of `rows` (keys or values).
    pub fn token<'a>(&self, rows: &'a [f32], t: usize) -> &'a [f32] {
        let width = self.config.n_kv_heads * self.config.head_dim;
        &rows[t * width..(t + 1) * width]
    }

    /// The `[Hq, d]` query rows of decode step `step`.
    pub fn query(&self, step: usize) -> &[f32] {
        let width = self.config.n_q_heads * self.config.head_dim;
        &self.queries[step * width..(step + 1) * width]
    }
}

/// A standard normal sample (Box-Muller).
fn normal(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f32 = rng.random::<f32>().max(f32::MIN_POSITIVE);
    let u2: f32 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_and_shaped() {
        let config = TraceConfig { context: 100, steps: 3, head_dim: 8, n_q_heads: 4, ..Default::default() };
        let a = Trace::generate(&config).unwrap();
        let b = Trace::generate(&config).unwrap();
        assert_eq!(a.keys, b.keys);
        assert_eq!(a.queries, b.queries);
        assert_eq!(a.keys.len(), 103 * 2 * 8);
        assert_eq!(a.query(2).len(), 4 * 8);
        let c = Trace::generate(&TraceConfig { seed: 1, ..config.clone() }).unwrap();
        assert_ne!(a.keys, c.keys);
        assert!(Trace::generate(&TraceConfig { head_dim: 7, ..config }).is_err());
    }
}
