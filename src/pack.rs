//! `rltrace pack`: stores in a recording what replay needs on a machine without the
//! recorded binaries — the symbols of every address its stacks reference and, optionally,
//! the source lines they point at. Nothing else is stored, so the size stays bounded by
//! what the recording references.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use crate::format::{self, open_file, FormatError, OpenError, Record, SourceLine};
use crate::render::SourceCache;
use crate::symbolize::{SymbolizeOptions, Symbolizer};

/// What to pack.
#[derive(Clone, Debug, Default)]
pub struct PackOptions {
    /// Also store the source lines the symbols point at.
    pub sources: bool,
    /// Where to find debug info.
    pub symbolize: SymbolizeOptions,
}

/// What packing did.
#[derive(Debug)]
pub struct PackSummary {
    /// Addresses symbolized.
    pub addresses: usize,
    /// Frames stored (inlined frames count separately).
    pub frames: usize,
    /// Source lines stored.
    pub source_lines: usize,
    /// Size of the input.
    pub size_before: u64,
    /// Size of the output.
    pub size_after: u64,
    /// Problems met (binaries missing, build-ids differing).
    pub warnings: Vec<String>,
}

/// Errors of `rltrace pack`.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// The recording could not be opened.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The packed copy could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The recording is unreadable past its header.
    #[error("{path}: {source}")]
    Format {
        /// The file.
        path: String,
        /// The cause.
        source: FormatError,
    },
}

/// Packs `input` into `output` (which may be the same path: the file is replaced only once
/// the packed copy is complete).
pub fn pack(input: &Path, output: &Path, opts: &PackOptions) -> Result<PackSummary, PackError> {
    let shown = input.display().to_string();
    let fmt = |source| PackError::Format {
        path: shown.clone(),
        source,
    };
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let size_before = size(input);
    // Pass 1: the modules and every frame the stacks reference.
    let mut sym = Symbolizer::new(opts.symbolize.clone());
    let mut sources = SourceCache::default();
    let mut frames = BTreeSet::new();
    let mut reader = open_file(input)?;
    while let Some(rec) = reader.next_record().map_err(fmt)? {
        match rec {
            Record::Module(m) => sym.add_module(m),
            // Packing a packed recording keeps what it already knew.
            Record::Packed(p) => sym.add_packed(p),
            Record::Source(l) => sources.add_packed(l),
            Record::Stack(s) => frames.extend(s.frames.into_iter().filter(|f| f.module.is_some())),
            _ => {}
        }
    }
    let mut symbols = Vec::with_capacity(frames.len());
    let mut wanted_lines: BTreeMap<(String, u32), ()> = BTreeMap::new();
    for f in &frames {
        if let Some(p) = sym.pack(f) {
            for fr in &p.frames {
                if let (Some(file), true) = (&fr.file, fr.line > 0) {
                    wanted_lines.insert((file.clone(), fr.line), ());
                }
            }
            symbols.push(p);
        }
    }
    let mut lines = Vec::new();
    if opts.sources {
        for (file, line) in wanted_lines.into_keys() {
            if let Some(text) = sources.line(&file, line) {
                lines.push(SourceLine {
                    text: text.to_string(),
                    file,
                    line,
                });
            }
        }
    }

    // Pass 2: a copy with the symbols in front, written next to the output and renamed.
    let tmp = temp_path(output);
    let io = |source| PackError::Io {
        path: tmp.display().to_string(),
        source,
    };
    let result = (|| {
        let out = BufWriter::new(File::create(&tmp).map_err(io)?);
        let source = open_file(input)?;
        let out = format::writer::write_packed(out, source, &symbols, &lines).map_err(fmt)?;
        out.into_inner()
            .map_err(|e| io(e.into_error()))?
            .sync_all()
            .map_err(io)?;
        std::fs::rename(&tmp, output).map_err(|source| PackError::Io {
            path: output.display().to_string(),
            source,
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    Ok(PackSummary {
        addresses: symbols.len(),
        frames: symbols.iter().map(|s| s.frames.len()).sum(),
        source_lines: lines.len(),
        size_before,
        size_after: size(output),
        warnings: sym.take_warnings(),
    })
}

fn temp_path(output: &Path) -> PathBuf {
    let mut name = output
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".packing-{}", std::process::id()));
    output.with_file_name(name)
}
