//! Calls and time per function, for `replay -c` (ltrace's `-c`).

use std::collections::HashMap;

use super::{Defs, Step};

/// One function's row.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Row {
    /// Function name.
    pub name: String,
    /// Calls seen.
    pub calls: u64,
    /// Calls whose return time is known.
    pub timed: u64,
    /// Total nanoseconds from entry to return over the timed calls.
    pub ns: u64,
}

/// Streaming counts per function.
#[derive(Default)]
pub struct CallTable {
    rows: HashMap<u32, Row>,
}

impl CallTable {
    /// Feeds one call step.
    pub fn step(&mut self, step: &Step<'_>, defs: &Defs) {
        match step {
            Step::Began { enter, .. } => {
                let r = self.rows.entry(enter.func).or_insert_with(|| Row {
                    name: defs.shown(enter.func).to_string(),
                    ..Row::default()
                });
                r.calls += 1;
            }
            Step::Ended { enter, exit, .. } => {
                if let (Some(ts), Some(r)) = (exit.ts, self.rows.get_mut(&enter.func)) {
                    r.timed += 1;
                    // Saturating: a hostile recording can claim any times.
                    r.ns = r.ns.saturating_add(ts.saturating_sub(enter.ts));
                }
            }
        }
    }

    /// Rows by total time, then calls, then name (most expensive first).
    pub fn finish(self) -> Vec<Row> {
        let mut rows: Vec<Row> = self.rows.into_values().collect();
        rows.sort_by(|a, b| (b.ns, b.calls, &a.name).cmp(&(a.ns, a.calls, &b.name)));
        rows
    }
}
