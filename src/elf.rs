//! The few facts rltrace needs from an ELF file: build-id, load segments, defined
//! functions, unwind sections. Shared by the recorder and the symbolizer.

use std::fs::File;
use std::ops::{Deref, Range};
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;
use object::elf;
use object::read::elf::{ElfFile64, ProgramHeader, Sym};
use object::{Endianness, Object, ObjectSection, ObjectSymbol};

/// Errors inspecting an ELF file.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    /// The file could not be opened or mapped.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a 64-bit ELF file object can parse.
    #[error("{path}: not a 64-bit ELF file: {source}")]
    Parse {
        /// The file.
        path: String,
        /// The cause.
        source: object::Error,
    },
}

/// A read-only mapping of a whole file, shared by everything that slices it.
#[derive(Clone)]
pub struct MappedFile(Arc<Mmap>);

impl MappedFile {
    /// Maps `path` read-only.
    pub fn open(path: &Path) -> Result<Self, ElfError> {
        let io = |source| ElfError::Io {
            path: path.display().to_string(),
            source,
        };
        // Paths come from recordings, which are untrusted: opening a FIFO would block and
        // a device could be endless, so only regular files are opened.
        let meta = std::fs::metadata(path).map_err(io)?;
        if !meta.is_file() {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file",
            )));
        }
        let file = File::open(path).map_err(io)?;
        // SAFETY: the mapping is private and read-only; a file truncated underneath us
        // could fault, which is the accepted risk of every debugger and symbolizer that
        // maps binaries (addr2line, gdb) — they are not rewritten in place in practice.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        Ok(MappedFile(Arc::new(map)))
    }

    /// A shared slice of the file.
    pub fn slice(&self, range: Range<usize>) -> FileSlice {
        FileSlice {
            file: self.clone(),
            range,
        }
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// A byte range of a [`MappedFile`] that keeps the mapping alive.
#[derive(Clone)]
pub struct FileSlice {
    file: MappedFile,
    range: Range<usize>,
}

impl Deref for FileSlice {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.file.0.get(self.range.clone()).unwrap_or(&[])
    }
}

/// A `PT_LOAD` segment.
#[derive(Clone, Copy, Debug)]
pub struct LoadSegment {
    /// File offset.
    pub offset: u64,
    /// Stated virtual address.
    pub vaddr: u64,
    /// Bytes in the file.
    pub filesz: u64,
}

/// A parsed ELF file with the facts rltrace uses.
pub struct ElfInfo {
    /// The mapping.
    pub file: MappedFile,
    /// GNU build-id, empty if absent.
    pub build_id: Vec<u8>,
    /// Load segments.
    pub loads: Vec<LoadSegment>,
    /// Path it was opened from, for messages.
    pub path: String,
}

impl ElfInfo {
    /// Opens and parses `path`.
    pub fn open(path: &Path) -> Result<Self, ElfError> {
        let file = MappedFile::open(path)?;
        let shown = path.display().to_string();
        let parsed =
            ElfFile64::<Endianness>::parse(file.bytes()).map_err(|source| ElfError::Parse {
                path: shown.clone(),
                source,
            })?;
        let build_id = parsed
            .build_id()
            .ok()
            .flatten()
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        let endian = parsed.endian();
        let loads = parsed
            .elf_program_headers()
            .iter()
            .filter(|ph| ph.p_type(endian) == elf::PT_LOAD)
            .map(|ph| LoadSegment {
                offset: ph.p_offset(endian),
                vaddr: ph.p_vaddr(endian),
                filesz: ph.p_filesz(endian),
            })
            .collect();
        Ok(ElfInfo {
            file,
            build_id,
            loads,
            path: shown,
        })
    }

    /// The load bias for a mapping of this file at `start` from file offset `offset`.
    pub fn bias(&self, start: u64, offset: u64) -> Option<u64> {
        let seg = self
            .loads
            .iter()
            .find(|s| offset >= s.offset && offset < s.offset + s.filesz.max(1))?;
        Some(start.wrapping_sub(seg.vaddr + (offset - seg.offset)))
    }

    /// Stated addresses of the global or weak functions named in `names` that this file
    /// defines, as `(index into names, address)`. GNU IFUNC resolvers are skipped: their
    /// symbol value is the resolver, not the function. With `allow_local` (the main
    /// executable, where nothing can interpose), a local definition counts for a name that
    /// has no global one: static-pie glibc makes `malloc` local.
    pub fn defined_functions(&self, names: &[&str], allow_local: bool) -> Vec<(usize, u64)> {
        let Ok(parsed) = ElfFile64::<Endianness>::parse(self.file.bytes()) else {
            return Vec::new();
        };
        let endian = parsed.endian();
        let mut out = Vec::new();
        let mut locals = Vec::new();
        for sym in parsed.dynamic_symbols().chain(parsed.symbols()) {
            let raw = sym.elf_symbol();
            let bind = raw.st_bind();
            if raw.st_type() != elf::STT_FUNC
                || raw.st_shndx(endian) == elf::SHN_UNDEF
                || raw.st_value(endian) == 0
            {
                continue;
            }
            let Ok(name) = sym.name() else { continue };
            let Some(i) = names.iter().position(|n| *n == name) else {
                continue;
            };
            let entry = (i, raw.st_value(endian));
            let list = match bind {
                elf::STB_GLOBAL | elf::STB_WEAK => &mut out,
                elf::STB_LOCAL if allow_local => &mut locals,
                _ => continue,
            };
            if !list.contains(&entry) {
                list.push(entry);
            }
        }
        for (i, addr) in locals {
            if !out.iter().any(|(j, _)| *j == i) {
                out.push((i, addr));
            }
        }
        out
    }

    /// Every function this file defines globally (or weakly), for filters: `(name, stated
    /// address, is a GNU IFUNC)`. With `with_local` (the main executable) local functions
    /// from `.symtab` count too.
    pub fn function_symbols(&self, with_local: bool) -> Vec<(String, u64, bool)> {
        let Ok(parsed) = ElfFile64::<Endianness>::parse(self.file.bytes()) else {
            return Vec::new();
        };
        let endian = parsed.endian();
        let mut out: Vec<(String, u64, bool)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for sym in parsed.dynamic_symbols().chain(parsed.symbols()) {
            let raw = sym.elf_symbol();
            if !defines_function(raw, endian, with_local) {
                continue;
            }
            let Ok(name) = sym.name() else { continue };
            if name.is_empty() || !seen.insert((name.to_string(), raw.st_value(endian))) {
                continue;
            }
            out.push((
                name.to_string(),
                raw.st_value(endian),
                raw.st_type() == elf::STT_GNU_IFUNC,
            ));
        }
        out
    }

    /// The functions this file imports, with the GOT slot each is called through
    /// (`JUMP_SLOT` and `GLOB_DAT` relocations against undefined function symbols):
    /// `(symbol name, stated slot address)`. A name can have two slots (a lazily bound
    /// call and a function pointer).
    pub fn imported_functions(&self) -> Vec<(String, u64)> {
        use object::{ObjectSymbolTable, RelocationFlags, RelocationTarget};
        let Ok(parsed) = ElfFile64::<Endianness>::parse(self.file.bytes()) else {
            return Vec::new();
        };
        let (Some(relocs), Some(dynsyms)) =
            (parsed.dynamic_relocations(), parsed.dynamic_symbol_table())
        else {
            return Vec::new();
        };
        let endian = parsed.endian();
        let mut out = Vec::new();
        for (offset, rel) in relocs {
            let RelocationFlags::Elf { r_type } = rel.flags() else {
                continue;
            };
            if r_type != elf::R_X86_64_JUMP_SLOT && r_type != elf::R_X86_64_GLOB_DAT {
                continue;
            }
            let RelocationTarget::Symbol(idx) = rel.target() else {
                continue;
            };
            let Ok(sym) = dynsyms.symbol_by_index(idx) else {
                continue;
            };
            let raw = sym.elf_symbol();
            let ty = raw.st_type();
            if raw.st_shndx(endian) != elf::SHN_UNDEF
                || (ty != elf::STT_FUNC && ty != elf::STT_GNU_IFUNC)
            {
                continue;
            }
            if let Ok(name) = sym.name() {
                if !name.is_empty() {
                    out.push((name.to_string(), offset));
                }
            }
        }
        out
    }

    /// The slots this file's `R_X86_64_IRELATIVE` relocations fill with what a GNU IFUNC
    /// resolver returns: `(stated slot address, stated resolver address)`. A library calls
    /// its own IFUNCs (glibc's `strlen` inside `puts`) through these.
    pub fn irelative_slots(&self) -> Vec<(u64, u64)> {
        use object::RelocationFlags;
        let Ok(parsed) = ElfFile64::<Endianness>::parse(self.file.bytes()) else {
            return Vec::new();
        };
        let Some(relocs) = parsed.dynamic_relocations() else {
            return Vec::new();
        };
        relocs
            .filter_map(|(offset, rel)| match rel.flags() {
                RelocationFlags::Elf { r_type } if r_type == elf::R_X86_64_IRELATIVE => {
                    Some((offset, rel.addend() as u64))
                }
                _ => None,
            })
            .collect()
    }

    /// The PLT entries of this file that jump through a GOT slot (`.plt`, and `.plt.sec`
    /// of IBT builds): `(stated slot address, stated entry address)`. Under lazy binding
    /// an entry is where the program's calls to an import can be seen before the loader
    /// has resolved its slot.
    pub fn plt_entries(&self) -> Vec<(u64, u64)> {
        let Ok(parsed) = ElfFile64::<Endianness>::parse(self.file.bytes()) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for name in [".plt", ".plt.sec"] {
            let Some(sec) = parsed.section_by_name(name) else {
                continue;
            };
            let Ok(code) = sec.data() else { continue };
            let base = sec.address();
            for (i, entry) in code.chunks_exact(16).enumerate() {
                let at = base + 16 * i as u64;
                if let Some(slot) = plt_slot(entry, at) {
                    out.push((slot, at));
                }
            }
        }
        out
    }

    /// True if the file carries DWARF line or debug info.
    pub fn has_dwarf(&self) -> bool {
        let Ok(parsed) = ElfFile64::<Endianness>::parse(self.file.bytes()) else {
            return false;
        };
        [".debug_info", ".debug_line"].iter().any(|n| {
            parsed
                .section_by_name(n)
                .is_some_and(|s| s.size() > 0 && s.kind() != object::SectionKind::UninitializedData)
        })
    }

    /// The file name and CRC from `.gnu_debuglink`, if present.
    pub fn debuglink(&self) -> Option<(String, u32)> {
        let parsed = ElfFile64::<Endianness>::parse(self.file.bytes()).ok()?;
        let (name, crc) = parsed.gnu_debuglink().ok().flatten()?;
        Some((String::from_utf8_lossy(name).into_owned(), crc))
    }

    /// Looks up one symbol's stated address (any type, global or local).
    pub fn symbol_address(&self, name: &str) -> Option<u64> {
        let parsed = ElfFile64::<Endianness>::parse(self.file.bytes()).ok()?;
        let found = parsed
            .dynamic_symbols()
            .chain(parsed.symbols())
            .find(|s| s.name() == Ok(name) && s.is_definition())
            .map(|s| s.address());
        found
    }

    /// The sections framehop needs to unwind through this file.
    pub fn unwind_info(&self) -> framehop::ExplicitModuleSectionInfo<FileSlice> {
        let mut info = framehop::ExplicitModuleSectionInfo {
            base_svma: 0,
            text_svma: None,
            text: None,
            stubs_svma: None,
            stub_helper_svma: None,
            got_svma: None,
            unwind_info: None,
            eh_frame_svma: None,
            eh_frame: None,
            eh_frame_hdr_svma: None,
            eh_frame_hdr: None,
            debug_frame: None,
            text_segment_svma: None,
            text_segment: None,
        };
        let Ok(parsed) = ElfFile64::<Endianness>::parse(self.file.bytes()) else {
            return info;
        };
        let section = |name: &str| -> Option<(Range<u64>, FileSlice)> {
            let s = parsed.section_by_name(name)?;
            let (off, size) = s.file_range()?;
            let range = s.address()..s.address() + s.size();
            Some((range, self.file.slice(off as usize..(off + size) as usize)))
        };
        if let Some((r, d)) = section(".text") {
            info.text_svma = Some(r);
            info.text = Some(d);
        }
        if let Some((r, d)) = section(".eh_frame") {
            info.eh_frame_svma = Some(r);
            info.eh_frame = Some(d);
        }
        if let Some((r, d)) = section(".eh_frame_hdr") {
            info.eh_frame_hdr_svma = Some(r);
            info.eh_frame_hdr = Some(d);
        }
        if let Some((r, _)) = section(".got") {
            info.got_svma = Some(r);
        }
        if let Some((_, d)) = section(".debug_frame") {
            info.debug_frame = Some(d);
        }
        info
    }
}

/// The GOT slot a 16-byte PLT entry at `at` jumps through: `jmp *slot(%rip)`, possibly
/// with a `bnd` prefix and after an `endbr64`.
fn plt_slot(entry: &[u8], at: u64) -> Option<u64> {
    let start = if entry.starts_with(&[0xf3, 0x0f, 0x1e, 0xfa]) {
        4
    } else {
        0
    };
    let ins = entry.get(start..)?;
    let (len, disp) = match ins {
        [0xff, 0x25, d @ ..] => (6, d),
        [0xf2, 0xff, 0x25, d @ ..] => (7, d),
        _ => return None,
    };
    let disp = i32::from_le_bytes(disp.get(..4)?.try_into().ok()?);
    Some(
        at.wrapping_add((start + len) as u64)
            .wrapping_add(disp as i64 as u64),
    )
}

/// Formats a build-id as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Those of `names` that the executable at `path` defines and exports (its dynamic symbol
/// table), in the order of `names`: definitions every library's calls bind to before any
/// preloaded library's.
pub fn exported_functions<'n>(path: &Path, names: &[&'n str]) -> Vec<&'n str> {
    let Ok(file) = MappedFile::open(path) else {
        return Vec::new();
    };
    let Ok(parsed) = ElfFile64::<Endianness>::parse(file.bytes()) else {
        return Vec::new();
    };
    let endian = parsed.endian();
    let mut out = Vec::new();
    for sym in parsed.dynamic_symbols() {
        if !defines_function(sym.elf_symbol(), endian, false) {
            continue;
        }
        let Ok(name) = sym.name() else { continue };
        if let Some(n) = names.iter().find(|n| **n == name) {
            if !out.contains(n) {
                out.push(*n);
            }
        }
    }
    out.sort_by_key(|n| names.iter().position(|m| m == n));
    out
}

/// The file name of the library defining each of `names` that one does: the first of
/// `libraries` (paths, in load order) to export it, as the loader binds it.
pub fn definers<'n, 'l>(
    names: &[&'n str],
    libraries: impl IntoIterator<Item = &'l str>,
) -> std::collections::HashMap<&'n str, &'l str> {
    let mut found = std::collections::HashMap::new();
    let mut left = names.to_vec();
    for path in libraries {
        if left.is_empty() {
            break;
        }
        let file = path.rsplit('/').next().unwrap_or(path);
        let defined = exported_functions(Path::new(path), &left);
        for n in &defined {
            found.entry(*n).or_insert(file);
        }
        left.retain(|n| !defined.contains(n));
    }
    found
}

/// Whether `raw` is a function (or GNU IFUNC) the file defines at an address, bound
/// globally or weakly (or locally, with `with_local`).
fn defines_function(raw: &elf::Sym64<Endianness>, endian: Endianness, with_local: bool) -> bool {
    let ty = raw.st_type();
    let bind = raw.st_bind();
    (ty == elf::STT_FUNC || ty == elf::STT_GNU_IFUNC)
        && raw.st_shndx(endian) != elf::SHN_UNDEF
        && raw.st_value(endian) != 0
        && (bind == elf::STB_GLOBAL
            || bind == elf::STB_WEAK
            || (with_local && bind == elf::STB_LOCAL))
}

/// True unless `path` is an ELF executable without a program interpreter (statically
/// linked: nothing can be preloaded into it). Files that are not ELF (scripts) count as
/// dynamic: their interpreter is what runs.
pub fn is_dynamic(path: &Path) -> bool {
    let Ok(file) = MappedFile::open(path) else {
        return true;
    };
    match ElfFile64::<Endianness>::parse(file.bytes()) {
        Ok(parsed) => {
            let e = parsed.endian();
            parsed
                .elf_program_headers()
                .iter()
                .any(|p| p.p_type(e) == elf::PT_INTERP)
        }
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The C library this test binary runs with: its first mapping, and the file.
    fn this_libc() -> (crate::record::procfs::Mapping, ElfInfo) {
        let maps = crate::record::procfs::read_maps(std::process::id()).unwrap();
        let libc = maps
            .into_iter()
            .find(|m| m.path.contains("libc.so"))
            .expect("test binary links libc");
        let info = ElfInfo::open(Path::new(&libc.path)).unwrap();
        (libc, info)
    }

    #[test]
    fn the_c_librarys_irelative_slots_name_its_ifunc_resolvers() {
        let (_, info) = this_libc();
        let resolvers: std::collections::HashSet<u64> = info
            .function_symbols(false)
            .into_iter()
            .filter(|s| s.2)
            .map(|s| s.1)
            .collect();
        let slots = info.irelative_slots();
        // Most are exported IFUNCs' resolvers (some, internal ones without a symbol).
        let exported = slots.iter().filter(|(_, r)| resolvers.contains(r)).count();
        assert!(exported * 2 > slots.len(), "{slots:x?}");
        let strlen = info
            .function_symbols(false)
            .into_iter()
            .find(|s| s.0 == "strlen")
            .unwrap();
        assert!(strlen.2, "strlen is an IFUNC");
        assert!(slots.iter().any(|(_, r)| *r == strlen.1));
    }

    #[test]
    fn plt_entries_name_the_slot_they_jump_through() {
        // .plt (lazy): jmp *0x2fe2(%rip); push $0; jmp PLT0.
        let plt = [
            0xff, 0x25, 0xe2, 0x2f, 0, 0, 0x68, 0, 0, 0, 0, 0xe9, 0xe0, 0xff, 0xff, 0xff,
        ];
        assert_eq!(plt_slot(&plt, 0x1030), Some(0x1036 + 0x2fe2));
        // .plt.sec (IBT): endbr64; bnd jmp *0x2fbd(%rip); nop.
        let sec = [
            0xf3, 0x0f, 0x1e, 0xfa, 0xf2, 0xff, 0x25, 0xbd, 0x2f, 0, 0, 0x0f, 0x1f, 0x44, 0, 0,
        ];
        assert_eq!(plt_slot(&sec, 0x1050), Some(0x1050 + 11 + 0x2fbd));
        // A negative displacement, and the lazy stub of an IBT .plt (no jump through a slot).
        let back = [
            0xff, 0x25, 0xf0, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(plt_slot(&back, 0x2000), Some(0x2006 - 0x10));
        let stub = [
            0xf3, 0x0f, 0x1e, 0xfa, 0x68, 0, 0, 0, 0, 0xf2, 0xe9, 0xe1, 0xff, 0xff, 0xff, 0x90,
        ];
        assert_eq!(plt_slot(&stub, 0x1020), None);
    }

    #[test]
    fn an_executables_plt_entries_jump_through_its_imports_slots() {
        // This test binary calls malloc through its PLT: the entry jumps through the slot
        // of the malloc import (which may have a second slot, for its address).
        let exe = ElfInfo::open(&std::env::current_exe().unwrap()).unwrap();
        let entries = exe.plt_entries();
        assert!(!entries.is_empty());
        let imported = exe.imported_functions();
        assert!(
            imported
                .iter()
                .any(|(n, m)| n == "malloc" && entries.iter().any(|(s, _)| s == m)),
            "{entries:x?}"
        );
        // Every entry jumps through its own slot in the GOT.
        let bytes = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let parsed = ElfFile64::<Endianness>::parse(&bytes[..]).unwrap();
        let got: Vec<(u64, u64)> = [".got", ".got.plt"]
            .iter()
            .filter_map(|n| parsed.section_by_name(n))
            .map(|s| (s.address(), s.address() + s.size()))
            .collect();
        assert!(
            entries
                .iter()
                .all(|(s, _)| got.iter().any(|(lo, hi)| (*lo..*hi).contains(s))),
            "{entries:x?} {got:x?}"
        );
        let mut slots: Vec<u64> = entries.iter().map(|(s, _)| *s).collect();
        slots.sort_unstable();
        slots.dedup();
        assert_eq!(slots.len(), entries.len());
    }

    #[test]
    fn libc_defines_the_allocator() {
        let (libc, info) = this_libc();
        assert_eq!(info.build_id.len(), 20);
        let found = info.defined_functions(&["malloc", "free", "no_such_function"], false);
        assert!(found.iter().any(|(i, _)| *i == 0));
        assert!(found.iter().any(|(i, _)| *i == 1));
        assert!(!found.iter().any(|(i, _)| *i == 2));
        // The bias of the mapping must put malloc's stated address at its runtime address.
        let bias = info.bias(libc.start, libc.offset).unwrap();
        let (_, malloc_svma) = found.iter().find(|(i, _)| *i == 0).unwrap();
        assert_eq!(
            bias + malloc_svma,
            libc::malloc as *const () as usize as u64
        );
    }
}
