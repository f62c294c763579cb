//! Turns time stamp counter values taken in the traced process (by the ptrace engine's
//! return stubs, by the agent at every call) into recording time.
//!
//! The recorder relates the counter to its own clock (nanoseconds since the recording started), first by a short calibration
//! and then over ever longer baselines as the recording goes on. This needs an invariant
//! TSC, synchronized across CPUs: what Linux requires to use it as its clocksource.

use std::time::{Duration, Instant};

/// The time stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc reads a counter; it has no memory effects and every x86-64 CPU has it.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// A linear map from counter values to recording nanoseconds.
#[derive(Clone, Debug)]
pub struct TscClock {
    tsc0: u64,
    ns0: u64,
    ns_per_tick: f64,
}

impl TscClock {
    /// Calibrates against `now`, which returns recording nanoseconds (takes ~5 ms).
    pub fn new(now: impl Fn() -> u64) -> Self {
        let (ns0, tsc0) = (now(), rdtsc());
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(5) {
            std::hint::spin_loop();
        }
        let (ns1, tsc1) = (now(), rdtsc());
        let ns_per_tick = if tsc1 > tsc0 {
            (ns1 - ns0) as f64 / (tsc1 - tsc0) as f64
        } else {
            1.0
        };
        TscClock {
            tsc0,
            ns0,
            ns_per_tick,
        }
    }

    /// Refines the rate with a pair of readings taken together, once the baseline is long
    /// enough (100 ms) for the error of the readings not to matter.
    pub fn observe(&mut self, ns: u64, tsc: u64) {
        if ns > self.ns0 + 100_000_000 && tsc > self.tsc0 {
            self.ns_per_tick = (ns - self.ns0) as f64 / (tsc - self.tsc0) as f64;
        }
    }

    /// Recording nanoseconds at counter value `tsc`.
    pub fn to_ns(&self, tsc: u64) -> u64 {
        let d = (tsc as f64 - self.tsc0 as f64) * self.ns_per_tick;
        (self.ns0 as f64 + d).max(0.0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_counter_to_elapsed_time() {
        let t0 = Instant::now();
        let now = || t0.elapsed().as_nanos() as u64;
        let mut c = TscClock::new(now);
        let a = rdtsc();
        std::thread::sleep(Duration::from_millis(20));
        let b = rdtsc();
        c.observe(now(), rdtsc());
        let ms = (c.to_ns(b) - c.to_ns(a)) as f64 / 1e6;
        assert!((15.0..60.0).contains(&ms), "{ms} ms");
    }
}
