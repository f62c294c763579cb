//! Turns module-relative addresses into functions, files, lines and inlined frames, with
//! object + gimli + addr2line. Debug info is looked up next to the binary, through
//! `.gnu_debuglink`, under `/usr/lib/debug/.build-id/`, and in user `--debug-dir`s; a file
//! whose build-id differs from the recorded one is never used.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub mod debuginfod;
pub mod types;

use crate::elf::{hex, ElfInfo};
use crate::format::{Frame, ModuleDef, PackedAddress, PackedFrame};

/// One symbolized frame; an address expands to several when functions were inlined.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SymFrame {
    /// Demangled function name.
    pub function: Option<String>,
    /// Source file.
    pub file: Option<String>,
    /// Line, 1-based.
    pub line: Option<u32>,
    /// Column, 1-based.
    pub column: Option<u32>,
    /// True for frames inlined into the next one.
    pub inlined: bool,
    /// Module path.
    pub module: String,
    /// Module-relative address (or absolute, if no module).
    pub addr: u64,
}

impl SymFrame {
    /// `file:line:column`, as far as known.
    pub fn location(&self) -> Option<String> {
        let file = self.file.as_deref()?;
        Some(match (self.line, self.column) {
            (Some(l), Some(c)) if c > 0 => format!("{file}:{l}:{c}"),
            (Some(l), _) => format!("{file}:{l}"),
            _ => file.to_string(),
        })
    }

    /// True for frames of the allocator, the C and C++ runtime, the Rust standard library
    /// and third-party crates: the "caller" shown for a call is the first frame that is not.
    pub fn is_runtime(&self) -> bool {
        if is_system_library(&self.module) {
            return true;
        }
        if let Some(file) = &self.file {
            const DEP_DIRS: [&str; 6] = [
                "/rustc/",
                "/.cargo/registry/",
                "/.cargo/git/",
                "/rustlib/",
                "/usr/include/",
                "/usr/lib/gcc/",
            ];
            if DEP_DIRS.iter().any(|d| file.contains(d)) || file.starts_with("library/") {
                return true;
            }
        }
        if let Some(f) = &self.function {
            let f = f.trim_start_matches('<');
            const RT: [&str; 9] = [
                "alloc::",
                "core::",
                "std::",
                "__rust_",
                "__rdl_",
                "__rg_",
                "_rjem_",
                "operator new",
                "operator delete",
            ];
            if RT.iter().any(|p| f.starts_with(p)) {
                return true;
            }
        }
        false
    }
}

/// A shared library from the system's library directories (libc, libstdc++, ld.so).
pub fn is_system_library(path: &str) -> bool {
    let name = Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("");
    let in_system_dir = [
        "/lib/",
        "/lib64/",
        "/usr/lib/",
        "/usr/lib64/",
        "/usr/local/lib/",
    ]
    .iter()
    .any(|d| path.starts_with(d));
    in_system_dir && (name.contains(".so") || name.starts_with("ld-linux"))
}

struct Loaded {
    /// Symbol tables of the binary itself.
    binary: Option<addr2line::Loader>,
    /// DWARF (and symbols) from the debug file, when separate or the binary itself.
    debug: Option<addr2line::Loader>,
}

/// Where to look for debug files beyond the defaults.
#[derive(Clone, Debug, Default)]
pub struct SymbolizeOptions {
    /// Extra directories searched by build-id (`DIR/.build-id/xx/yyyy.debug`) and by
    /// debuglink name.
    pub debug_dirs: Vec<PathBuf>,
}

/// Symbolizes frames of one recording, loading each module at most once.
pub struct Symbolizer {
    opts: SymbolizeOptions,
    modules: HashMap<u32, ModuleDef>,
    loaded: HashMap<u32, Option<Loaded>>,
    cache: HashMap<(u32, u64, bool), Vec<SymFrame>>,
    /// Frames stored in the recording by `rltrace pack`; used before any file.
    packed: HashMap<(u32, u64), Vec<PackedFrame>>,
    /// Remote debug info, when `DEBUGINFOD_URLS` is set; created on first need.
    debuginfod: Option<Option<debuginfod::Debuginfod>>,
    warnings: Vec<String>,
}

impl Symbolizer {
    /// A symbolizer with no modules yet.
    pub fn new(opts: SymbolizeOptions) -> Self {
        Symbolizer {
            opts,
            modules: HashMap::new(),
            loaded: HashMap::new(),
            cache: HashMap::new(),
            packed: HashMap::new(),
            debuginfod: None,
            warnings: Vec::new(),
        }
    }

    /// Learns the symbols of one address from a packed recording.
    pub fn add_packed(&mut self, p: PackedAddress) {
        self.packed.insert((p.module, p.addr), p.frames);
    }

    /// What `rltrace pack` stores for a stack frame: its symbols as replay would show them.
    pub fn pack(&mut self, f: &Frame) -> Option<PackedAddress> {
        let module = f.module?;
        let frames = self
            .frames(f, true)
            .into_iter()
            .map(|s| PackedFrame {
                function: s.function,
                file: s.file,
                line: s.line.unwrap_or(0),
                column: s.column.unwrap_or(0),
                inlined: s.inlined,
            })
            .collect();
        Some(PackedAddress {
            module,
            addr: f.addr,
            frames,
        })
    }

    /// Learns a module from the recording.
    pub fn add_module(&mut self, m: ModuleDef) {
        self.modules.insert(m.id, m);
    }

    /// The recorded module, if known.
    pub fn module(&self, id: u32) -> Option<&ModuleDef> {
        self.modules.get(&id)
    }

    /// Problems met while loading modules (vanished binaries, build-id mismatches).
    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }

    /// Symbolizes one frame, innermost inlined function first. `return_address` frames are
    /// looked up one byte back, inside the call instruction.
    pub fn frames(&mut self, f: &Frame, return_address: bool) -> Vec<SymFrame> {
        let Some(mid) = f.module else {
            return vec![SymFrame {
                module: String::new(),
                addr: f.addr,
                ..Default::default()
            }];
        };
        if let Some(v) = self.cache.get(&(mid, f.addr, return_address)) {
            return v.clone();
        }
        let v = self.lookup(mid, f.addr, return_address);
        self.cache.insert((mid, f.addr, return_address), v.clone());
        v
    }

    fn lookup(&mut self, mid: u32, addr: u64, return_address: bool) -> Vec<SymFrame> {
        let module = self
            .modules
            .get(&mid)
            .map(|m| m.path.clone())
            .unwrap_or_default();
        if let Some(frames) = self.packed.get(&(mid, addr)) {
            // Packed frames are of return addresses, as every stored stack frame is.
            return frames
                .iter()
                .map(|p| SymFrame {
                    function: p.function.clone(),
                    file: p.file.clone(),
                    line: (p.line != 0).then_some(p.line),
                    column: (p.column != 0).then_some(p.column),
                    inlined: p.inlined,
                    module: module.clone(),
                    addr,
                })
                .collect();
        }
        let probe = if return_address {
            addr.saturating_sub(1)
        } else {
            addr
        };
        if !self.loaded.contains_key(&mid) {
            let l = self.load(mid);
            self.loaded.insert(mid, l);
        }
        let base = SymFrame {
            module: module.clone(),
            addr,
            ..Default::default()
        };
        let Some(Some(l)) = self.loaded.get(&mid) else {
            return vec![base];
        };
        let mut out = Vec::new();
        if let Some(dbg) = &l.debug {
            if let Ok(mut it) = dbg.find_frames(probe) {
                while let Ok(Some(fr)) = it.next() {
                    let function = fr
                        .function
                        .as_ref()
                        .and_then(|n| n.demangle().ok().map(|c| c.into_owned()));
                    let (file, line, column) = match fr.location {
                        Some(loc) => (loc.file.map(str::to_string), loc.line, loc.column),
                        None => (None, None, None),
                    };
                    out.push(SymFrame {
                        function,
                        file,
                        line,
                        column,
                        inlined: false,
                        module: module.clone(),
                        addr,
                    });
                }
            }
        }
        let n = out.len();
        for (i, fr) in out.iter_mut().enumerate() {
            fr.inlined = i + 1 < n;
        }
        if out.iter().all(|f| f.function.is_none()) {
            let sym = l
                .debug
                .as_ref()
                .and_then(|d| d.find_symbol(probe))
                .or_else(|| l.binary.as_ref().and_then(|b| b.find_symbol(probe)));
            if let Some(name) = sym {
                let name = addr2line::demangle_auto(Cow::from(name), None).into_owned();
                match out.first_mut() {
                    Some(f) => f.function = Some(name),
                    None => out.push(SymFrame {
                        function: Some(name),
                        ..base.clone()
                    }),
                }
            }
        }
        if out.is_empty() {
            out.push(base);
        }
        out
    }

    fn load(&mut self, mid: u32) -> Option<Loaded> {
        let m = self.modules.get(&mid)?.clone();
        let path = Path::new(&m.path);
        let binary = match ElfInfo::open(path) {
            Ok(info) if m.build_id.is_empty() || info.build_id == m.build_id => Some(info),
            Ok(info) => {
                self.warnings.push(format!(
                    "{}: build-id {} on disk differs from the recorded {}; not using it",
                    m.path,
                    hex(&info.build_id),
                    hex(&m.build_id)
                ));
                None
            }
            Err(e) => {
                let why = match e {
                    crate::elf::ElfError::Io { source, .. } => source.to_string(),
                    crate::elf::ElfError::Parse { source, .. } => source.to_string(),
                };
                self.warnings.push(format!(
                    "{}: cannot read the module ({why}); its frames stay unsymbolized unless debug info is found by build-id",
                    m.path
                ));
                None
            }
        };
        let debug_path = self.find_debug_file(&m, binary.as_ref());
        let binary_loader = binary
            .as_ref()
            .and_then(|_| addr2line::Loader::new(path).ok());
        let debug = debug_path.and_then(|p| addr2line::Loader::new(&p).ok());
        if binary_loader.is_none() && debug.is_none() {
            return None;
        }
        Some(Loaded {
            binary: binary_loader,
            debug,
        })
    }

    /// Finds DWARF for a module, in order: the binary itself, `--debug-dir`s (by build-id,
    /// then by debuglink name), `.gnu_debuglink` next to the binary, the system's
    /// `/usr/lib/debug/.build-id/`, and debuginfod. A file whose build-id differs from the
    /// recorded one is never used.
    fn find_debug_file(&mut self, m: &ModuleDef, binary: Option<&ElfInfo>) -> Option<PathBuf> {
        if let Some(p) = local_debug_file(&m.path, &m.build_id, binary, &self.opts.debug_dirs) {
            return Some(p);
        }
        let client = self
            .debuginfod
            .get_or_insert_with(debuginfod::Debuginfod::from_env);
        client.as_mut()?.debuginfo(&m.build_id, &mut self.warnings)
    }
}

/// DWARF for the module at `path` with `build_id` found on this machine, without asking
/// debuginfod: the binary itself (`binary`, its parsed form, if readable), then in
/// `debug_dirs` (by build-id, then by debuglink name), `.gnu_debuglink` next to the binary,
/// and the system's `/usr/lib/debug/.build-id/`. A file whose build-id differs is never
/// used.
pub fn local_debug_file(
    path: &str,
    build_id: &[u8],
    binary: Option<&ElfInfo>,
    debug_dirs: &[PathBuf],
) -> Option<PathBuf> {
    if let Some(b) = binary {
        if b.has_dwarf() {
            return Some(PathBuf::from(path));
        }
    }
    let matches = |p: &Path| -> bool {
        match ElfInfo::open(p) {
            Ok(i) => (build_id.is_empty() || i.build_id == build_id) && i.has_dwarf(),
            Err(_) => false,
        }
    };
    let id = (build_id.len() >= 2).then(|| hex(build_id));
    let by_id = |root: &Path| -> Option<PathBuf> {
        let id = id.as_ref()?;
        Some(
            root.join(".build-id")
                .join(&id[..2])
                .join(format!("{}.debug", &id[2..])),
        )
    };
    let link = binary.and_then(ElfInfo::debuglink).map(|(name, _crc)| name);
    let bin_dir = Path::new(path)
        .parent()
        .unwrap_or(Path::new("/"))
        .to_path_buf();
    let mut candidates: Vec<PathBuf> = Vec::new();
    for d in debug_dirs {
        candidates.extend(by_id(d));
        if let Some(name) = &link {
            candidates.push(
                d.join(bin_dir.strip_prefix("/").unwrap_or(&bin_dir))
                    .join(name),
            );
            candidates.push(d.join(name));
        }
    }
    if let Some(name) = &link {
        candidates.push(bin_dir.join(name));
        candidates.push(bin_dir.join(".debug").join(name));
        candidates.push(
            Path::new("/usr/lib/debug")
                .join(bin_dir.strip_prefix("/").unwrap_or(&bin_dir))
                .join(name),
        );
    }
    candidates.extend(by_id(Path::new("/usr/lib/debug")));
    candidates.into_iter().find(|p| matches(p))
}
