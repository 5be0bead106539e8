//! Selector-level behaviour of every method: the budget rule and region invariants, the
//! ranking rules of ClusterKV and the baselines, determinism across rayon pools, typed
//! errors (DESIGN sections 4 and 5).

use std::cmp::Ordering;
use std::collections::HashSet;

use ckv_core::{ParamGuard, dot};
use ckv_select::{
    Budget, GqaPolicy, Growth, Method, Regions, SelectError, SelectParams, Selector, StepCtx,
    ValidSelectParams, new_selector, select_group, select_step,
};
use proptest::prelude::*;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

const POLICIES: [GqaPolicy; 2] = [GqaPolicy::PerQueryHead, GqaPolicy::PerKvHead];

/// `n` values uniform in [-1, 1).
fn uniform(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect()
}

/// One selection scenario: a prompt, some window growths, a tail, a group of queries.
#[derive(Debug, Clone)]
struct Scenario {
    d: usize,
    sink: usize,
    window: usize,
    window_clusters: usize,
    budget: usize,
    tokens_per_cluster: usize,
    page_size: usize,
    prompt: usize,
    windows: usize,
    tail: usize,
    n_queries: usize,
    /// Keys on a coarse grid ({-1, -0.5, 0, 0.5, 1}): many tied scores and zero keys.
    coarse: bool,
    seed: u64,
}

impl Scenario {
    /// The clustered end `c` after the prompt and the window growths.
    fn clustered_end(&self) -> usize {
        self.prompt.max(self.sink) + self.windows * self.window
    }

    /// The current position `t`. A short prompt (below the sink) without window growth
    /// puts `t` anywhere in `[P, s + window)`, so that `t < s` is covered too.
    fn current(&self) -> usize {
        if self.windows == 0 && self.prompt < self.sink {
            self.prompt + self.tail
        } else {
            self.clustered_end() + self.tail
        }
    }

    fn params(&self, method: Method, gqa: GqaPolicy) -> ValidSelectParams {
        self.params_with(method, gqa, Budget::Tokens(self.budget))
    }

    fn params_with(&self, method: Method, gqa: GqaPolicy, budget: Budget) -> ValidSelectParams {
        SelectParams::new(method)
            .budget_rule(budget)
            .sink(self.sink)
            .window(self.window)
            .window_clusters(self.window_clusters)
            .tokens_per_cluster(self.tokens_per_cluster)
            .quest_page_size(self.page_size)
            .max_iters(8)
            .gqa(gqa)
            .seed(self.seed)
            .validate()
            .unwrap()
    }

    fn keys(&self) -> Vec<f32> {
        let keys = uniform((self.current() + 1) * self.d, self.seed ^ 0x5eed);
        if self.coarse { keys.into_iter().map(|x| (x * 2.0).round() / 2.0).collect() } else { keys }
    }

    fn queries(&self) -> Vec<f32> {
        uniform(self.n_queries * self.d, self.seed ^ 0x9e37)
    }

    fn regions(&self) -> Regions {
        Regions::new(self.sink as u32, self.clustered_end() as u32, self.current() as u32).unwrap()
    }

    /// A selector of `params` grown as the pipeline would grow it: the prompt's `[s, P)`,
    /// then `windows` full windows.
    fn selector(&self, params: &ValidSelectParams, keys: &[f32]) -> Box<dyn Selector<f32>> {
        let mut selector = new_selector::<f32>(params, self.seed);
        let s = self.sink as u32;
        let mut c = self.prompt.max(self.sink) as u32;
        selector.grow(keys, self.d, s..c, Growth::Prompt).unwrap();
        for _ in 0..self.windows {
            let end = c + self.window as u32;
            selector.grow(keys, self.d, c..end, Growth::Window).unwrap();
            c = end;
        }
        selector
    }
}

prop_compose! {
    fn scenario(max_prompt: usize)(
        d in 1usize..=17,
        sink in 0usize..=24,
        window in 1usize..=48,
        extra_budget in 0usize..=300,
        tokens_per_cluster in 2usize..=100,
        page_size in 1usize..=24,
        prompt in 0usize..=max_prompt,
        windows in 0usize..=3,
        tail_frac in 0.0f64..1.0,
        wc_frac in 0.0f64..1.0,
        n_queries in 1usize..=4,
        coarse in any::<bool>(),
        seed in any::<u64>(),
    ) -> Scenario {
        let window_clusters = 1 + ((wc_frac * window.min(4) as f64) as usize).min(window.min(4) - 1);
        Scenario {
            d,
            sink,
            window,
            window_clusters,
            budget: sink + window + 1 + extra_budget,
            tokens_per_cluster,
            page_size,
            prompt,
            windows,
            tail: ((tail_frac * window as f64) as usize).min(window - 1),
            n_queries,
            coarse,
            seed,
        }
    }
}

/// Runs `select_group` and returns one selection per query head (or one per group).
fn select_all(
    selector: &mut dyn Selector<f32>,
    params: &ValidSelectParams,
    step: &StepCtx<'_, f32>,
) -> Vec<Vec<u32>> {
    let mut outs = vec![Vec::new(); params.gqa().selections_per_group(step.n_queries)];
    select_group(selector, params, step, &mut outs).unwrap();
    outs
}

/// The query rows that drove selection `j` of a group (summed as the library sums them).
fn summed_query(queries: &[f32], d: usize, gqa: GqaPolicy, j: usize) -> Vec<f32> {
    let rows = match gqa {
        GqaPolicy::PerQueryHead => &queries[j * d..(j + 1) * d],
        GqaPolicy::PerKvHead => queries,
    };
    let mut sum = vec![0.0f32; d];
    for q in rows.chunks_exact(d) {
        for (s, x) in sum.iter_mut().zip(q) {
            *s += x;
        }
    }
    sum
}

/// Centroid `c` of `index` as a step scores it: rounded to f16.
fn centroid_f16(index: &ckv_index::ClusterIndex, c: usize) -> Vec<f32> {
    let d = index.d();
    index.centroids_f16()[c * d..(c + 1) * d].iter().map(|x| x.to_f32()).collect()
}

/// Per query row (or the whole group under PerKvHead), the softmax shares (f64) that a
/// selection's attended `ids` hold of the whole context `[0, t]`, averaged over the rows.
fn exact_mass(
    queries: &[f32],
    keys: &[f32],
    d: usize,
    scale: f32,
    rows: std::ops::Range<usize>,
    ids: &[u32],
    t: usize,
) -> f64 {
    let n = rows.len() as f64;
    rows.map(|r| {
        let q = &queries[r * d..(r + 1) * d];
        let s: Vec<f64> = (0..=t).map(|i| f64::from(dot(q, &keys[i * d..(i + 1) * d]) * scale)).collect();
        let top = s.iter().copied().fold(f64::MIN, f64::max);
        let total: f64 = s.iter().map(|x| (x - top).exp()).sum();
        ids.iter().map(|&i| (s[i as usize] - top).exp()).sum::<f64>() / total
    })
    .sum::<f64>()
        / n
}

/// The ranking order: score descending, ties to the lower id.
fn rank_cmp(a: (f32, usize), b: (f32, usize)) -> Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

/// Checks that `taken[u]` of `sizes[u]` members of each ranked unit form "whole units in
/// rank order, the last one cut": at most one partial unit, every full unit ranked before
/// it, every untouched unit after it. Units of size 0 are ignored.
fn check_whole_units(scores: &[f32], sizes: &[usize], taken: &[usize]) -> Result<(), String> {
    let live: Vec<usize> = (0..scores.len()).filter(|&u| sizes[u] > 0).collect();
    let partial: Vec<usize> = live.iter().copied().filter(|&u| taken[u] > 0 && taken[u] < sizes[u]).collect();
    if partial.len() > 1 {
        return Err(format!("{} units partially taken: {partial:?}", partial.len()));
    }
    let full: Vec<usize> = live.iter().copied().filter(|&u| taken[u] == sizes[u]).collect();
    let none: Vec<usize> = live.iter().copied().filter(|&u| taken[u] == 0).collect();
    let key = |u: usize| (scores[u], u);
    // Every taken (full or partial) unit ranks before every untaken one; full before partial.
    let worst_full = full.iter().copied().max_by(|&a, &b| rank_cmp(key(a), key(b)));
    let best_none = none.iter().copied().min_by(|&a, &b| rank_cmp(key(a), key(b)));
    if let (Some(f), Some(n)) = (worst_full, best_none)
        && rank_cmp(key(f), key(n)) != Ordering::Less
    {
        return Err(format!(
            "full unit {f} (score {}) ranks after untaken unit {n} (score {})",
            scores[f], scores[n]
        ));
    }
    if let Some(&p) = partial.first() {
        if let Some(f) = worst_full
            && rank_cmp(key(f), key(p)) != Ordering::Less
        {
            return Err(format!(
                "full unit {f} (score {}) ranks after partial {p} (score {})",
                scores[f], scores[p]
            ));
        }
        if let Some(n) = best_none
            && rank_cmp(key(p), key(n)) != Ordering::Less
        {
            return Err(format!(
                "partial unit {p} (score {}) ranks after untaken {n} (score {})",
                scores[p], scores[n]
            ));
        }
    }
    Ok(())
}

/// The selected ids inside the clustered region `[s, c)`.
fn clustered_part(ids: &[u32], regions: &Regions) -> Vec<u32> {
    let r = regions.clustered();
    ids.iter().copied().filter(|id| r.contains(id)).collect()
}

/// Region invariants of one selection; returns the first violation.
fn check_selection(ids: &[u32], regions: &Regions, expected_len: usize) -> Result<(), String> {
    let t = regions.current();
    if ids.windows(2).any(|w| w[0] >= w[1]) {
        return Err("ids not strictly ascending".into());
    }
    if ids.iter().any(|&id| id > t) {
        return Err(format!("an id beyond the current token {t}"));
    }
    if ids.len() != expected_len {
        return Err(format!("{} ids, expected {expected_len}", ids.len()));
    }
    let set: HashSet<u32> = ids.iter().copied().collect();
    for id in regions.sink().chain(regions.tail()).chain([t]) {
        if !set.contains(&id) {
            return Err(format!("id {id} of the sink, tail or current token is missing"));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Criterion 1: sorted, unique, in [0, t], sink/tail/current present, exactly
    /// `min(B, t + 1)` ids (Dense: `t + 1`), for every method and both GQA policies.
    #[test]
    fn selections_obey_the_region_invariants(sc in scenario(2600)) {
        let keys = sc.keys();
        let queries = sc.queries();
        let regions = sc.regions();
        let t = regions.current() as usize;
        for method in Method::ALL {
            for gqa in POLICIES {
                let params = sc.params(method, gqa);
                let mut selector = sc.selector(&params, &keys);
                let step = StepCtx { queries: &queries, n_queries: sc.n_queries, keys: &keys, d: sc.d, scale: 0.125, regions };
                let outs = select_all(selector.as_mut(), &params, &step);
                prop_assert_eq!(outs.len(), gqa.selections_per_group(sc.n_queries));
                let expected = if method == Method::Dense { t + 1 } else { sc.budget.min(t + 1) };
                for ids in &outs {
                    if let Err(e) = check_selection(ids, &regions, expected) {
                        prop_assert!(false, "{} {}: {}", method, gqa, e);
                    }
                }
                // The same step through select_step with the whole group gives the same
                // count (the budget rule does not depend on the group size).
                let mut one = Vec::new();
                select_step(selector.as_mut(), &params, &step, &mut one).unwrap();
                if let Err(e) = check_selection(&one, &regions, expected) {
                    prop_assert!(false, "{} select_step: {}", method, e);
                }
            }
        }
    }

    /// Criterion 2: ClusterKV takes whole clusters in descending score order (ties to the
    /// lower id), only the last one cut (to its first members), exactly the budgeted count.
    #[test]
    fn clusterkv_takes_whole_clusters_in_rank_order(sc in scenario(2000)) {
        let keys = sc.keys();
        let queries = sc.queries();
        let regions = sc.regions();
        for gqa in POLICIES {
            let params = sc.params(Method::ClusterKv, gqa);
            let mut selector = sc.selector(&params, &keys);
            let step = StepCtx { queries: &queries, n_queries: sc.n_queries, keys: &keys, d: sc.d, scale: 0.125, regions };
            let outs = select_all(selector.as_mut(), &params, &step);
            let Some(index) = selector.index() else {
                prop_assert!(regions.clustered().is_empty(), "no index over a non-empty clustered region");
                continue;
            };
            prop_assert_eq!(index.n_tokens(), regions.clustered().len());
            let count = regions.selected_count(sc.budget);
            for (j, ids) in outs.iter().enumerate() {
                let chosen: HashSet<u32> = clustered_part(ids, &regions).into_iter().collect();
                prop_assert_eq!(chosen.len(), count);
                let q = summed_query(&queries, sc.d, gqa, j);
                let scores: Vec<f32> = (0..index.n_clusters()).map(|c| dot(&q, &centroid_f16(index, c))).collect();
                let sizes: Vec<usize> = (0..index.n_clusters()).map(|c| index.members_of(c).len()).collect();
                let taken: Vec<usize> = (0..index.n_clusters())
                    .map(|c| index.members_of(c).iter().filter(|m| chosen.contains(m)).count())
                    .collect();
                prop_assert_eq!(taken.iter().sum::<usize>(), count, "selected ids outside the index");
                if let Err(e) = check_whole_units(&scores, &sizes, &taken) {
                    prop_assert!(false, "{}: {}", gqa, e);
                }
                // The cut cluster contributes its first (lowest) members.
                for (c, &k) in taken.iter().enumerate() {
                    let members = index.members_of(c);
                    if k > 0 && k < members.len() {
                        prop_assert!(members[..k].iter().all(|m| chosen.contains(m)), "cluster {} not cut to a prefix", c);
                    }
                }
            }
        }
    }

    /// Under PerQueryHead every method, scoring the group's rows in one pass where it can,
    /// selects for each row exactly what that row selects alone.
    #[test]
    fn one_pass_group_equals_each_row_alone(sc in scenario(2000)) {
        let keys = sc.keys();
        let queries = sc.queries();
        let regions = sc.regions();
        for method in Method::ALL {
            let params = sc.params(method, GqaPolicy::PerQueryHead);
            let mut selector = sc.selector(&params, &keys);
            let step = StepCtx { queries: &queries, n_queries: sc.n_queries, keys: &keys, d: sc.d, scale: 0.125, regions };
            let outs = select_all(selector.as_mut(), &params, &step);
            for (r, ids) in outs.iter().enumerate() {
                let mut alone = Vec::new();
                select_step(selector.as_mut(), &params, &step.row(r), &mut alone).unwrap();
                prop_assert_eq!(ids, &alone, "{} row {}", method, r);
            }
        }
    }

    /// A mass target takes a prefix of what the fixed budget at its cap takes, growing with
    /// `p`; the oracle's top-p reaches `p` of the exact mass (unless capped) with no token to
    /// spare.
    #[test]
    fn mass_targets_take_ranked_prefixes(sc in scenario(1500), p1 in 0.05f32..1.0, dp in 0.0f32..0.5) {
        let keys = sc.keys();
        let queries = sc.queries();
        let regions = sc.regions();
        let p2 = (p1 + dp).min(1.0);
        let t = regions.current() as usize;
        let scale = 1.0 / (sc.d as f32).sqrt();
        for method in [Method::ClusterKv, Method::Oracle] {
            for gqa in POLICIES {
                let fixed = sc.params(method, gqa);
                let step = StepCtx { queries: &queries, n_queries: sc.n_queries, keys: &keys, d: sc.d, scale, regions };
                let full = select_all(sc.selector(&fixed, &keys).as_mut(), &fixed, &step);
                let at = |p: f32| {
                    let params = sc.params_with(method, gqa, Budget::Mass { p, max: sc.budget });
                    select_all(sc.selector(&params, &keys).as_mut(), &params, &step)
                };
                let (low, high) = (at(p1), at(p2));
                let cap = regions.selected_count(sc.budget);
                for j in 0..full.len() {
                    let (f, a, b) = (&full[j], &low[j], &high[j]);
                    check_selection(b, &regions, b.len()).map_err(TestCaseError::fail)?;
                    let part = |ids: &[u32]| clustered_part(ids, &regions).into_iter().collect::<HashSet<u32>>();
                    let (f, a, b) = (part(f), part(a), part(b));
                    prop_assert!(b.len() <= cap, "{} {}: {} chosen over the cap {}", method, gqa, b.len(), cap);
                    prop_assert!(a.is_subset(&b), "{} {}: p {} not inside p {}", method, gqa, p1, p2);
                    // A prefix of the fixed budget's ranked units, cut alike at the cap.
                    prop_assert!(b.is_subset(&f), "{} {}: outside the fixed selection", method, gqa);
                    if method == Method::Oracle {
                        let rows = match gqa { GqaPolicy::PerQueryHead => j..j + 1, GqaPolicy::PerKvHead => 0..sc.n_queries };
                        let ids = &high[j];
                        let mass = exact_mass(&queries, &keys, sc.d, scale, rows.clone(), ids, t);
                        prop_assert!(b.len() == cap || mass >= f64::from(p2) - 1e-3, "top-p mass {} below {}", mass, p2);
                        // Without its lowest-ranked chosen token the set falls short.
                        let q = summed_query(&queries, sc.d, gqa, j);
                        if let Some(&last) = b.iter().min_by(|&&x, &&y| {
                            let sx = dot(&q, &keys[x as usize * sc.d..(x as usize + 1) * sc.d]);
                            let sy = dot(&q, &keys[y as usize * sc.d..(y as usize + 1) * sc.d]);
                            sx.total_cmp(&sy).then(y.cmp(&x))
                        }) {
                            let fewer: Vec<u32> = ids.iter().copied().filter(|&i| i != last).collect();
                            let short = exact_mass(&queries, &keys, sc.d, scale, rows, &fewer, t);
                            prop_assert!(short < f64::from(p2) + 1e-3, "token {} was not needed: {} without it", last, short);
                        }
                    }
                }
            }
        }
    }

    /// Criterion 3a: Oracle picks exactly the top `count` clustered tokens by exact `q · k`
    /// (ties to the lower id); StreamingLLM picks the most recent clustered tokens.
    #[test]
    fn oracle_and_streaming_pick_the_documented_tokens(sc in scenario(2600)) {
        let keys = sc.keys();
        let queries = sc.queries();
        let regions = sc.regions();
        let count = regions.selected_count(sc.budget);
        let clustered = regions.clustered();
        for gqa in POLICIES {
            let params = sc.params(Method::Oracle, gqa);
            let mut selector = sc.selector(&params, &keys);
            let step = StepCtx { queries: &queries, n_queries: sc.n_queries, keys: &keys, d: sc.d, scale: 0.125, regions };
            for (j, ids) in select_all(selector.as_mut(), &params, &step).iter().enumerate() {
                let q = summed_query(&queries, sc.d, gqa, j);
                let mut ranked: Vec<(f32, usize)> = clustered
                    .clone()
                    .map(|id| (dot(&q, &keys[id as usize * sc.d..(id as usize + 1) * sc.d]), id as usize))
                    .collect();
                ranked.sort_by(|&a, &b| rank_cmp(a, b));
                let mut want: Vec<u32> = ranked[..count].iter().map(|&(_, id)| id as u32).collect();
                want.sort_unstable();
                prop_assert_eq!(clustered_part(ids, &regions), want, "oracle under {}", gqa);
            }

            let params = sc.params(Method::StreamingLlm, gqa);
            let mut selector = sc.selector(&params, &keys);
            for ids in select_all(selector.as_mut(), &params, &step) {
                let want: Vec<u32> = (clustered.end - count as u32..clustered.end).collect();
                prop_assert_eq!(clustered_part(&ids, &regions), want, "streamingllm under {}", gqa);
                // With the tail and the current token, StreamingLLM is the sink plus the most
                // recent tokens: everything from its first non-sink id on is attended.
                let recent: Vec<u32> = ids.iter().copied().filter(|&id| id >= regions.sink().end).collect();
                if let Some(&first) = recent.first() {
                    prop_assert_eq!(recent, (first..=regions.current()).collect::<Vec<_>>());
                }
            }
        }
    }

    /// Criterion 3b: Quest takes whole pages of `quest_page_size` tokens aligned at `s`
    /// (page boundaries survive window growths), ranked by its upper bound, the last one cut.
    #[test]
    fn quest_takes_whole_aligned_pages(sc in scenario(2000)) {
        let keys = sc.keys();
        let queries = sc.queries();
        let regions = sc.regions();
        let count = regions.selected_count(sc.budget);
        let clustered = regions.clustered();
        let (d, ps) = (sc.d, sc.page_size as u32);
        let pages: Vec<std::ops::Range<u32>> = (clustered.start..clustered.end)
            .step_by(sc.page_size)
            .map(|p| p..(p + ps).min(clustered.end))
            .collect();
        for gqa in POLICIES {
            let params = sc.params(Method::Quest, gqa);
            let mut selector = sc.selector(&params, &keys);
            let step = StepCtx { queries: &queries, n_queries: sc.n_queries, keys: &keys, d, scale: 0.125, regions };
            for (j, ids) in select_all(selector.as_mut(), &params, &step).iter().enumerate() {
                let rows = match gqa {
                    GqaPolicy::PerQueryHead => &queries[j * d..(j + 1) * d],
                    GqaPolicy::PerKvHead => &queries[..],
                };
                let chosen: HashSet<u32> = clustered_part(ids, &regions).into_iter().collect();
                prop_assert_eq!(chosen.len(), count);
                let mut scores = Vec::new();
                let mut sizes = Vec::new();
                let mut taken = Vec::new();
                for page in &pages {
                    let (mut mins, mut maxs) = (vec![f32::INFINITY; d], vec![f32::NEG_INFINITY; d]);
                    for t in page.clone() {
                        let key = &keys[t as usize * d..(t as usize + 1) * d];
                        for ((mn, mx), &k) in mins.iter_mut().zip(&mut maxs).zip(key) {
                            *mn = mn.min(k);
                            *mx = mx.max(k);
                        }
                    }
                    let score: f32 = rows
                        .chunks_exact(d)
                        .map(|q| {
                            q.iter()
                                .zip(mins.iter().zip(&maxs))
                                .map(|(&qi, (&mn, &mx))| (qi * mx).max(qi * mn))
                                .sum::<f32>()
                        })
                        .sum();
                    scores.push(score);
                    sizes.push(page.len());
                    let k = page.clone().filter(|id| chosen.contains(id)).count();
                    if k > 0 && k < page.len() {
                        prop_assert!(page.clone().take(k).all(|id| chosen.contains(&id)), "page {:?} not cut to a prefix", page);
                    }
                    taken.push(k);
                }
                if let Err(e) = check_whole_units(&scores, &sizes, &taken) {
                    prop_assert!(false, "quest {}: {} (pages of {} from {})", gqa, e, ps, clustered.start);
                }
            }
        }
    }
}

/// Criterion 3c: H2O never attends again to a token it dropped, keeps the heavy hitters, and
/// still fills the budget exactly, over steps with a growing tail and window growths.
/// Early in a sequence (`t < s`) the clustered region is empty and lies past the keys; a
/// mass target chooses nothing there and attends the cut sink and the current token.
#[test]
fn a_mass_target_before_the_sink_fills_attends_sink_and_current() {
    let sc = Scenario {
        d: 1,
        sink: 15,
        window: 1,
        window_clusters: 1,
        budget: 17,
        tokens_per_cluster: 2,
        page_size: 1,
        prompt: 3,
        windows: 0,
        tail: 0,
        n_queries: 2,
        coarse: false,
        seed: 0,
    };
    let (keys, queries, regions) = (sc.keys(), sc.queries(), sc.regions());
    assert_eq!(keys.len(), 4, "keys of positions 0..=3 only");
    for method in [Method::ClusterKv, Method::Oracle] {
        for gqa in POLICIES {
            let params = sc.params_with(method, gqa, Budget::Mass { p: 0.9, max: sc.budget });
            let step = StepCtx { queries: &queries, n_queries: 2, keys: &keys, d: 1, scale: 1.0, regions };
            for ids in select_all(sc.selector(&params, &keys).as_mut(), &params, &step) {
                assert_eq!(ids, [0, 1, 2, 3], "{method} {gqa}");
            }
        }
    }
}

#[test]
fn h2o_never_recalls_an_evicted_token() {
    let (d, s, window, budget, prompt) = (5usize, 4u32, 12usize, 48usize, 300u32);
    let params =
        SelectParams::new(Method::H2o).budget(budget).sink(s as usize).window(window).validate().unwrap();
    let steps = 3 * window as u32 + 5;
    let keys = uniform((prompt + steps) as usize * d, 11);
    let mut selector = new_selector::<f32>(&params, 0);
    selector.grow(&keys, d, s..prompt, Growth::Prompt).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    // Prefill-like observation: some attention mass on every prompt token, a lot on a few.
    let heavy = [7u32, 150, 299];
    let ids: Vec<u32> = (0..prompt).collect();
    let probs: Vec<f32> =
        ids.iter().map(|id| if heavy.contains(id) { 5.0 } else { rng.random::<f32>() }).collect();
    selector.observe(&ids, &probs);

    let mut evicted: HashSet<u32> = HashSet::new();
    let mut c = prompt;
    let mut growths = 0;
    for t in prompt..prompt + steps {
        if (t - c) as usize == window {
            selector.grow(&keys, d, c..t, Growth::Window).unwrap();
            c = t;
            growths += 1;
        }
        let regions = Regions::new(s, c, t).unwrap();
        let q = uniform(d, u64::from(t));
        let step = StepCtx { queries: &q, n_queries: 1, keys: &keys, d, scale: 0.125, regions };
        let mut out = Vec::new();
        select_step(selector.as_mut(), &params, &step, &mut out).unwrap();
        check_selection(&out, &regions, budget.min(t as usize + 1)).unwrap();
        let chosen: HashSet<u32> = clustered_part(&out, &regions).into_iter().collect();
        for id in &chosen {
            assert!(!evicted.contains(id), "step {t}: evicted token {id} came back");
        }
        for id in heavy {
            assert!(chosen.contains(&id), "step {t}: heavy hitter {id} was dropped");
        }
        evicted.extend(regions.clustered().filter(|id| !chosen.contains(id)));
        let probs: Vec<f32> = out.iter().map(|_| rng.random::<f32>() / out.len() as f32).collect();
        selector.observe(&out, &probs);
    }
    assert_eq!(growths, 3);
    assert!(evicted.len() > prompt as usize / 2, "only {} tokens were ever dropped", evicted.len());
}

/// Criterion 4: ClusterKV (parallel k-means inside) selects identically in rayon pools of 1
/// and 2 threads, index included, with f32 and f16 keys.
#[test]
fn clusterkv_is_identical_across_thread_counts() {
    let (d, s, window, prompt, hq) = (16usize, 8u32, 40usize, 3000u32, 4usize);
    let steps = 2 * window as u32 + 3;
    let keys = uniform((prompt + steps) as usize * d, 21);
    let keys16: Vec<half::f16> = keys.iter().map(|&x| half::f16::from_f32(x)).collect();

    #[derive(Clone, Copy)]
    struct Setup {
        d: usize,
        s: u32,
        window: usize,
        prompt: u32,
        hq: usize,
        steps: u32,
    }

    fn run<E: ckv_core::Element>(
        threads: usize,
        keys: &[E],
        su: Setup,
    ) -> (Vec<Vec<Vec<u32>>>, ckv_index::ClusterIndex) {
        let Setup { d, s, window, prompt, hq, steps } = su;
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let mut all = Vec::new();
            let mut last_index = None;
            for gqa in POLICIES {
                let params = SelectParams::new(Method::ClusterKv)
                    .budget(256)
                    .sink(s as usize)
                    .window(window)
                    .window_clusters(4)
                    .tokens_per_cluster(40)
                    .gqa(gqa)
                    .seed(99)
                    .validate()
                    .unwrap();
                let mut selector = new_selector::<E>(&params, 1234);
                selector.grow(keys, d, s..prompt, Growth::Prompt).unwrap();
                let mut c = prompt;
                for t in prompt..prompt + steps {
                    if (t - c) as usize == window {
                        selector.grow(keys, d, c..t, Growth::Window).unwrap();
                        c = t;
                    }
                    let q = uniform(hq * d, u64::from(t) + 1);
                    let step = StepCtx {
                        queries: &q,
                        n_queries: hq,
                        keys,
                        d,
                        scale: 0.125,
                        regions: Regions::new(s, c, t).unwrap(),
                    };
                    let mut outs = vec![Vec::new(); params.gqa().selections_per_group(hq)];
                    select_group(selector.as_mut(), &params, &step, &mut outs).unwrap();
                    all.push(outs);
                }
                last_index = selector.index().cloned();
            }
            (all, last_index.unwrap())
        })
    }

    let su = Setup { d, s, window, prompt, hq, steps };
    let one = run(1, &keys, su);
    let two = run(2, &keys, su);
    assert_eq!(one.1.n_clusters(), 75 + 2 * 4, "prompt clusters + two windows of 4");
    assert!(one.0.iter().flatten().all(|ids| ids.len() == 256));
    assert_eq!(one, two, "f32 keys: 1 vs 2 threads");
    let one = run(1, &keys16, su);
    let two = run(2, &keys16, su);
    assert_eq!(one, two, "f16 keys: 1 vs 2 threads");
}

/// Criterion 5: bad input gets typed errors naming the values.
#[test]
fn bad_input_gets_typed_errors() {
    let d = 3;
    let keys = uniform(100 * d, 1);
    let params = SelectParams::new(Method::ClusterKv).budget(40).sink(4).window(8).validate().unwrap();
    let mut selector = new_selector::<f32>(&params, 0);
    selector.grow(&keys, d, 4..80, Growth::Prompt).unwrap();
    let regions = Regions::new(4, 80, 90).unwrap();
    let mut out = Vec::new();

    // A query of the wrong length.
    let q = [1.0f32; 4];
    let step = StepCtx { queries: &q, n_queries: 1, keys: &keys, d, scale: 0.125, regions };
    assert_eq!(
        select_step(selector.as_mut(), &params, &step, &mut out),
        Err(SelectError::QueryShape { expected: 3, heads: 1, d: 3, given: 4 })
    );
    let step = StepCtx { queries: &q[..3], n_queries: 2, keys: &keys, d, scale: 0.125, regions };
    assert!(matches!(
        select_group(selector.as_mut(), &params, &step, &mut [Vec::new(), Vec::new()]),
        Err(SelectError::QueryShape { expected: 6, given: 3, .. })
    ));
    let step = StepCtx { queries: &[], n_queries: 0, keys: &keys, d, scale: 0.125, regions };
    assert!(matches!(
        select_step(selector.as_mut(), &params, &step, &mut out),
        Err(SelectError::QueryShape { .. })
    ));
    // Wrong number of selection buffers for the policy.
    let step = StepCtx { queries: &q[..3], n_queries: 1, keys: &keys, d, scale: 0.125, regions };
    assert!(matches!(
        select_group(selector.as_mut(), &params, &step, &mut [Vec::new(), Vec::new()]),
        Err(SelectError::Param(ckv_core::ParamError { name: "outs", .. }))
    ));

    // Keys that do not reach the current token.
    let step = StepCtx { queries: &q[..3], n_queries: 1, keys: &keys[..90 * d], d, scale: 0.125, regions };
    assert_eq!(
        select_step(selector.as_mut(), &params, &step, &mut out),
        Err(SelectError::KeysShape { expected: 91, given: 90, current: 90 })
    );

    // Regions that contradict each other.
    assert_eq!(
        Regions::new(10, 5, 20),
        Err(ckv_core::RegionsError { sink: 10, clustered_end: 5, current: 20 })
    );
    assert_eq!(
        Regions::new(4, 30, 20),
        Err(ckv_core::RegionsError { sink: 4, clustered_end: 30, current: 20 })
    );
    assert!(Regions::new(4, 20, 20).is_ok());

    // A budget too small for sink + window + 1 at a longer context.
    for method in Method::ALL {
        let p = SelectParams::new(method).budget(40).sink(16).window(30);
        let err = p.clone().validate().unwrap_err();
        assert!(
            matches!(&err, SelectError::Param(ckv_core::ParamError { name: "budget", value, .. }) if value == "40"),
            "{err}"
        );
        assert!(err.to_string().contains("47"), "{err}");
        assert!(p.clone().max_context(40).validate().is_ok(), "the context fits the budget");
        assert!(matches!(
            p.max_context(41).validate(),
            Err(SelectError::Param(ckv_core::ParamError { name: "budget", .. }))
        ));
    }
    assert!(matches!(
        SelectParams::new(Method::Quest).budget(16).sink(16).validate(),
        Err(SelectError::Param(ckv_core::ParamError { name: "budget", .. }))
    ));

    // A context beyond max_context.
    let bounded = SelectParams::new(Method::ClusterKv).budget(64).sink(4).max_context(50).validate().unwrap();
    let mut selector = new_selector::<f32>(&bounded, 0);
    selector.grow(&keys, d, 4..40, Growth::Prompt).unwrap();
    let ok = StepCtx {
        queries: &q[..3],
        n_queries: 1,
        keys: &keys,
        d,
        scale: 0.125,
        regions: Regions::new(4, 40, 49).unwrap(),
    };
    select_step(selector.as_mut(), &bounded, &ok, &mut out).unwrap();
    assert_eq!(out, (0..50).collect::<Vec<u32>>());
    let long = StepCtx { regions: Regions::new(4, 40, 50).unwrap(), ..ok };
    assert_eq!(
        select_step(selector.as_mut(), &bounded, &long, &mut out),
        Err(SelectError::ContextTooLong { context: 51, max_context: 50 })
    );
}
