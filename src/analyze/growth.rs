//! Live blocks per allocation stack over the recording, in bounded memory: every stack
//! keeps at most `SAMPLES` counts on one shared time grid, whose step doubles (merging
//! samples pairwise) whenever the recording outgrows it.

use std::collections::HashMap;

/// Samples kept per stack.
const SAMPLES: usize = 64;
/// The first grid step, in nanoseconds.
const FIRST_STEP: u64 = 1_000_000;

/// Live-block counts over time, per (process, stack).
#[derive(Debug)]
pub struct Growth {
    step: u64,
    start: Option<u64>,
    /// Per key: live count now, and the count at the end of each grid step so far.
    series: HashMap<(u32, Option<u32>), (u64, Vec<u64>)>,
    end: u64,
}

impl Default for Growth {
    fn default() -> Self {
        Growth {
            step: FIRST_STEP,
            start: None,
            series: HashMap::new(),
            end: 0,
        }
    }
}

impl Growth {
    fn slot(&self, ts: u64) -> usize {
        (ts.saturating_sub(self.start.unwrap_or(ts)) / self.step) as usize
    }

    /// Notes that time has reached `ts`.
    pub fn tick(&mut self, ts: u64) {
        self.start.get_or_insert(ts);
        self.end = self.end.max(ts);
        while self.slot(self.end) >= SAMPLES {
            // Coarser grid: keep every second sample (the later one of each pair).
            self.step *= 2;
            for (_, s) in self.series.values_mut() {
                *s = s.iter().skip(1).step_by(2).copied().collect();
            }
        }
    }

    /// A block of this key became live (`+1`) or was freed (`-1`) at `ts`.
    pub fn change(&mut self, key: (u32, Option<u32>), ts: u64, delta: i64) {
        self.tick(ts);
        let slot = self.slot(ts);
        let (live, samples) = self.series.entry(key).or_insert((0, Vec::new()));
        // Steps that passed since the last change held the old count.
        while samples.len() < slot {
            samples.push(*live);
        }
        *live = live.saturating_add_signed(delta);
        samples.truncate(slot);
        samples.push(*live);
    }

    /// Live blocks of `key` at the end of each of `slices` equal parts of the recording.
    pub fn slices(&self, key: (u32, Option<u32>), slices: usize) -> Vec<u64> {
        let Some((live, samples)) = self.series.get(&key) else {
            return vec![0; slices];
        };
        let total = self.slot(self.end) + 1;
        (1..=slices)
            .map(|i| {
                let at = (total * i).div_ceil(slices).saturating_sub(1);
                match samples.get(at) {
                    Some(&v) => v,
                    // No change since the last sample: the count held.
                    None if at >= samples.len() => *live,
                    None => 0,
                }
            })
            .collect()
    }

    /// Nanoseconds from the first to the last event seen.
    pub fn span(&self) -> u64 {
        self.end - self.start.unwrap_or(self.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_leak_and_early_cache_look_different() {
        let mut g = Growth::default();
        let (cache, leak) = ((1, Some(1)), (1, Some(2)));
        for i in 0..10 {
            g.change(cache, i, 1);
        }
        // One leaked block every 10 ms for a second, while the grid coarsens.
        for i in 1..=100u64 {
            g.change(leak, i * 10_000_000, 1);
        }
        let c = g.slices(cache, 10);
        let l = g.slices(leak, 10);
        assert_eq!(c, vec![10; 10]);
        assert_eq!(*l.last().unwrap(), 100);
        assert!(l.windows(2).all(|w| w[0] < w[1]), "{l:?}");
        assert!(l[0] <= 15 && (40..=60).contains(&l[4]), "{l:?}");
    }

    #[test]
    fn frees_bring_the_count_down() {
        let mut g = Growth::default();
        let k = (1, Some(1));
        g.change(k, 0, 1);
        g.change(k, 500_000_000, 1);
        g.change(k, 900_000_000, -1);
        g.change(k, 900_000_000, -1);
        g.tick(1_000_000_000);
        let s = g.slices(k, 10);
        assert_eq!(s[0], 1);
        assert_eq!(s[5], 2);
        assert_eq!(s[9], 0);
    }
}
