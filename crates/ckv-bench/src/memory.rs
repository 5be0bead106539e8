//! What the timings stand on: the memory bandwidth of a large copy, a cache flush before
//! each timed run, and medians.

use std::time::Instant;

use rayon::prelude::*;

/// Bytes per parallel task of the copy and the flush.
const TASK_BYTES: usize = 1 << 22;

/// The last-level cache of CPU 0 in bytes, from sysfs; 64 MiB where it cannot be read.
pub fn last_level_cache_bytes() -> usize {
    let read = || -> Option<usize> {
        let dir = std::fs::read_dir("/sys/devices/system/cpu/cpu0/cache").ok()?;
        dir.filter_map(|e| {
            let text = std::fs::read_to_string(e.ok()?.path().join("size")).ok()?;
            let text = text.trim();
            let (digits, unit) =
                text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
            let scale = match unit {
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                _ => 1,
            };
            Some(digits.parse::<usize>().ok()? * scale)
        })
        .max()
    };
    read().unwrap_or(64 << 20)
}

/// A buffer twice the last-level cache (at least 256 MiB) read before each timed run, so
/// that every run starts from memory as a decode step of a many-layer model does.
pub struct Flusher {
    buffer: Vec<u64>,
}

impl Flusher {
    /// A flush buffer sized for this machine's cache.
    pub fn for_this_machine() -> Self {
        let bytes = (2 * last_level_cache_bytes()).max(256 << 20);
        Self { buffer: (0..bytes / 8).map(|i| i as u64).collect() }
    }

    /// Bytes of the buffer.
    pub fn bytes(&self) -> usize {
        self.buffer.len() * 8
    }

    /// Reads the whole buffer (in parallel); returns a checksum so that it is not optimised
    /// away.
    pub fn flush(&self) -> u64 {
        self.buffer
            .par_chunks(TASK_BYTES / 8)
            .map(|c| c.iter().fold(0u64, |a, &b| a ^ b))
            .reduce(|| 0, |a, b| a ^ b)
    }
}

/// Median of `reps` timed runs of `run` (seconds), each after `before`.
pub fn median_time(reps: usize, mut before: impl FnMut(), mut run: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            before();
            let started = Instant::now();
            run();
            started.elapsed().as_secs_f64()
        })
        .collect();
    median(&mut times)
}

/// The median (the mean of the middle two for an even count).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 { values[n / 2] } else { 0.5 * (values[n / 2 - 1] + values[n / 2]) }
}

/// Memory bandwidth of a parallel copy between two buffers of `bytes` each, counted as
/// bytes read plus bytes written per second; the median of `reps` copies.
pub fn copy_bandwidth(bytes: usize, reps: usize) -> f64 {
    let src: Vec<u64> = (0..bytes / 8).map(|i| i as u64).collect();
    let mut dst = vec![0u64; src.len()];
    let seconds = median_time(
        reps,
        || {},
        || {
            dst.par_chunks_mut(TASK_BYTES / 8).zip(src.par_chunks(TASK_BYTES / 8)).for_each(|(d, s)| {
                d.copy_from_slice(s);
            })
        },
    );
    std::hint::black_box(&dst);
    2.0 * (src.len() * 8) as f64 / seconds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&mut []).is_nan());
    }

    #[test]
    fn cache_size_and_bandwidth_are_positive() {
        assert!(last_level_cache_bytes() >= 1 << 10);
        let bw = copy_bandwidth(1 << 20, 3);
        assert!(bw.is_finite() && bw > 0.0, "{bw}");
    }
}
