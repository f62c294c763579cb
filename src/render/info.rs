//! `rltrace info`: what a recording holds, for people.

use std::io::{self, Write};

use crate::analyze::summary::Summary;
use crate::elf::hex;
use crate::format::{Meta, StartCause};

/// `YYYY-MM-DD HH:MM:SS` UTC for nanoseconds since the Unix epoch.
pub fn utc(ns: u128) -> String {
    let secs = (ns / 1_000_000_000) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Writes the summary of a recording.
pub fn write_info(
    out: &mut dyn Write,
    file: &str,
    size: u64,
    meta: &Meta,
    s: &Summary,
    complete: bool,
    warnings: &[String],
) -> io::Result<()> {
    writeln!(out, "recording: {file} ({size} bytes)")?;
    let args: Vec<&str> = meta.all("arg").collect();
    writeln!(out, "command:   {}", args.join(" "))?;
    if let Some(cwd) = meta.get("cwd") {
        writeln!(out, "directory: {cwd}")?;
    }
    let host = meta.get("host").unwrap_or("?");
    let engine = meta.get("engine").unwrap_or("?");
    let version = meta.get("rltrace-version").unwrap_or("?");
    writeln!(
        out,
        "recorded:  on {host} with rltrace {version}, {engine} engine"
    )?;
    if let Some(start) = meta
        .get("start-unix-ns")
        .and_then(|v| v.parse::<u128>().ok())
    {
        writeln!(out, "started:   {}", utc(start))?;
    }
    if let Some(first) = s.first_ts {
        writeln!(out, "span:      {:.3} s", (s.last_ts - first) as f64 / 1e9)?;
    }
    // The reader checked the unit before anything was read.
    if let Ok(unit) = meta.time_unit() {
        writeln!(out, "times:     to the {}", resolution(unit))?;
    }
    if let Some(f) = meta.get("trace-filter") {
        let chains: Vec<&str> = f.lines().collect();
        writeln!(out, "filter:    -e {}", chains.join(" -e "))?;
    }
    if let Some(p) = meta.get("prototypes") {
        writeln!(
            out,
            "prototypes: {} loaded (-F, or the program's DWARF)",
            p.lines().count()
        )?;
    }
    if s.callee_prototypes > 0 {
        writeln!(
            out,
            "prototypes: {} from the DWARF of the libraries the program calls into",
            s.callee_prototypes
        )?;
    }
    if complete {
        writeln!(out, "complete:  yes")?;
    } else {
        writeln!(out, "complete:  no, cut short ({})", warnings.join("; "))?;
    }
    if s.packed_addresses > 0 {
        writeln!(
            out,
            "packed:    symbols for {} addresses, {} source lines",
            s.packed_addresses, s.packed_lines
        )?;
    } else {
        writeln!(
            out,
            "packed:    no (replay needs the binaries; see `rltrace pack`)"
        )?;
    }
    let total: u64 = s.calls.values().sum();
    let per: Vec<String> = s.calls.iter().map(|(n, c)| format!("{n} {c}")).collect();
    writeln!(
        out,
        "calls:     {total} ({}), {} distinct stacks",
        per.join(", "),
        s.stacks
    )?;
    writeln!(out, "\nprocesses:")?;
    for p in s.processes.values() {
        let how = match p.cause {
            StartCause::Spawn => "started by rltrace".to_string(),
            StartCause::Fork => format!("forked from {}", p.parent),
            StartCause::Vfork => format!("vforked from {}", p.parent),
            StartCause::Exec => "exec".to_string(),
            StartCause::Attach => "attached to while running".to_string(),
        };
        let mut exit = p.exit.map_or("no exit recorded".to_string(), |h| {
            super::exit_text(h)
                .trim_matches(|c| c == '+' || c == ' ')
                .to_string()
        });
        if let Some((signo, _)) = p.crash {
            exit = format!("crashed: {}, {exit}", super::signal_text(signo));
        }
        let images = if p.images > 1 {
            format!(", {} images", p.images)
        } else {
            String::new()
        };
        writeln!(
            out,
            "  {:>7} {} ({how}{images}): {} threads, {} calls, {exit}",
            p.pid, p.path, p.threads, p.calls
        )?;
    }
    writeln!(out, "\nmodules:")?;
    for m in &s.modules {
        let id = if m.build_id.is_empty() {
            "no build-id".to_string()
        } else {
            hex(&m.build_id)
        };
        writeln!(out, "  {:>7} {:#014x} {} {}", m.pid, m.start, id, m.path)?;
    }
    if !s.notes.is_empty() {
        writeln!(out, "\nnotes:")?;
        for n in &s.notes {
            writeln!(out, "  {n}")?;
        }
    }
    Ok(())
}

/// "microsecond", "10 ns", …: how finely a recording's times were kept.
fn resolution(unit_ns: u64) -> String {
    match unit_ns {
        1 => "nanosecond".into(),
        1_000 => "microsecond".into(),
        1_000_000 => "millisecond".into(),
        1_000_000_000 => "second".into(),
        n if n % 1_000_000 == 0 => format!("{} ms", n / 1_000_000),
        n if n % 1_000 == 0 => format!("{} us", n / 1_000),
        n => format!("{n} ns"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(
            super::utc(1_764_048_863 * 1_000_000_000),
            "2025-11-25 05:34:23 UTC"
        );
        assert_eq!(
            super::utc(951_782_400 * 1_000_000_000),
            "2000-02-29 00:00:00 UTC"
        );
    }
}
