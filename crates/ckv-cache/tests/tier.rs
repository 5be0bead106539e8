//! The device tier against its definition on random step sequences: after every step it
//! holds exactly the rows the last `reuse` steps attended, its slots hold the host's rows,
//! and it fetches exactly the rows it lacked.

use std::collections::BTreeSet;

use ckv_cache::{CacheError, DeviceTier, HeadKv, OffloadParams};
use half::f16;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn holds_the_last_reuse_attended_sets(
        d in 1usize..9,
        prompt in 1usize..60,
        // usize::MAX: "keep everything", which must not wrap the age comparison.
        reuse in prop_oneof![1usize..5, Just(usize::MAX)],
        steps in prop::collection::vec((prop::collection::vec(0.0f64..1.0, 1..4), 0u64..1000), 1..25),
    ) {
        let mut host = HeadKv::<f16>::new(d).unwrap();
        let row = |t: usize| -> Vec<f32> { (0..d).map(|e| (t * 31 + e) as f32 / 7.0).collect() };
        for t in 0..prompt {
            host.append(&row(t), &row(t + 1000)).unwrap();
        }
        let params = OffloadParams::new(reuse).unwrap();
        let mut tier = DeviceTier::<f16>::new(d, &params).unwrap();
        let mut history: Vec<BTreeSet<u32>> = Vec::new();
        let mut want_stats = (0u64, 0u64, 0u64);
        for (s, (shares, seed)) in steps.iter().enumerate() {
            let current = host.len() as u32;
            host.append(&row(current as usize), &row(current as usize + 1000)).unwrap();
            // Lists: each a random subset of the earlier tokens, plus the current one.
            let lists: Vec<Vec<u32>> = shares
                .iter()
                .enumerate()
                .map(|(i, &share)| {
                    let mut ids: Vec<u32> = (0..current)
                        .filter(|&t| ((t as u64 * 2654435761 + seed * 97 + i as u64) % 1000) as f64 / 1000.0 < share)
                        .collect();
                    ids.push(current);
                    ids
                })
                .collect();
            let before: BTreeSet<u32> = tier.resident().into_iter().collect();
            tier.step(&host, &lists, current).unwrap();
            let attended: BTreeSet<u32> = lists.iter().flatten().copied().collect();
            history.push(attended.clone());
            let keep = history.len().saturating_sub(reuse);
            let want: BTreeSet<u32> = history[keep..].iter().flatten().copied().collect();
            prop_assert_eq!(tier.resident().into_iter().collect::<BTreeSet<u32>>(), want, "step {}", s);
            // The slots hold the host's rows, list by list, in order.
            for (ids, slots) in lists.iter().zip(tier.slot_lists()) {
                prop_assert_eq!(ids.len(), slots.len());
                for (&id, &slot) in ids.iter().zip(slots) {
                    let (id, slot) = (id as usize * d, slot as usize * d);
                    prop_assert_eq!(&tier.keys()[slot..slot + d], &host.keys()[id..id + d]);
                    prop_assert_eq!(&tier.values()[slot..slot + d], &host.values()[id..id + d]);
                }
            }
            if s > 0 {
                let earlier: Vec<u32> = attended.iter().copied().filter(|&t| t != current).collect();
                let hits = earlier.iter().filter(|t| before.contains(t)).count() as u64;
                want_stats.0 += earlier.len() as u64;
                want_stats.1 += hits;
                want_stats.2 += (earlier.len() as u64 - hits) * (2 * d * 2) as u64;
            }
        }
        let stats = tier.stats();
        prop_assert_eq!((stats.attended, stats.hits, stats.bytes_fetched), want_stats);
        prop_assert_eq!(stats.steps, steps.len() as u64 - 1);
        prop_assert_eq!(stats.bytes_no_cache, stats.attended * (2 * d * 2) as u64);
    }
}

#[test]
fn bad_settings_and_ids_are_refused() {
    assert!(matches!(
        OffloadParams::new(0),
        Err(CacheError::Param(ckv_core::ParamError { name: "reuse", .. }))
    ));
    let mut host = HeadKv::<f32>::new(2).unwrap();
    host.append(&[1.0, 2.0], &[3.0, 4.0]).unwrap();
    let mut tier = DeviceTier::<f32>::new(2, &OffloadParams::default()).unwrap();
    let err = tier.step(&host, &[vec![0, 5]], 0).unwrap_err();
    assert_eq!(err, CacheError::TokenOutOfRange { id: 5, len: 1 });
    assert!(tier.resident().is_empty(), "a refused step changes nothing");
}
