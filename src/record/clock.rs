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
    /// Nanoseconds per tick, times 2^[`MULT_SHIFT`].
    mult: u64,
    /// Never refined: see [`TscClock::identity`].
    fixed: bool,
}

/// Fraction bits of [`TscClock`]'s rate: its rounding drifts by well under a microsecond an
/// hour, and rates up to 65,536 ns per tick still fit 64 bits.
const MULT_SHIFT: u32 = 48;

/// The rate `ns / ticks` in fixed point.
fn rate(ns: u64, ticks: u64) -> u64 {
    let m = (u128::from(ns) << MULT_SHIFT) / u128::from(ticks.max(1));
    u64::try_from(m).unwrap_or(u64::MAX)
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
        let mult = if tsc1 > tsc0 {
            rate(ns1.saturating_sub(ns0), tsc1 - tsc0)
        } else {
            1 << MULT_SHIFT
        };
        TscClock {
            tsc0,
            ns0,
            mult,
            fixed: false,
        }
    }

    /// Counter values unchanged, for recordings timed in counter ticks (both engines of one
    /// run, merged afterwards by their readings; see src/record/hybrid.rs): one map for
    /// every reading, since a rate refined as the run goes would order two readings
    /// converted at different moments by more than the readings themselves.
    pub fn identity() -> Self {
        TscClock {
            tsc0: 0,
            ns0: 0,
            mult: 1 << MULT_SHIFT,
            fixed: true,
        }
    }

    /// The map through two pairs of readings `(ns, tsc)` taken together, at the start and
    /// the end of a run; a calibration like [`TscClock::new`]'s when they are too close.
    pub fn between(a: (u64, u64), b: (u64, u64), now: impl Fn() -> u64) -> Self {
        if b.0 > a.0 + 100_000_000 && b.1 > a.1 {
            return TscClock {
                tsc0: a.1,
                ns0: a.0,
                mult: rate(b.0 - a.0, b.1 - a.1),
                fixed: true,
            };
        }
        // Anchored at the start pair, at a calibrated rate.
        TscClock {
            tsc0: a.1,
            ns0: a.0,
            fixed: true,
            ..TscClock::new(now)
        }
    }

    /// Counter ticks in `ns` nanoseconds, at this map's rate.
    pub fn ticks_in(&self, ns: u64) -> u64 {
        let t = (u128::from(ns) << MULT_SHIFT) / u128::from(self.mult.max(1));
        u64::try_from(t).unwrap_or(u64::MAX)
    }

    /// Refines the rate with a pair of readings taken together, once the baseline is long
    /// enough (100 ms) for the error of the readings not to matter.
    pub fn observe(&mut self, ns: u64, tsc: u64) {
        if !self.fixed && ns > self.ns0 + 100_000_000 && tsc > self.tsc0 {
            self.mult = rate(ns - self.ns0, tsc - self.tsc0);
        }
    }

    /// Recording nanoseconds at counter value `tsc`.
    #[inline]
    pub fn to_ns(&self, tsc: u64) -> u64 {
        // Fixed point: every call of the agent converts two readings, and the float
        // conversions were a quarter of the recorder's time per call.
        // A u64 by u64 product always fits u128 (one `mul`); a signed i128 one needed
        // overflow checks that cost as much again.
        let scaled = |ticks: u64| {
            let ns = (u128::from(ticks) * u128::from(self.mult)) >> MULT_SHIFT;
            u64::try_from(ns).unwrap_or(u64::MAX)
        };
        if tsc >= self.tsc0 {
            self.ns0.saturating_add(scaled(tsc - self.tsc0))
        } else {
            self.ns0.saturating_sub(scaled(self.tsc0 - tsc))
        }
    }
}

/// Why this machine's time stamp counter cannot order the agent's records across threads,
/// if it cannot: read from `/proc/cpuinfo` and the kernel's clocksource list.
pub fn order_problem() -> Option<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let sources = std::fs::read_to_string(
        "/sys/devices/system/clocksource/clocksource0/available_clocksource",
    )
    .ok();
    tsc_problem(&cpuinfo, sources.as_deref())
}

/// What [`order_problem`] finds in the text of `/proc/cpuinfo` and of the clocksource
/// list. The agent keys records by the counter (`rdtsc`, `rdtscp`) and compares keys
/// taken on different CPUs, so it needs `rdtscp`, a counter that ticks at one rate whatever the power
/// state (`constant_tsc`, `nonstop_tsc`), and one the kernel found synchronized across
/// CPUs: Linux withdraws `tsc` from the clocksources it lists when it finds it is not
/// (at boot, or later by its watchdog).
fn tsc_problem(cpuinfo: &str, clocksources: Option<&str>) -> Option<String> {
    let mut cpus = 0;
    for flags in cpuinfo.lines().filter_map(|l| {
        l.strip_prefix("flags")
            .and_then(|r| r.trim_start().strip_prefix(':'))
    }) {
        cpus += 1;
        let have: Vec<&str> = flags.split_whitespace().collect();
        let missing: Vec<&str> = ["rdtscp", "constant_tsc", "nonstop_tsc"]
            .into_iter()
            .filter(|f| !have.contains(f))
            .collect();
        if !missing.is_empty() {
            return Some(format!(
                "the CPU lacks {} (the agent orders threads' calls by the time stamp counter)",
                missing.join(", ")
            ));
        }
    }
    if cpus == 0 {
        // Not an x86 /proc/cpuinfo we can read: nothing to judge by.
        return None;
    }
    match clocksources {
        Some(list) if !list.split_whitespace().any(|c| c == "tsc") => Some(format!(
            "the kernel's clocksources are {}, not tsc: it does not trust the time stamp \
             counter, by which the agent orders threads' calls",
            list.split_whitespace().collect::<Vec<_>>().join(", ")
        )),
        _ => None,
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

    #[test]
    fn fixed_point_rate_is_exact_enough_over_hours_and_never_overflows() {
        // A 2.9 GHz counter: an hour later the rounding is off by less than 100 ns.
        let c = TscClock {
            tsc0: 1_000_000,
            ns0: 5,
            mult: rate(1_000_000_000, 2_900_000_000),
            fixed: false,
        };
        let hour = 3_600u64 * 2_900_000_000;
        let ns = c.to_ns(1_000_000 + hour);
        assert!(ns.abs_diff(3_600_000_000_005) < 100, "{ns}");
        assert_eq!(c.to_ns(0), 0, "before the start clamps to 0");
        assert_eq!(c.to_ns(1_000_000), 5);
        let wild = TscClock {
            tsc0: 0,
            ns0: 0,
            mult: u64::MAX,
            fixed: false,
        };
        assert_eq!(wild.to_ns(u64::MAX), u64::MAX);
    }

    #[test]
    fn the_identity_stays_the_identity_and_two_pairs_give_their_rate() {
        let mut id = TscClock::identity();
        id.observe(5_000_000_000, 7);
        assert_eq!(id.to_ns(123_456_789), 123_456_789);
        // 3 ticks a nanosecond over a second.
        let c = TscClock::between((10, 1_000), (1_000_000_010, 3_000_001_000), || 0);
        assert_eq!(c.to_ns(1_000), 10);
        assert!(c.to_ns(1_500_001_000).abs_diff(500_000_010) < 2);
        assert!(c.ticks_in(1_000).abs_diff(3_000) < 2);
    }

    #[test]
    fn the_agent_needs_a_synchronized_invariant_counter() {
        let good = "processor\t: 0\nflags\t\t: fpu tsc rdtscp constant_tsc nonstop_tsc\n\n\
                    processor\t: 1\nflags\t\t: fpu tsc rdtscp constant_tsc nonstop_tsc\n";
        assert_eq!(tsc_problem(good, Some("tsc kvm-clock \n")), None);
        assert_eq!(tsc_problem(good, None), None);
        let why = tsc_problem(good, Some("kvm-clock hpet acpi_pm\n")).unwrap_or_default();
        assert!(
            why.contains("clocksources are kvm-clock, hpet, acpi_pm, not tsc"),
            "{why}"
        );
        // One CPU without the flag is enough to refuse.
        let old = good.replacen("rdtscp constant_tsc nonstop_tsc", "constant_tsc", 1);
        let why = tsc_problem(&old, Some("tsc")).unwrap_or_default();
        assert!(why.contains("lacks rdtscp, nonstop_tsc"), "{why}");
        assert_eq!(tsc_problem("", Some("hpet")), None);
    }
}
