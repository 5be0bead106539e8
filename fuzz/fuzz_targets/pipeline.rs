//! Fuzz target `pipeline`: `ckv-attn`'s `LayerPipeline` as a state machine. A small
//! configuration (heads, head dimension, method, GQA policy, budget, sink, window, context
//! cap, offload with a host cap, f16 or f32 KV) and a sequence of operations built with
//! `arbitrary` (add a sequence, extend it with or without queries, finish its prefill, decode
//! a batch, snapshot, restore, remove, one-shot prefill), with ids of live, finished and removed
//! sequences and values that may be NaN, infinite, beyond f16 or huge.
//!
//! A model beside the pipeline holds what each sequence must hold (its state and its stored
//! K/V rows). Each call must fail exactly when the model says it must, with an error of one
//! of the kinds it predicts, and then change nothing observable (lengths, stored rows, host
//! bytes); a success must return attention over the stored rows: dense causal in prefill,
//! over the ids of each head's selection in decode (every token once the budget covers the
//! context), within a bound on f32 rounding computed from the inputs.

#![no_main]

use arbitrary::Arbitrary;
use ckv_attn::{AttnError, DecodeInput, LayerPipeline, OffloadParams, PipelineConfig, PrefillInput, SeqId};
use ckv_core::{Element, ParamGuard, ValueError};
use ckv_select::{GqaPolicy, Method, SelectError, SelectParams};
use half::f16;
use libfuzzer_sys::fuzz_target;

/// (Hq, Hkv) layouts.
const HEADS: [(usize, usize); 5] = [(1, 1), (2, 1), (4, 2), (2, 2), (3, 1)];

/// A value the generator can plant among uniform ones.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Special {
    Nan,
    Inf,
    NegInf,
    F16Max,
    BeyondF16,
    Huge,
    Subnormal,
    Any(f32),
}

/// Values: uniform in `[-1, 1)` times `2^scale` from a seed, with specials planted.
#[derive(Arbitrary, Debug, Clone)]
struct Values {
    seed: u64,
    scale: u8,
    specials: Vec<(u16, Special)>,
}

impl Values {
    fn make(&self, n: usize) -> Vec<f32> {
        let mut state = self.seed | 1;
        let factor = 2f32.powi(i32::from(self.scale % 20));
        let mut out: Vec<f32> = (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 23) as f32 - 1.0) * factor
            })
            .collect();
        for &(at, special) in self.specials.iter().take(4) {
            if n > 0 {
                out[at as usize % n] = match special {
                    Special::Nan => f32::NAN,
                    Special::Inf => f32::INFINITY,
                    Special::NegInf => f32::NEG_INFINITY,
                    Special::F16Max => 65504.0,
                    Special::BeyondF16 => -65520.0,
                    Special::Huge => f32::MAX,
                    Special::Subnormal => 1e-40,
                    Special::Any(x) => x,
                };
            }
        }
        out
    }
}

/// A pipeline configuration.
#[derive(Arbitrary, Debug)]
struct Config {
    heads: u8,
    half_d: u8,
    method: u8,
    per_kv_head: bool,
    budget: u8,
    sink: u8,
    window: Option<u8>,
    window_clusters: Option<u8>,
    tokens_per_cluster: Option<u8>,
    max_context: Option<u8>,
    offload: Option<(u8, Option<u16>)>,
    f32_kv: bool,
    dense_layer: bool,
    seed: u64,
}

/// One call.
#[derive(Arbitrary, Debug)]
enum Op {
    Add,
    Extend { seq: u8, n: u8, queries: bool, keys: Values, values: Values, q: Values, out_delta: i8 },
    Prefill { n: u8, queries: bool, keys: Values, values: Values, q: Values },
    Finish { seq: u8 },
    Decode { seqs: Vec<u8>, q: Values, k: Values, v: Values, out_delta: i8 },
    Snapshot { seq: u8 },
    Restore { snapshot: u8 },
    Remove { seq: u8 },
}

#[derive(Arbitrary, Debug)]
struct Input {
    config: Config,
    ops: Vec<Op>,
}

/// What a sequence must hold.
#[derive(Clone)]
struct SeqModel {
    live: bool,
    prefilling: bool,
    /// Stored rows per KV head (as the KV type rounds them), `[len, d]` each.
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
}

/// The pipeline, its model and the shape.
struct Harness<E: Element> {
    layer: LayerPipeline<E>,
    hq: usize,
    hkv: usize,
    d: usize,
    budget: usize,
    dense: bool,
    max_context: Option<usize>,
    host_capacity: Option<usize>,
    ids: Vec<SeqId>,
    seqs: Vec<SeqModel>,
    snapshots: Vec<(ckv_attn::PrefillSnapshot<E>, SeqModel)>,
}

/// `x` as the KV type `E` stores it.
fn stored<E: Element>(x: f32) -> f32 {
    E::from_f32(x).to_f32()
}

/// Whether every value fits the KV type `E` (finite, within its range).
fn fits<E: Element>(xs: &[f32]) -> bool {
    xs.iter().all(|x| !x.is_nan() && x.abs() <= E::MAX)
}

/// Checks `got` (`[d]`) against attention of `q` over the rows `ids` of `keys`/`values`
/// computed in f64, within a bound on the f32 rounding of the scores, the softmax and the sum.
fn check_attention(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    ids: &[usize],
    scale: f32,
    got: &[f32],
    what: &str,
) {
    let d = q.len();
    let row = |rows: &[f32], j: usize| rows[j * d..(j + 1) * d].to_vec();
    let (scale64, unit) = (f64::from(scale), f64::from(f32::EPSILON) / 2.0);
    let mut scores = Vec::new();
    let mut worst = 0.0f64;
    for &j in ids {
        let k = row(keys, j);
        scores.push(scale64 * q.iter().zip(&k).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum::<f64>());
        let magnitude =
            scale64 * q.iter().zip(&k).map(|(&a, &b)| (f64::from(a) * f64::from(b)).abs()).sum::<f64>();
        worst = worst.max(magnitude);
    }
    if worst > 1e38 || ids.is_empty() {
        // The f32 scores may overflow: only the length is checked.
        assert_eq!(got.len(), d);
        return;
    }
    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    let vmax = ids.iter().flat_map(|&j| row(values, j)).fold(0.0f64, |m, v| m.max(f64::from(v).abs()));
    let delta = (d as f64 + 4.0) * unit * worst * 1.01 + 8.0 * unit * max.abs();
    let n = ids.len() as f64;
    let tol = ((4.0 * delta).exp_m1() + (4.0 * n + d as f64 + 40.0) * unit) * vmax * 2.0 + 1e-37;
    for c in 0..d {
        let want: f64 =
            ids.iter().zip(&weights).map(|(&j, w)| w * f64::from(values[j * d + c])).sum::<f64>() / total;
        let err = (f64::from(got[c]) - want).abs();
        // Within the rounding bound of f32::MAX, f32 arithmetic may overflow to infinity.
        let overflow =
            got[c].is_infinite() && want.abs() + tol > f64::from(f32::MAX) && got[c] * want as f32 > 0.0;
        assert!(
            (got[c].is_finite() && err <= tol) || overflow || !tol.is_finite(),
            "{what}: component {c}: got {}, want {want} (tolerance {tol}, worst score {worst})",
            got[c]
        );
    }
}

impl<E: Element> Harness<E> {
    fn new_model(&self) -> SeqModel {
        SeqModel {
            live: true,
            prefilling: true,
            keys: vec![Vec::new(); self.hkv],
            values: vec![Vec::new(); self.hkv],
        }
    }

    fn len(&self, m: &SeqModel) -> usize {
        m.keys[0].len() / self.d
    }

    /// The sequence the byte `i` picks among those ever made.
    fn pick(&self, i: u8) -> Option<usize> {
        (!self.ids.is_empty()).then(|| i as usize % self.ids.len())
    }

    /// Every sequence's observable state against its model.
    fn check_all(&self, host_used: Option<usize>) {
        for (id, m) in self.ids.iter().zip(&self.seqs) {
            match self.layer.len(*id) {
                Ok(len) => {
                    assert!(m.live, "{id} removed but known");
                    assert_eq!(len, self.len(m), "{id} length");
                    for h in 0..self.hkv {
                        let kv = self.layer.kv(*id, h).expect("a live sequence has its heads");
                        let keys: Vec<f32> = kv.keys().iter().map(|x| x.to_f32()).collect();
                        let values: Vec<f32> = kv.values().iter().map(|x| x.to_f32()).collect();
                        assert!(keys == m.keys[h], "{id} head {h} keys");
                        assert!(values == m.values[h], "{id} head {h} values");
                    }
                }
                Err(AttnError::UnknownSequence(_)) => assert!(!m.live, "{id} live but unknown"),
                Err(other) => panic!("len({id}): {other}"),
            }
        }
        if let Some(used) = host_used {
            assert_eq!(self.layer.host_bytes_used(), Some(used), "host bytes changed");
        }
    }

    /// Host bytes the live sequences hold.
    fn host_used(&self) -> usize {
        self.seqs.iter().filter(|m| m.live).map(|m| self.len(m)).sum::<usize>() * self.token_bytes()
    }

    fn token_bytes(&self) -> usize {
        2 * self.hkv * self.d * size_of::<E>()
    }

    /// Whether `extra` more host bytes fit the cap.
    fn host_fits(&self, extra: usize) -> bool {
        self.host_capacity.is_none_or(|cap| self.host_used() + extra <= cap)
    }

    /// Appends token-major `[n, Hkv, d]` keys and values to `m`, rounded as stored.
    fn append(&self, m: &mut SeqModel, keys: &[f32], values: &[f32]) {
        let d = self.d;
        for (k, v) in keys.chunks_exact(self.hkv * d).zip(values.chunks_exact(self.hkv * d)) {
            for h in 0..self.hkv {
                m.keys[h].extend(k[h * d..(h + 1) * d].iter().map(|&x| stored::<E>(x)));
                m.values[h].extend(v[h * d..(h + 1) * d].iter().map(|&x| stored::<E>(x)));
            }
        }
    }

    /// Prefill outputs `[n, Hq, d]` of queries at positions `base..base + n` against `m`.
    fn check_prefill(&self, m: &SeqModel, base: usize, queries: &[f32], out: &[f32]) {
        let (d, g) = (self.d, self.hq / self.hkv);
        let scale = self.layer.config().scale();
        for (t, (q, o)) in queries.chunks_exact(self.hq * d).zip(out.chunks_exact(self.hq * d)).enumerate() {
            let ids: Vec<usize> = (0..=base + t).collect();
            for h in 0..self.hq {
                let kv = h / g;
                let what = format!("prefill token {} head {h}", base + t);
                check_attention(
                    &q[h * d..(h + 1) * d],
                    &m.keys[kv],
                    &m.values[kv],
                    &ids,
                    scale,
                    &o[h * d..(h + 1) * d],
                    &what,
                );
            }
        }
    }

    fn extend(
        &mut self,
        i: usize,
        n: usize,
        keys: &[f32],
        values: &[f32],
        queries: Option<&[f32]>,
        out_len: usize,
    ) {
        let (id, m) = (self.ids[i], self.seqs[i].clone());
        let used = self.layer.host_bytes_used();
        let mut out = vec![0.0f32; out_len];
        let result = self.layer.extend(
            id,
            PrefillInput { keys, values, queries },
            queries.map(|_| out.as_mut_slice()),
        );
        let bad_values = !fits::<E>(keys) || !fits::<E>(values) || queries.is_some_and(|q| !fits::<f32>(q));
        let bad_out = queries.is_some() && out_len != n * self.hq * self.d;
        let too_long = self.max_context.is_some_and(|c| self.len(&m) + n > c);
        let full = !self.host_fits(n * self.token_bytes());
        let expect_err = !m.live || !m.prefilling || bad_values || bad_out || too_long || full;
        match result {
            Ok(()) => {
                assert!(
                    !expect_err,
                    "extend of {id} succeeded: live {} prefilling {} values {bad_values} out {bad_out} long {too_long} full {full}",
                    m.live, m.prefilling
                );
                let mut m = m;
                let base = self.len(&m);
                self.append(&mut m, keys, values);
                if let Some(q) = queries {
                    self.check_prefill(&m, base, q, &out);
                }
                self.seqs[i] = m;
            }
            Err(err) => {
                let expected = match &err {
                    AttnError::UnknownSequence(_) => !m.live,
                    AttnError::PrefillClosed(_) => !m.prefilling,
                    AttnError::Value(ValueError::Shape { .. }) => bad_out,
                    AttnError::Value(_) => bad_values,
                    AttnError::Select(SelectError::ContextTooLong { .. }) => too_long,
                    AttnError::Cache(_) => full,
                    _ => false,
                };
                assert!(expected, "extend of {id}: unexpected {err}");
                self.check_all(used);
            }
        }
    }

    fn decode(&mut self, picks: &[usize], q: &[f32], k: &[f32], v: &[f32], out_delta: i8) {
        let (hq, hkv, d) = (self.hq, self.hkv, self.d);
        let batch: Vec<DecodeInput<'_>> = picks
            .iter()
            .enumerate()
            .map(|(b, &i)| DecodeInput {
                seq: self.ids[i],
                query: &q[b * hq * d..(b + 1) * hq * d],
                key: &k[b * hkv * d..(b + 1) * hkv * d],
                value: &v[b * hkv * d..(b + 1) * hkv * d],
            })
            .collect();
        let out_len = (batch.len() * hq * d).saturating_add_signed(isize::from(out_delta % 2));
        let mut out = vec![0.0f32; out_len];
        let used = self.layer.host_bytes_used();
        let result = self.layer.decode(&batch, &mut out);
        let mut distinct = picks.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        let unknown = picks.iter().any(|&i| !self.seqs[i].live);
        let prefilling = picks.iter().any(|&i| self.seqs[i].live && self.seqs[i].prefilling);
        let duplicate = distinct.len() < picks.len();
        let bad_values = !fits::<f32>(q) || !fits::<E>(k) || !fits::<E>(v);
        let bad_out = out_len != batch.len() * hq * d;
        let too_long = picks
            .iter()
            .any(|&i| self.seqs[i].live && self.max_context.is_some_and(|c| self.len(&self.seqs[i]) + 1 > c));
        let full = !self.host_fits(picks.len() * self.token_bytes());
        let expect_err = unknown || prefilling || duplicate || bad_values || bad_out || too_long || full;
        match result {
            Ok(()) => {
                assert!(
                    !expect_err,
                    "decode succeeded: unknown {unknown} prefilling {prefilling} duplicate {duplicate} values {bad_values} out {bad_out} long {too_long} full {full}"
                );
                let scale = self.layer.config().scale();
                for (b, &i) in picks.iter().enumerate() {
                    let mut m = self.seqs[i].clone();
                    self.append(
                        &mut m,
                        &k[b * hkv * d..(b + 1) * hkv * d],
                        &v[b * hkv * d..(b + 1) * hkv * d],
                    );
                    let len = self.len(&m);
                    let id = self.ids[i];
                    for h in 0..hq {
                        let selection =
                            self.layer.selection(id, h).expect("a decoded sequence has selections");
                        let ids: Vec<usize> = selection.iter().map(|&x| x as usize).collect();
                        assert!(
                            ids.windows(2).all(|w| w[0] < w[1]),
                            "{id} head {h}: selection {ids:?} not sorted"
                        );
                        assert!(
                            ids.last().is_none_or(|&x| x < len),
                            "{id} head {h}: selection {ids:?} past {len}"
                        );
                        if self.dense || len <= self.budget {
                            assert_eq!(
                                ids,
                                (0..len).collect::<Vec<_>>(),
                                "{id} head {h}: the budget covers the context"
                            );
                        } else {
                            assert!(
                                ids.len() <= self.budget,
                                "{id} head {h}: {} ids over the budget {}",
                                ids.len(),
                                self.budget
                            );
                        }
                        let kv = h / (hq / hkv);
                        let qh = &q[(b * hq + h) * d..(b * hq + h + 1) * d];
                        let got = &out[(b * hq + h) * d..(b * hq + h + 1) * d];
                        check_attention(
                            qh,
                            &m.keys[kv],
                            &m.values[kv],
                            &ids,
                            scale,
                            got,
                            &format!("decode {id} head {h}"),
                        );
                    }
                    self.seqs[i] = m;
                }
            }
            Err(err) => {
                let expected = match &err {
                    AttnError::UnknownSequence(_) => unknown,
                    AttnError::InPrefill(_) => prefilling,
                    AttnError::DuplicateSequence(_) => duplicate,
                    AttnError::Value(ValueError::Shape { .. }) => bad_out,
                    AttnError::Value(_) => bad_values,
                    AttnError::Select(SelectError::ContextTooLong { .. }) => too_long,
                    AttnError::Cache(_) => full,
                    _ => false,
                };
                assert!(expected, "decode: unexpected {err}");
                self.check_all(used);
            }
        }
    }

    fn run(&mut self, op: &Op) {
        let (hq, hkv, d) = (self.hq, self.hkv, self.d);
        match op {
            Op::Add => {
                let id = self.layer.add_sequence().expect("adding a sequence cannot fail");
                self.ids.push(id);
                let m = self.new_model();
                self.seqs.push(m);
            }
            Op::Extend { seq, n, queries, keys, values, q, out_delta } => {
                let Some(i) = self.pick(*seq) else { return };
                let n = usize::from(n % 9);
                // A length one row short now and then: a shape error.
                let short = usize::from(*out_delta == i8::MIN);
                let keys = keys.make((n * hkv * d).saturating_sub(short));
                let values = values.make(n * hkv * d);
                let q = queries.then(|| q.make(n * hq * d));
                let out_len = (n * hq * d).saturating_add_signed(isize::from(out_delta % 2));
                if keys.len() != n * hkv * d {
                    // The pipeline reads the row count from the keys: the values then mismatch.
                    let (id, used) = (self.ids[i], self.layer.host_bytes_used());
                    let result = self.layer.extend(
                        id,
                        PrefillInput { keys: &keys, values: &values, queries: None },
                        None,
                    );
                    assert!(
                        result.is_err(),
                        "extend of {id} with {} keys and {} values succeeded",
                        keys.len(),
                        values.len()
                    );
                    self.check_all(used);
                    return;
                }
                self.extend(i, n, &keys, &values, q.as_deref(), out_len);
            }
            Op::Prefill { n, queries, keys, values, q } => {
                let n = usize::from(n % 9);
                let (keys, values) = (keys.make(n * hkv * d), values.make(n * hkv * d));
                let q = queries.then(|| q.make(n * hq * d));
                let mut out = vec![0.0f32; n * hq * d];
                let used = self.layer.host_bytes_used();
                let result = self.layer.prefill(
                    PrefillInput { keys: &keys, values: &values, queries: q.as_deref() },
                    q.as_ref().map(|_| out.as_mut_slice()),
                );
                let bad =
                    !fits::<E>(&keys) || !fits::<E>(&values) || q.as_deref().is_some_and(|q| !fits::<f32>(q));
                let too_long = self.max_context.is_some_and(|c| n > c);
                let full = !self.host_fits(n * self.token_bytes());
                match result {
                    Ok(id) => {
                        assert!(
                            !(bad || too_long || full),
                            "prefill succeeded: values {bad} long {too_long} full {full}"
                        );
                        let mut m = self.new_model();
                        self.append(&mut m, &keys, &values);
                        if let Some(q) = &q {
                            self.check_prefill(&m, 0, q, &out);
                        }
                        m.prefilling = false;
                        self.ids.push(id);
                        self.seqs.push(m);
                    }
                    Err(err) => {
                        assert!(bad || too_long || full, "prefill: unexpected {err}");
                        self.check_all(used);
                    }
                }
            }
            Op::Finish { seq } => {
                let Some(i) = self.pick(*seq) else { return };
                let (id, m) = (self.ids[i], &self.seqs[i]);
                match self.layer.finish_prefill(id) {
                    Ok(()) => {
                        assert!(m.live && m.prefilling, "finish_prefill of {id} succeeded");
                        self.seqs[i].prefilling = false;
                    }
                    Err(AttnError::UnknownSequence(_)) => assert!(!m.live),
                    Err(AttnError::PrefillClosed(_)) => assert!(m.live && !m.prefilling),
                    Err(other) => panic!("finish_prefill of {id}: {other}"),
                }
            }
            Op::Decode { seqs, q, k, v, out_delta } => {
                if self.ids.is_empty() {
                    return;
                }
                let picks: Vec<usize> = seqs.iter().take(4).map(|&s| s as usize % self.ids.len()).collect();
                let b = picks.len();
                let (q, k, v) = (q.make(b * hq * d), k.make(b * hkv * d), v.make(b * hkv * d));
                self.decode(&picks, &q, &k, &v, *out_delta);
            }
            Op::Snapshot { seq } => {
                let Some(i) = self.pick(*seq) else { return };
                let (id, m) = (self.ids[i], &self.seqs[i]);
                match self.layer.snapshot(id) {
                    Ok(snapshot) => {
                        assert!(m.live && m.prefilling, "snapshot of {id} succeeded");
                        assert_eq!(snapshot.len(), self.len(m));
                        let m = m.clone();
                        self.snapshots.push((snapshot, m));
                    }
                    Err(AttnError::UnknownSequence(_)) => assert!(!m.live),
                    Err(AttnError::PrefillClosed(_)) => assert!(m.live && !m.prefilling),
                    Err(other) => panic!("snapshot of {id}: {other}"),
                }
            }
            Op::Restore { snapshot } => {
                if self.snapshots.is_empty() {
                    return;
                }
                let (snap, m) = &self.snapshots[*snapshot as usize % self.snapshots.len()];
                let used = self.layer.host_bytes_used();
                let too_long = self.max_context.is_some_and(|c| self.len(m) > c);
                let full = !self.host_fits(self.len(m) * self.token_bytes());
                match self.layer.restore(snap) {
                    Ok(id) => {
                        assert!(!too_long && !full, "restore succeeded: long {too_long} full {full}");
                        let mut m = m.clone();
                        m.live = true;
                        self.ids.push(id);
                        self.seqs.push(m);
                    }
                    Err(err) => {
                        assert!(too_long || full, "restore: unexpected {err}");
                        self.check_all(used);
                    }
                }
            }
            Op::Remove { seq } => {
                let Some(i) = self.pick(*seq) else { return };
                let id = self.ids[i];
                match self.layer.remove(id) {
                    Ok(()) => {
                        assert!(self.seqs[i].live, "removing {id} twice succeeded");
                        self.seqs[i].live = false;
                    }
                    Err(AttnError::UnknownSequence(_)) => assert!(!self.seqs[i].live),
                    Err(other) => panic!("remove of {id}: {other}"),
                }
            }
        }
        self.check_all(None);
        if self.host_capacity.is_some() {
            assert_eq!(self.layer.host_bytes_used(), Some(self.host_used()), "host bytes");
        }
    }
}

/// Builds the pipeline of `config` with KV type `E` and runs `ops` on it.
fn run<E: Element>(config: &Config, ops: &[Op]) {
    let (hq, hkv) = HEADS[config.heads as usize % HEADS.len()];
    let d = usize::from(config.half_d % 4) * 2 + 1;
    let method = Method::ALL[config.method as usize % Method::ALL.len()];
    let gqa = if config.per_kv_head { GqaPolicy::PerKvHead } else { GqaPolicy::PerQueryHead };
    let sink = usize::from(config.sink % 6);
    let budget = usize::from(config.budget % 48);
    let mut select = SelectParams::new(method).budget(budget).sink(sink).gqa(gqa).seed(config.seed);
    if let Some(w) = config.window {
        select = select.window(usize::from(w % 24));
    }
    if let Some(w) = config.window_clusters {
        select = select.window_clusters(usize::from(w % 6));
    }
    if let Some(t) = config.tokens_per_cluster {
        select = select.tokens_per_cluster(usize::from(t % 12));
    }
    let max_context = config.max_context.map(|c| usize::from(c % 64));
    if let Some(c) = max_context {
        select = select.max_context(c);
    }
    let mut pipeline = PipelineConfig::new(hq, hkv, d, select);
    if config.dense_layer {
        pipeline = pipeline.layer(0, 1);
    }
    let mut host_capacity = None;
    if let Some((reuse, cap)) = config.offload {
        let Ok(mut offload) = OffloadParams::new(usize::from(reuse % 4)) else { return };
        if let Some(cap) = cap {
            offload = offload.host_capacity(usize::from(cap));
            host_capacity = Some(usize::from(cap));
        }
        pipeline = pipeline.offload(offload);
    }
    // A refused configuration is a typed error; nothing more to run.
    let Ok(valid) = pipeline.validate() else { return };
    let dense = valid.select().method() == Method::Dense;
    let mut harness = Harness::<E> {
        layer: LayerPipeline::new(valid),
        hq,
        hkv,
        d,
        budget,
        dense,
        max_context,
        host_capacity,
        ids: Vec::new(),
        seqs: Vec::new(),
        snapshots: Vec::new(),
    };
    for op in ops.iter().take(24) {
        harness.run(op);
    }
}

fuzz_target!(|input: Input| {
    if input.config.f32_kv {
        run::<f32>(&input.config, &input.ops);
    } else {
        run::<f16>(&input.config, &input.ops);
    }
});
