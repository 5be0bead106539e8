//! The two KV tiers of one (sequence, layer, KV head): the host store `HeadKv` keeps every
//! token's f16 key and value rows; the device tier `DeviceTier` holds the working set of the
//! last `reuse` steps and fetches only the rows a step newly attends. A 4096-token context
//! decodes 64 steps whose selections drift slowly (as ClusterKV's do: most clusters stay
//! selected from one step to the next); the example prints the hit rate and the bytes
//! fetched per step with and without the tier, for several `reuse` settings.
//!
//! Run: `cargo run -p ckv-cache --example tiers`.

use ckv_cache::{DeviceTier, HeadKv, OffloadParams};
use half::f16;

/// A small deterministic generator (SplitMix64), to keep this example free of dependencies.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (prompt, d, steps, sink, blocks, block) = (4096usize, 128, 64, 4u32, 15, 16);
    let mut rng = Mix(5);
    let mut host = HeadKv::<f16>::with_capacity(d, prompt + steps)?;
    let rows: Vec<f32> = (0..prompt * d).map(|_| rng.unit()).collect();
    host.extend(&rows, &rows)?;
    println!("host store: {} tokens of d = {d}, {} KiB of f16 KV", host.len(), host.memory_bytes() / 1024);

    // The selections of every step: the sink, 15 blocks of 16 tokens (two of them replaced
    // each step), and the current token.
    let mut chosen: Vec<usize> = (0..blocks).map(|_| rng.below(prompt / block)).collect();
    let mut selections = Vec::new();
    let mut news: Vec<Vec<f32>> = Vec::new();
    for step in 0..steps {
        for _ in 0..2 {
            let slot = rng.below(blocks);
            chosen[slot] = rng.below(prompt / block);
        }
        let current = (prompt + step) as u32;
        let mut ids: Vec<u32> = (0..sink).collect();
        ids.extend(chosen.iter().flat_map(|&b| (b * block..(b + 1) * block).map(|t| t as u32)));
        ids.retain(|&t| t >= sink);
        ids.extend(0..sink);
        ids.sort_unstable();
        ids.dedup();
        ids.push(current);
        selections.push(ids);
        news.push((0..d).map(|_| rng.unit()).collect());
    }

    for reuse in [1, 2, 4, 8] {
        let mut host = host.clone();
        let mut tier = DeviceTier::new(d, &OffloadParams::new(reuse)?)?;
        for (ids, new) in selections.iter().zip(&news) {
            host.append(new, new)?;
            tier.step(&host, std::slice::from_ref(ids), *ids.last().expect("the current token"))?;
            // The attention reads the tier's slots: the same rows as the host's.
            let (i, slot) = (ids.len() / 2, tier.slot_lists()[0][ids.len() / 2] as usize);
            assert_eq!(tier.keys()[slot * d..(slot + 1) * d], host.keys()[ids[i] as usize * d..][..d]);
        }
        let stats = tier.stats();
        println!(
            "reuse {reuse}: hit rate {:.1}%, {:.1} KiB fetched per step against {:.1} KiB without the tier, \
             {} rows resident",
            100.0 * stats.hit_rate(),
            stats.bytes_per_step() / 1024.0,
            stats.bytes_per_step_no_cache() / 1024.0,
            tier.resident().len()
        );
    }
    Ok(())
}
