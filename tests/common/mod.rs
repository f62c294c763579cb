//! Shared test harness: builds the fixtures once per test binary, runs rltrace on them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The rltrace binary under test; never asks debuginfod servers unless a test says so.
pub fn rltrace() -> Command {
    static AGENT: OnceLock<()> = OnceLock::new();
    AGENT.get_or_init(|| {
        // `cargo test` builds test harnesses, not the agent's cdylib; `cargo build` does.
        let exe = Path::new(env!("CARGO_BIN_EXE_rltrace"));
        let agent = exe.with_file_name("librltrace_agent.so");
        assert!(
            agent.is_file(),
            "{} is not built: run `cargo build --release` before `cargo test --release` \
             (scripts/test does both)",
            agent.display()
        );
    });
    let mut c = Command::new(env!("CARGO_BIN_EXE_rltrace"));
    c.env_remove("DEBUGINFOD_URLS");
    c
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where built fixtures go.
pub fn fixture_dir() -> PathBuf {
    let d = repo().join("target").join("fixtures");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A fresh scratch directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rltrace-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Compiles a fixture under `tests/fixtures/` with `compiler`; `flags` go before the source.
pub fn build_with(compiler: &str, name: &str, source: &str, flags: &[&str]) -> PathBuf {
    let src = repo().join("tests/fixtures").join(source);
    let out = fixture_dir().join(name);
    // Build to a temporary name and rename, so concurrent tests (threads of one binary
    // too) never see a half-written executable, or run one a compiler still writes.
    static BUILDS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = fixture_dir().join(format!("{name}.{}.{n}.tmp", std::process::id()));
    let status = Command::new(compiler)
        .args(flags)
        .arg(&src)
        .arg("-o")
        .arg(&tmp)
        .status()
        .unwrap_or_else(|e| panic!("run {compiler}: {e}"));
    assert!(status.success(), "{compiler} failed for {source}");
    std::fs::rename(&tmp, &out).unwrap();
    out
}

/// Compiles a C fixture from `tests/fixtures/c` with the system `cc`.
pub fn build_c(name: &str, source: &str, flags: &[&str]) -> PathBuf {
    build_with("cc", name, &format!("c/{source}"), flags)
}

pub fn leaks_c() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| build_c("leaks", "leaks.c", &["-O1", "-g"]))
}

pub fn mt_c() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| build_c("mt", "mt.c", &["-O1", "-g", "-pthread"]))
}

/// Builds the Rust server fixture (release, with debug info) with cargo into its own
/// target directory, with extra `RUSTFLAGS` if given.
pub fn build_rust_server(target_name: &str, rustflags: Option<&str>) -> PathBuf {
    let manifest = repo().join("tests/fixtures/rust-server/Cargo.toml");
    let target = repo().join("target/fixtures").join(target_name);
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args([
        "build",
        "--release",
        "--quiet",
        "--locked",
        "--manifest-path",
    ])
    .arg(&manifest)
    .arg("--target-dir")
    .arg(&target);
    if let Some(flags) = rustflags {
        cmd.env("RUSTFLAGS", flags);
    }
    let status = cmd.status().expect("run cargo");
    assert!(status.success(), "building the rust-server fixture failed");
    target.join("release/rust-server")
}

/// The Rust server fixture as a release build would make it.
pub fn rust_server() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| build_rust_server("rust-server", None))
}

/// Starts `rltrace record -o REC -- SERVER` and waits for the server's address.
pub fn start_server(rec: &Path, server: &Path) -> (std::process::Child, String) {
    start_server_with("auto", rec, server)
}

/// Like [`start_server`], with the engine named.
pub fn start_server_with(engine: &str, rec: &Path, server: &Path) -> (std::process::Child, String) {
    let mut child = rltrace()
        .args(["record", "--engine", engine, "-o"])
        .arg(rec)
        .arg("--")
        .arg(server)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = listen_addr(child.stdout.take().unwrap());
    (child, addr)
}

/// The address from the Rust server's first line, `listening on ADDR`.
pub fn listen_addr(stdout: std::process::ChildStdout) -> String {
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut first).unwrap();
    first
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_string()
}

/// Sends SIGTERM to a process.
pub fn terminate(child: &std::process::Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
}

/// Line number of the line of `file` containing `marker`.
pub fn marker_line(file: &Path, marker: &str) -> u32 {
    let text = std::fs::read_to_string(file).unwrap();
    let hits: Vec<u32> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(marker))
        .map(|(i, _)| i as u32 + 1)
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "marker {marker:?} must appear once in {}",
        file.display()
    );
    hits[0]
}

/// Both engines, for tests that must hold under either.
pub const ENGINES: [&str; 2] = ["agent", "ptrace"];

/// Runs `rltrace record -o OUT -- CMD ARGS` (engine chosen automatically) and returns
/// its output.
pub fn record(out: &Path, cmd: &Path, args: &[&str]) -> Output {
    record_with("auto", out, cmd, args)
}

/// Runs `rltrace record OPTS -o OUT -- CMD` and returns its output, asserting success.
pub fn record_opts(opts: &[&str], out: &Path, cmd: &Path) -> Output {
    let o = rltrace()
        .arg("record")
        .args(opts)
        .arg("-o")
        .arg(out)
        .arg("--")
        .arg(cmd)
        .stdin(Stdio::null())
        .output()
        .expect("run rltrace record");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o
}

/// Runs `rltrace record --engine ENGINE -o OUT -- CMD ARGS` and returns its output.
pub fn record_with(engine: &str, out: &Path, cmd: &Path, args: &[&str]) -> Output {
    let o = rltrace()
        .arg("record")
        .arg("--engine")
        .arg(engine)
        .arg("-o")
        .arg(out)
        .arg("--")
        .arg(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run rltrace record");
    assert!(
        out.exists(),
        "no recording written: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// Runs `rltrace replay ARGS FILE`, asserting success (and, if `clean`, no warnings);
/// returns stdout.
fn run_replay(file: &Path, args: &[&str], clean: bool) -> String {
    let o = rltrace()
        .arg("replay")
        .args(args)
        .arg(file)
        .output()
        .expect("run rltrace replay");
    assert!(
        o.status.success() && (!clean || o.stderr.is_empty()),
        "replay failed or warned: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).expect("utf-8 output")
}

/// Runs `rltrace replay ARGS FILE`, asserting success, and returns stdout.
pub fn replay(file: &Path, args: &[&str]) -> String {
    run_replay(file, args, false)
}

/// Runs `rltrace replay ARGS FILE`, asserting success and no warnings, and returns stdout.
pub fn replay_clean(file: &Path, args: &[&str]) -> String {
    run_replay(file, args, true)
}

/// A leak group as the text report shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub bytes: u64,
    pub blocks: u64,
    pub func: String,
    /// `file:line` of the caller (column dropped), file name only.
    pub at: String,
    pub caller_fn: String,
    /// The full report section.
    pub text: String,
}

/// Parses the groups of `rltrace replay --leaks` output.
pub fn parse_leaks(report: &str) -> Vec<Group> {
    let mut groups = Vec::new();
    let mut cur: Option<Group> = None;
    for line in report.lines() {
        if line.starts_with('#') {
            if let Some(g) = cur.take() {
                groups.push(g);
            }
            // "#1 72 bytes in 3 blocks (24 bytes each) allocated by malloc"
            let w: Vec<&str> = line.split_whitespace().collect();
            cur = Some(Group {
                bytes: w[1].parse().unwrap(),
                blocks: w[4].parse().unwrap(),
                func: w.last().unwrap().to_string(),
                at: String::new(),
                caller_fn: String::new(),
                text: String::new(),
            });
        }
        if let Some(g) = cur.as_mut() {
            g.text.push_str(line);
            g.text.push('\n');
            if let Some(rest) = line.trim_start().strip_prefix("at ") {
                if g.at.is_empty() {
                    let mut parts = rest.splitn(2, ' ');
                    let loc = parts.next().unwrap_or("");
                    g.caller_fn = parts.next().unwrap_or("").to_string();
                    let file_line: Vec<&str> = loc.rsplitn(3, ':').collect();
                    // loc is file:line:col
                    if file_line.len() == 3 {
                        let file = Path::new(file_line[2])
                            .file_name()
                            .unwrap()
                            .to_string_lossy()
                            .into_owned();
                        g.at = format!("{file}:{}", file_line[1]);
                    } else {
                        g.at = loc.to_string();
                    }
                }
            }
        }
    }
    if let Some(g) = cur.take() {
        groups.push(g);
    }
    groups
}

/// Requires an external tool the README's test command installs.
pub fn require_tool(name: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "{name} is not installed: run the README's test command (scripts/test), which installs it"
    );
}

pub fn forever_c() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| build_c("forever", "forever.c", &["-O1", "-g"]))
}

/// The dlopen fixture: (main program, library).
pub fn dl_c() -> &'static (PathBuf, PathBuf) {
    static P: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    P.get_or_init(|| {
        let lib = build_c("libleaky.so", "leaky.c", &["-O1", "-g", "-shared", "-fPIC"]);
        let main = build_c("dl_main", "dl_main.c", &["-O1", "-g"]);
        (main, lib)
    })
}

/// Compiles the C++ fixture with the system `c++`.
pub fn widgets_cpp() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| build_with("c++", "widgets", "cpp/widgets.cpp", &["-O1", "-g"]))
}

/// Runs a tool, asserting success.
pub fn run_ok(cmd: &str, args: &[&std::ffi::OsStr]) {
    let o = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        o.status.success(),
        "{cmd} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Starts `rltrace record -o REC -- forever` and waits until the program says it is ready;
/// returns the recorder and the program's remaining stdout.
pub fn start_forever(
    rec: &Path,
) -> (
    std::process::Child,
    std::io::BufReader<std::process::ChildStdout>,
) {
    start_forever_with(rec, |_| {})
}

/// Like [`start_forever`], with a chance to adjust the recorder's command first.
pub fn start_forever_with(
    rec: &Path,
    adjust: impl FnOnce(&mut Command),
) -> (
    std::process::Child,
    std::io::BufReader<std::process::ChildStdout>,
) {
    let mut cmd = rltrace();
    cmd.args(["record", "-o"]).arg(rec);
    // Before the command: the adjustment may add recorder options.
    adjust(&mut cmd);
    cmd.arg("--")
        .arg(forever_c())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut ready = String::new();
    std::io::BufRead::read_line(&mut out, &mut ready).unwrap();
    assert_eq!(ready, "ready\n");
    (child, out)
}

/// The GNU build-id of an ELF file, in hex, as readelf prints it.
pub fn build_id_hex(bin: &Path) -> String {
    let o = Command::new("readelf").arg("-n").arg(bin).output().unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: ").map(str::to_string))
        .expect("the file has a build-id")
}

/// Replaces addresses (hex of 9+ digits) by `PTR`: they differ between runs.
pub fn unaddress(s: &str) -> String {
    unaddress_from(s, 9)
}

/// Replaces hex numbers of `min` or more digits by `PTR` (a non-PIE program's heap and
/// code have short addresses).
pub fn unaddress_from(s: &str, min: usize) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("0x") {
        out.push_str(&rest[..i]);
        let digits = rest[i + 2..]
            .find(|c: char| !c.is_ascii_hexdigit())
            .unwrap_or(rest.len() - i - 2);
        if digits >= min {
            out.push_str("PTR");
        } else {
            out.push_str(&rest[i..i + 2 + digits]);
        }
        rest = &rest[i + 2 + digits..];
    }
    out.push_str(rest);
    out
}
