//! Prototypes from DWARF: a function's parameter and return types, where its module has
//! debug info, mapped onto what rltrace captures and shows (`int`, `unsigned`, `char`,
//! `char *` strings, pointers). Functions whose values do not all travel in integer
//! registers (floating point, structs or unions by value, 128-bit integers) or that take
//! variable arguments get no prototype: they stay six registers in hex.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use addr2line::gimli;
use gimli::{AttributeValue, EndianSlice, RunTimeEndian, UnitOffset};
use object::{Object, ObjectSection};

use crate::protos::{Loaded, Ty};

type R<'a> = EndianSlice<'a, RunTimeEndian>;

/// Prototypes of the functions defined in the file at `path` that `wanted` accepts (by
/// symbol name: the linkage name when there is one). Empty without debug info.
pub fn prototypes(path: &Path, wanted: &dyn Fn(&str) -> bool) -> Vec<Loaded> {
    prototypes_in(path, wanted, None)
}

/// A debug file's DWARF sections: compressed ones (distributions compress them)
/// decompressed, the others read where the file is mapped.
struct Sections {
    file: crate::elf::MappedFile,
    endian: RunTimeEndian,
    data: HashMap<gimli::SectionId, Section>,
}

enum Section {
    /// Bytes of the mapped file.
    Mapped(std::ops::Range<usize>),
    /// Decompressed.
    Owned(Vec<u8>),
}

impl Sections {
    /// The sections prototypes are read from; `None` without `.debug_info`.
    fn load(path: &Path) -> Option<Sections> {
        let file = crate::elf::MappedFile::open(path).ok()?;
        let obj = object::File::parse(file.bytes()).ok()?;
        let endian = if obj.is_little_endian() {
            RunTimeEndian::Little
        } else {
            RunTimeEndian::Big
        };
        let mut data = HashMap::new();
        for id in [
            gimli::SectionId::DebugAbbrev,
            gimli::SectionId::DebugInfo,
            // Units refer to their line programs, which gimli parses with the unit.
            gimli::SectionId::DebugLine,
            gimli::SectionId::DebugStr,
            gimli::SectionId::DebugLineStr,
            gimli::SectionId::DebugStrOffsets,
            gimli::SectionId::DebugAddr,
            gimli::SectionId::DebugRngLists,
            gimli::SectionId::DebugRanges,
            gimli::SectionId::DebugAranges,
        ] {
            let Some(section) = obj.section_by_name(id.name()) else {
                continue;
            };
            let Ok(bytes) = section.uncompressed_data() else {
                continue;
            };
            let kept = match bytes {
                Cow::Borrowed(b) => {
                    // A slice of the mapping itself: keep where it is.
                    let Some(at) =
                        (b.as_ptr() as usize).checked_sub(file.bytes().as_ptr() as usize)
                    else {
                        continue;
                    };
                    Section::Mapped(at..at + b.len())
                }
                Cow::Owned(v) => Section::Owned(v),
            };
            data.insert(id, kept);
        }
        drop(obj);
        data.contains_key(&gimli::SectionId::DebugInfo)
            .then_some(Sections { file, endian, data })
    }

    /// The bytes of section `id` (empty if the file has none).
    fn bytes(&self, id: gimli::SectionId) -> &[u8] {
        match self.data.get(&id) {
            Some(Section::Mapped(r)) => self.file.bytes().get(r.clone()).unwrap_or_default(),
            Some(Section::Owned(v)) => v,
            None => &[],
        }
    }

    /// Bytes decompressed and held (mapped ones are the page cache's).
    fn size(&self) -> usize {
        self.data
            .values()
            .map(|s| match s {
                Section::Owned(v) => v.len(),
                Section::Mapped(_) => 0,
            })
            .sum()
    }
}

/// [`prototypes`], reading with `within` only the compilation units `.debug_aranges`
/// says cover one of those addresses (all units when the file has no such table), so
/// that a large library's DWARF is not parsed whole for a few functions.
fn prototypes_in(
    path: &Path,
    wanted: &dyn Fn(&str) -> bool,
    within: Option<&[u64]>,
) -> Vec<Loaded> {
    Sections::load(path)
        .map(|s| prototypes_from(&s, wanted, within))
        .unwrap_or_default()
}

/// [`prototypes_in`] over sections already loaded.
fn prototypes_from(
    sections: &Sections,
    wanted: &dyn Fn(&str) -> bool,
    within: Option<&[u64]>,
) -> Vec<Loaded> {
    let dwarf = gimli::Dwarf::load(|id| -> Result<R<'_>, gimli::Error> {
        Ok(EndianSlice::new(sections.bytes(id), sections.endian))
    });
    let Ok(dwarf) = dwarf else {
        return Vec::new();
    };
    let mut out: HashMap<String, Loaded> = HashMap::new();
    let covering = within.and_then(|addrs| units_covering(&dwarf, addrs));
    match covering {
        Some(offsets) => {
            for off in offsets {
                let Ok(header) = dwarf.debug_info.header_from_offset(off) else {
                    continue;
                };
                let Ok(unit) = dwarf.unit(header) else {
                    continue;
                };
                let _ = unit_prototypes(&dwarf, &unit, wanted, &mut out);
            }
        }
        None => {
            let mut units = dwarf.units();
            while let Ok(Some(header)) = units.next() {
                let Ok(unit) = dwarf.unit(header) else {
                    continue;
                };
                let _ = unit_prototypes(&dwarf, &unit, wanted, &mut out);
            }
        }
    }
    let mut v: Vec<Loaded> = out.into_values().collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// Prototypes, from the DWARF found for the library at `path` on this machine, of those of
/// `names` that it defines: what a program importing them will reach there. A name the
/// DWARF does not know gets the prototype of an alias at the same address (glibc defines
/// `lfind` as an alias of `__lfind`, and its DWARF names `__GI_setlocale`). Only the
/// compilation units holding those functions are read, and each answer is kept for the
/// rest of the run.
pub fn for_library(path: &str, build_id: &[u8], names: &[&str]) -> Vec<Loaded> {
    /// Libraries looked at so far: (path, build-id, what is known of them).
    type Cache = Vec<(String, Vec<u8>, Arc<Mutex<Library>>)>;
    static CACHE: Mutex<Cache> = Mutex::new(Vec::new());
    let lib = {
        let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
        match cache.iter().find(|(p, b, _)| p == path && b == build_id) {
            Some((_, _, lib)) => lib.clone(),
            None => {
                let lib = Arc::new(Mutex::new(Library::open(path, build_id)));
                cache.push((path.to_string(), build_id.to_vec(), lib.clone()));
                lib
            }
        }
    };
    let mut lib = lib.lock().unwrap_or_else(|p| p.into_inner());
    lib.lookup(names)
}

/// Most bytes of decompressed DWARF kept between lookups, over all libraries. Every
/// process image asks for the prototypes of its own imports; decompressing the C
/// library's DWARF again for each was most of a shell script's recording time (85 ms a
/// process).
const KEPT_DWARF_BYTES: usize = 256 << 20;

/// Bytes of decompressed DWARF kept so far.
static KEPT: AtomicUsize = AtomicUsize::new(0);

/// What is known of one library's functions, filled in as they are asked for.
#[derive(Default)]
struct Library {
    /// The file holding its DWARF, if any.
    debug: Option<std::path::PathBuf>,
    /// Its sections, once read (while [`KEPT_DWARF_BYTES`] allows).
    sections: Option<Sections>,
    /// Address of each function the library exports.
    addr_of: HashMap<String, u64>,
    /// Every function symbol name at an address.
    names_at: HashMap<u64, Vec<String>>,
    /// Names whose symbol is a GNU IFUNC: what sits at its address is the resolver.
    ifuncs: std::collections::HashSet<String>,
    /// Answers so far, by name (`None`: no usable prototype).
    known: HashMap<String, Option<Loaded>>,
}

impl Library {
    fn open(path: &str, build_id: &[u8]) -> Library {
        let Ok(binary) = crate::elf::ElfInfo::open(Path::new(path)) else {
            return Library::default();
        };
        if !build_id.is_empty() && binary.build_id != build_id {
            return Library::default();
        }
        let Some(debug) = super::local_debug_file(path, &binary.build_id, Some(&binary), &[])
        else {
            return Library::default();
        };
        let mut lib = Library {
            debug: Some(debug.clone()),
            ..Library::default()
        };
        // What the library defines for others: its exported functions. Aliases come from
        // the debug file's symbol table too (glibc's DWARF names its functions by their
        // hidden `__GI_` labels, local symbols only it keeps).
        let exported = binary.function_symbols(false);
        for (name, addr, _) in &exported {
            lib.addr_of.entry(name.clone()).or_insert(*addr);
        }
        let mut syms = exported;
        if let Ok(d) = crate::elf::ElfInfo::open(&debug) {
            syms.extend(d.function_symbols(true));
        }
        for (name, addr, ifunc) in syms {
            if ifunc {
                lib.ifuncs.insert(name.clone());
            }
            let at = lib.names_at.entry(addr).or_default();
            if !at.contains(&name) {
                at.push(name);
            }
        }
        lib
    }

    /// The prototypes of those of `names` this library defines and describes.
    fn lookup(&mut self, names: &[&str]) -> Vec<Loaded> {
        let Some(debug) = self.debug.clone() else {
            return Vec::new();
        };
        let new: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| !self.known.contains_key(*n) && self.addr_of.contains_key(*n))
            .collect();
        if !new.is_empty() {
            // Where to look for each name: the functions at its address, or for an IFUNC
            // its implementations.
            let sources: Vec<Vec<(String, u64)>> = new.iter().map(|n| self.sources(n)).collect();
            let addrs: Vec<u64> = sources.iter().flatten().map(|(_, a)| *a).collect();
            let aliases: std::collections::HashSet<&str> =
                sources.iter().flatten().map(|(n, _)| n.as_str()).collect();
            // Read once, and kept for the next image's lookups unless that would pass
            // the budget (then read for this lookup alone).
            let mut passing = None;
            if self.sections.is_none() {
                if let Some(loaded) = Sections::load(&debug) {
                    let n = loaded.size();
                    if KEPT.fetch_add(n, Ordering::Relaxed) + n <= KEPT_DWARF_BYTES {
                        self.sections = Some(loaded);
                    } else {
                        KEPT.fetch_sub(n, Ordering::Relaxed);
                        passing = Some(loaded);
                    }
                }
            }
            let sections = self.sections.as_ref().or(passing.as_ref());
            let found: HashMap<String, Loaded> = sections
                .map(|s| prototypes_from(s, &|n: &str| aliases.contains(n), Some(&addrs)))
                .unwrap_or_default()
                .into_iter()
                .map(|p| (p.name.clone(), p))
                .collect();
            for (n, from) in new.iter().zip(&sources) {
                let proto = if self.ifuncs.contains(*n) {
                    // The implementations are one function built several ways: believed
                    // only when every one the DWARF describes agrees.
                    let mut all = from.iter().filter_map(|(c, _)| found.get(c));
                    all.next()
                        .filter(|first| all.all(|p| (&p.args, p.ret) == (&first.args, first.ret)))
                } else {
                    found
                        .get(*n)
                        .or_else(|| from.iter().find_map(|(alias, _)| found.get(alias)))
                };
                let proto = proto.map(|p| Loaded {
                    name: n.to_string(),
                    ..p.clone()
                });
                self.known.insert(n.to_string(), proto);
            }
        }
        names
            .iter()
            .filter_map(|n| self.known.get(*n)?.clone())
            .collect()
    }

    /// The functions whose DWARF may describe `name`: those at its address (aliases), or,
    /// for an IFUNC, whose symbol at that address is the resolver (`void *(void)`), its
    /// implementations: glibc names them after an IFUNC name there with a suffix
    /// (`__sin` resolves to `__sin_fma` or `__sin_sse2`, `strchr` to `__strchr_avx2`).
    fn sources(&self, name: &str) -> Vec<(String, u64)> {
        let Some(&at) = self.addr_of.get(name) else {
            return Vec::new();
        };
        let here = self.names_at.get(&at).into_iter().flatten();
        if !self.ifuncs.contains(name) {
            return here.map(|n| (n.clone(), at)).collect();
        }
        let stems: Vec<String> = here
            .filter(|n| self.ifuncs.contains(n.as_str()))
            .map(|n| format!("{n}_"))
            .collect();
        self.names_at
            .iter()
            .filter(|(a, _)| **a != at)
            .flat_map(|(a, names)| names.iter().map(move |n| (n, *a)))
            .filter(|(n, _)| {
                !self.ifuncs.contains(n.as_str()) && stems.iter().any(|s| n.starts_with(s.as_str()))
            })
            .map(|(n, a)| (n.clone(), a))
            .collect()
    }
}

/// The units whose `.debug_aranges` ranges hold one of `addrs`; `None` without such a
/// table (or one that does not parse).
fn units_covering(
    dwarf: &gimli::Dwarf<R<'_>>,
    addrs: &[u64],
) -> Option<Vec<gimli::DebugInfoOffset<usize>>> {
    let mut headers = dwarf.debug_aranges.headers();
    let mut any = false;
    let mut out = Vec::new();
    while let Ok(Some(h)) = headers.next() {
        any = true;
        let mut entries = h.entries();
        while let Ok(Some(e)) = entries.next() {
            let r = e.range();
            if addrs.iter().any(|a| (r.begin..r.end).contains(a)) {
                out.push(h.debug_info_offset());
                break;
            }
        }
    }
    any.then_some(out)
}

fn unit_prototypes(
    dwarf: &gimli::Dwarf<R<'_>>,
    unit: &gimli::Unit<R<'_>>,
    wanted: &dyn Fn(&str) -> bool,
    out: &mut HashMap<String, Loaded>,
) -> Result<(), gimli::Error> {
    let mut tree = unit.entries_tree(None)?;
    // Subprograms may sit in namespaces, modules and classes.
    let mut todo: Vec<UnitOffset> = Vec::new();
    let mut children = tree.root()?.children();
    while let Some(child) = children.next()? {
        collect(child, &mut todo)?;
    }
    for offset in todo {
        let entry = unit.entry(offset)?;
        if entry.attr_value(gimli::DW_AT_declaration).is_some() {
            continue;
        }
        let name = match entry
            .attr_value(gimli::DW_AT_linkage_name)
            .or(entry.attr_value(gimli::DW_AT_MIPS_linkage_name))
            .or(entry.attr_value(gimli::DW_AT_name))
        {
            Some(v) => match dwarf.attr_string(unit, v) {
                Ok(s) => s.to_string_lossy().into_owned(),
                Err(_) => continue,
            },
            None => continue,
        };
        if out.contains_key(&name) || !wanted(&name) {
            continue;
        }
        if let Some(p) = subprogram(unit, offset, &name)? {
            out.insert(name, p);
        }
    }
    Ok(())
}

/// Collects the subprograms under `node` (namespaces, classes and modules are entered).
fn collect(
    node: gimli::EntriesTreeNode<'_, '_, R<'_>>,
    todo: &mut Vec<UnitOffset>,
) -> Result<(), gimli::Error> {
    let tag = node.entry().tag();
    if tag == gimli::DW_TAG_subprogram {
        todo.push(node.entry().offset());
        return Ok(());
    }
    if matches!(
        tag,
        gimli::DW_TAG_namespace
            | gimli::DW_TAG_module
            | gimli::DW_TAG_structure_type
            | gimli::DW_TAG_class_type
    ) {
        let mut children = node.children();
        while let Some(child) = children.next()? {
            collect(child, todo)?;
        }
    }
    Ok(())
}

fn subprogram(
    unit: &gimli::Unit<R<'_>>,
    offset: UnitOffset,
    name: &str,
) -> Result<Option<Loaded>, gimli::Error> {
    let entry = unit.entry(offset)?;
    let ret = match entry.attr_value(gimli::DW_AT_type) {
        None => Ty::Void,
        Some(v) => match type_of(unit, v, 0)? {
            Some(t) => t,
            None => return Ok(None),
        },
    };
    let mut args = Vec::new();
    let mut tree = unit.entries_tree(Some(offset))?;
    let root = tree.root()?;
    let mut children = root.children();
    while let Some(child) = children.next()? {
        let e = child.entry();
        match e.tag() {
            gimli::DW_TAG_formal_parameter => {
                let Some(v) = e.attr_value(gimli::DW_AT_type) else {
                    return Ok(None);
                };
                match type_of(unit, v, 0)? {
                    Some(t) => args.push(t),
                    None => return Ok(None),
                }
            }
            gimli::DW_TAG_unspecified_parameters => return Ok(None),
            _ => {}
        }
    }
    if !rltrace_wire::protos::fits_registers(&args) {
        return Ok(None);
    }
    Ok(Some(Loaded {
        name: name.to_string(),
        args,
        ret,
    }))
}

/// The type an attribute names, or `None` when it does not travel in one register (an
/// integer one, or a vector one for `float` and `double`).
fn type_of(
    unit: &gimli::Unit<R<'_>>,
    v: AttributeValue<R<'_>>,
    depth: usize,
) -> Result<Option<Ty>, gimli::Error> {
    let AttributeValue::UnitRef(off) = v else {
        return Ok(None);
    };
    if depth > 16 {
        return Ok(None);
    }
    let e = unit.entry(off)?;
    let size = e
        .attr_value(gimli::DW_AT_byte_size)
        .and_then(|s| s.udata_value());
    Ok(match e.tag() {
        gimli::DW_TAG_typedef
        | gimli::DW_TAG_const_type
        | gimli::DW_TAG_volatile_type
        | gimli::DW_TAG_restrict_type
        | gimli::DW_TAG_atomic_type => match e.attr_value(gimli::DW_AT_type) {
            Some(inner) => type_of(unit, inner, depth + 1)?,
            None => None,
        },
        gimli::DW_TAG_pointer_type => match e.attr_value(gimli::DW_AT_type) {
            Some(inner) if is_char(unit, inner, 0)? => Some(Ty::Str),
            _ => Some(Ty::Ptr),
        },
        gimli::DW_TAG_reference_type | gimli::DW_TAG_rvalue_reference_type => Some(Ty::Ptr),
        gimli::DW_TAG_enumeration_type => Some(Ty::Int),
        gimli::DW_TAG_base_type => {
            let enc = match e.attr_value(gimli::DW_AT_encoding) {
                Some(AttributeValue::Encoding(enc)) => enc,
                _ => return Ok(None),
            };
            match (enc, size) {
                (gimli::DW_ATE_signed_char | gimli::DW_ATE_unsigned_char, Some(1)) => {
                    Some(Ty::Char)
                }
                (gimli::DW_ATE_boolean, Some(1..=8)) => Some(Ty::Int),
                (gimli::DW_ATE_signed, Some(1..=4)) => Some(Ty::Int),
                (gimli::DW_ATE_signed, Some(8)) => Some(Ty::Long),
                (gimli::DW_ATE_unsigned | gimli::DW_ATE_UTF, Some(1..=8)) => Some(Ty::Size),
                (gimli::DW_ATE_float, Some(4)) => Some(Ty::Float),
                (gimli::DW_ATE_float, Some(8)) => Some(Ty::Double),
                _ => None, // long double (x87), 128-bit, complex
            }
        }
        _ => None, // structs, unions, arrays by value
    })
}

/// True if the attribute names a one-byte character type (through typedefs and const).
fn is_char(
    unit: &gimli::Unit<R<'_>>,
    v: AttributeValue<R<'_>>,
    depth: usize,
) -> Result<bool, gimli::Error> {
    let AttributeValue::UnitRef(off) = v else {
        return Ok(false);
    };
    if depth > 16 {
        return Ok(false);
    }
    let e = unit.entry(off)?;
    match e.tag() {
        gimli::DW_TAG_typedef | gimli::DW_TAG_const_type | gimli::DW_TAG_volatile_type => {
            match e.attr_value(gimli::DW_AT_type) {
                Some(inner) => is_char(unit, inner, depth + 1),
                None => Ok(false),
            }
        }
        gimli::DW_TAG_base_type => Ok(matches!(
            e.attr_value(gimli::DW_AT_encoding),
            Some(AttributeValue::Encoding(
                gimli::DW_ATE_signed_char | gimli::DW_ATE_unsigned_char
            ))
        )),
        _ => Ok(false),
    }
}
