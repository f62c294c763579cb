//! Machine-readable output: JSON lines, folded stacks, SVG flame graphs.

mod common;

use common::*;
use serde_json::Value;

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// A text trace line that starts a call (not a continuation or a process event).
fn is_call(line: &str) -> bool {
    line.contains('(') && !line.contains("resumed>") && !line.contains("+++")
}

fn recording(name: &str) -> std::path::PathBuf {
    let dir = scratch(name);
    let rec = dir.join("leaks.rlt");
    record(&rec, leaks_c(), &[]);
    rec
}

#[test]
fn json_leak_groups_round_trip_the_text_report() {
    let rec = recording("json-leaks");
    let text = parse_leaks(&replay(&rec, &["--leaks"]));
    let objs = json_lines(&replay(&rec, &["--leaks", "--format", "json"]));
    let (groups, summary): (Vec<&Value>, Vec<&Value>) =
        objs.iter().partition(|o| o["type"] == "leak_group");
    assert_eq!(summary.len(), 1);
    assert_eq!(summary[0]["type"], "leak_summary");
    let from_json: Vec<(u64, u64, String, String)> = groups
        .iter()
        .map(|g| {
            let c = &g["caller"];
            let file = std::path::Path::new(c["file"].as_str().unwrap())
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (
                g["bytes"].as_u64().unwrap(),
                g["blocks"].as_u64().unwrap(),
                g["function"].as_str().unwrap().to_string(),
                format!("{file}:{}", c["line"]),
            )
        })
        .collect();
    let from_text: Vec<(u64, u64, String, String)> = text
        .iter()
        .map(|g| (g.bytes, g.blocks, g.func.clone(), g.at.clone()))
        .collect();
    assert_eq!(from_json, from_text);
    let blocks: u64 = text.iter().map(|g| g.blocks).sum();
    let bytes: u64 = text.iter().map(|g| g.bytes).sum();
    assert_eq!(
        (summary[0]["blocks"].as_u64(), summary[0]["bytes"].as_u64()),
        (Some(blocks), Some(bytes))
    );
    // Frames and source text are there for tools.
    let calloc = groups.iter().find(|g| g["function"] == "calloc").unwrap();
    assert!(calloc["caller"]["source"]
        .as_str()
        .unwrap()
        .contains("LEAK: calloc"));
    assert!(calloc["frames"].as_array().unwrap().len() >= 2);
}

#[test]
fn json_calls_match_the_text_trace() {
    let rec = recording("json-trace");
    let text = replay(&rec, &[]);
    let objs = json_lines(&replay(&rec, &["--format", "json", "--stack"]));
    let calls: Vec<&Value> = objs.iter().filter(|o| o["type"] == "call").collect();
    let text_calls = text.lines().filter(|l| is_call(l)).count();
    assert_eq!(calls.len(), text_calls);
    // The same calls in the same order, with the same return values.
    // Allocator calls: other functions show their return values by type, not in hex.
    let allocators = [
        "malloc",
        "calloc",
        "realloc",
        "reallocarray",
        "memalign",
        "aligned_alloc",
        "valloc",
        "pvalloc",
    ];
    let text_rets: Vec<String> = text
        .lines()
        .filter(|l| {
            l.contains(" = 0x")
                && allocators.iter().any(|a| {
                    l.split("] ")
                        .nth(1)
                        .is_some_and(|b| b.starts_with(&format!("{a}(")))
                })
        })
        .map(|l| {
            l.split(" = ")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    let json_rets: Vec<String> = calls
        .iter()
        .filter(|c| allocators.iter().any(|a| c["function"] == *a) && c["depth"] == 0)
        .map(|c| format!("{:#x}", c["return"].as_u64().unwrap()))
        .collect();
    assert_eq!(json_rets, text_rets);
    let pm = calls
        .iter()
        .find(|c| c["function"] == "posix_memalign")
        .unwrap();
    assert_eq!(pm["return"], 0);
    assert!(pm["out"].as_u64().unwrap() != 0);
    assert!(calls
        .iter()
        .all(|c| c["stack"].as_array().is_some_and(|s| !s.is_empty())));
    assert!(objs
        .iter()
        .any(|o| o["type"] == "process_exit" && o["status"]["code"] == 0));
}

fn folded_total(text: &str) -> u64 {
    text.lines()
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
        .sum()
}

#[test]
fn folded_stacks_are_accepted_by_inferno() {
    let rec = recording("folded");
    let leaks = replay(&rec, &["--leaks", "--format", "folded"]);
    let total: u64 = parse_leaks(&replay(&rec, &["--leaks"]))
        .iter()
        .map(|g| g.bytes)
        .sum();
    assert_eq!(folded_total(&leaks), total);
    assert!(
        leaks
            .lines()
            .any(|l| l.contains(";main;make_block;malloc 40")),
        "{leaks}"
    );
    let calls = replay(&rec, &["--format", "folded"]);
    assert_eq!(
        folded_total(&calls) as usize,
        replay(&rec, &[]).lines().filter(|l| is_call(l)).count()
    );
    for text in [&leaks, &calls] {
        let mut svg = Vec::new();
        let mut opts = inferno::flamegraph::Options::default();
        inferno::flamegraph::from_lines(&mut opts, text.lines(), &mut svg)
            .expect("inferno accepts the folded stacks");
        assert!(String::from_utf8_lossy(&svg).contains("make_block"));
    }
}

#[test]
fn svg_flame_graph_of_live_bytes() {
    let rec = recording("svg");
    let svg = rec.with_extension("svg");
    let out = replay(&rec, &["--leaks", "--svg", svg.to_str().unwrap()]);
    assert!(
        out.contains("never freed"),
        "the text report still goes to stdout"
    );
    let doc = std::fs::read_to_string(&svg).unwrap();
    assert!(doc.starts_with("<?xml") && doc.contains("<svg"));
    assert!(doc.contains("live bytes by allocation stack") && doc.contains("make_block"));
}

#[test]
fn growth_tells_a_growing_leak_from_a_cache_filled_once() {
    let bin = build_c("growth", "growth.c", &["-O1", "-g"]);
    let src = repo().join("tests/fixtures/c/growth.c");
    let dir = scratch("growth");
    let rec = dir.join("g.rlt");
    record(&rec, &bin, &[]);
    let objs = json_lines(&replay(&rec, &["--leaks", "--format", "json"]));
    let series = |marker: &str| -> Vec<u64> {
        let line = marker_line(&src, marker);
        let g = objs
            .iter()
            .find(|o| o["type"] == "leak_group" && o["caller"]["line"] == line)
            .unwrap_or_else(|| panic!("no group at line {line}"));
        g["growth"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect()
    };
    let cache = series("GROWTH: cache");
    let leak = series("GROWTH: leak");
    assert_eq!(cache, vec![20; 10], "filled at once, then flat");
    assert_eq!(*leak.last().unwrap(), 50);
    assert!(leak.windows(2).all(|w| w[0] <= w[1]), "{leak:?}");
    assert!(
        leak[0] < 25 && leak[4] > 0 && leak[4] < 50,
        "climbs through the run: {leak:?}"
    );
    // The text form shows the same counts.
    let text = replay(&rec, &["--leaks", "--growth"]);
    let counts: Vec<String> = leak.iter().map(u64::to_string).collect();
    assert!(
        text.contains(&format!("| {} (each tenth of", counts.join(" "))),
        "{text}"
    );
}

/// Times are kept to the microsecond unless `--time-resolution` asks otherwise, for
/// both engines; `info` says which, and the JSON times are multiples of the unit.
#[test]
fn times_are_kept_to_the_resolution_asked_for() {
    for engine in ENGINES {
        let dir = scratch(&format!("resolution-{engine}"));
        for (flag, unit, name) in [
            (None, 1000, "microsecond"),
            (Some("1"), 1, "nanosecond"),
            (Some("250000"), 250_000, "250 us"),
        ] {
            let rec = dir.join(format!("r{unit}.rlt"));
            let mut args = vec!["--engine", engine];
            if let Some(f) = flag {
                args.extend(["--time-resolution", f]);
            }
            record_opts(&args, &rec, leaks_c());
            let info = rltrace().arg("info").arg(&rec).output().unwrap();
            let info = String::from_utf8(info.stdout).unwrap();
            assert!(
                info.contains(&format!("times:     to the {name}\n")),
                "{info}"
            );
            let calls = json_lines(&replay(&rec, &["--format", "json", "--all"]));
            let ts: Vec<u64> = calls.iter().filter_map(|c| c["ts_ns"].as_u64()).collect();
            assert!(ts.len() >= 10, "{engine}: {} calls", ts.len());
            let aligned = ts.iter().filter(|&&t| t % unit == 0).count();
            assert_eq!(aligned, ts.len(), "{engine} unit {unit}: {ts:?}");
            if unit == 1 {
                // Nanoseconds kept: not every time falls on a microsecond.
                assert!(ts.iter().any(|t| t % 1000 != 0), "{engine}: {ts:?}");
            }
        }
    }
    let o = rltrace()
        .args(["record", "--time-resolution", "0", "--"])
        .arg(leaks_c())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--time-resolution"));
}
