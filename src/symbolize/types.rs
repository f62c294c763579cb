//! Prototypes from DWARF: a function's parameter and return types, where its module has
//! debug info, mapped onto what rltrace captures and shows (`int`, `unsigned`, `char`,
//! `char *` strings, pointers). Functions whose values do not all travel in integer
//! registers (floating point, structs or unions by value, 128-bit integers) or that take
//! variable arguments get no prototype: they stay six registers in hex.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use addr2line::gimli;
use gimli::{AttributeValue, EndianSlice, RunTimeEndian, UnitOffset};
use object::{Object, ObjectSection};

use crate::protos::{Loaded, Ty};

type R<'a> = EndianSlice<'a, RunTimeEndian>;

/// Prototypes of the functions defined in the file at `path` that `wanted` accepts (by
/// symbol name: the linkage name when there is one). Empty without debug info.
pub fn prototypes(path: &Path, wanted: &dyn Fn(&str) -> bool) -> Vec<Loaded> {
    let Ok(file) = crate::elf::MappedFile::open(path) else {
        return Vec::new();
    };
    let Ok(obj) = object::File::parse(file.bytes()) else {
        return Vec::new();
    };
    let endian = if obj.is_little_endian() {
        RunTimeEndian::Little
    } else {
        RunTimeEndian::Big
    };
    let mut sections: HashMap<gimli::SectionId, Cow<[u8]>> = HashMap::new();
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
    ] {
        if let Some(data) = obj
            .section_by_name(id.name())
            .and_then(|s| s.uncompressed_data().ok())
        {
            sections.insert(id, data);
        }
    }
    if !sections.contains_key(&gimli::SectionId::DebugInfo) {
        return Vec::new();
    }
    let dwarf = gimli::Dwarf::load(|id| -> Result<R<'_>, gimli::Error> {
        Ok(EndianSlice::new(
            sections.get(&id).map_or(&[][..], |c| c.as_ref()),
            endian,
        ))
    });
    let Ok(dwarf) = dwarf else {
        return Vec::new();
    };
    let mut out: HashMap<String, Loaded> = HashMap::new();
    let mut units = dwarf.units();
    while let Ok(Some(header)) = units.next() {
        let Ok(unit) = dwarf.unit(header) else {
            continue;
        };
        let _ = unit_prototypes(&dwarf, &unit, wanted, &mut out);
    }
    let mut v: Vec<Loaded> = out.into_values().collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// Prototypes, from the DWARF found for the library at `path` on this machine, of those of
/// `names` that it defines: what a program importing them will reach there. A name the
/// DWARF does not know gets the prototype of an alias at the same address (glibc defines
/// `lfind` as an alias of `__lfind`). Each library's DWARF is read once per run.
pub fn for_library(path: &str, build_id: &[u8], names: &[&str]) -> Vec<Loaded> {
    /// Libraries read so far: (path, build-id, what their DWARF says).
    type Cache = Vec<(String, Vec<u8>, Arc<Library>)>;
    static CACHE: Mutex<Cache> = Mutex::new(Vec::new());
    let lib = {
        let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
        match cache.iter().find(|(p, b, _)| p == path && b == build_id) {
            Some((_, _, lib)) => lib.clone(),
            None => {
                let lib = Arc::new(Library::read(path, build_id));
                cache.push((path.to_string(), build_id.to_vec(), lib.clone()));
                lib
            }
        }
    };
    names
        .iter()
        .filter_map(|&n| {
            let found = lib
                .protos
                .get(n)
                .or_else(|| lib.protos.get(lib.alias.get(n)?))?;
            Some(Loaded {
                name: n.to_string(),
                ..found.clone()
            })
        })
        .collect()
}

/// What a library's DWARF says of its functions.
#[derive(Default)]
struct Library {
    /// By DWARF name.
    protos: HashMap<String, Loaded>,
    /// Symbol name -> a name at the same address that has a prototype.
    alias: HashMap<String, String>,
}

impl Library {
    fn read(path: &str, build_id: &[u8]) -> Library {
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
        let protos: HashMap<String, Loaded> = prototypes(&debug, &|_| true)
            .into_iter()
            .map(|p| (p.name.clone(), p))
            .collect();
        // Aliases come from the debug file's symbol table too (glibc's DWARF names its
        // functions by their hidden `__GI_` labels, local symbols only it keeps).
        let mut syms = binary.function_symbols(false);
        if let Ok(d) = crate::elf::ElfInfo::open(&debug) {
            syms.extend(d.function_symbols(true));
        }
        let mut named_at: HashMap<u64, &str> = HashMap::new();
        for (name, addr, _) in &syms {
            if protos.contains_key(name) {
                named_at.entry(*addr).or_insert(name);
            }
        }
        let alias = syms
            .iter()
            .filter(|(name, _, _)| !protos.contains_key(name))
            .filter_map(|(name, addr, _)| Some((name.clone(), named_at.get(addr)?.to_string())))
            .collect();
        Library { protos, alias }
    }
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
    if args.len() > 6 {
        return Ok(None);
    }
    Ok(Some(Loaded {
        name: name.to_string(),
        args,
        ret,
    }))
}

/// The type an attribute names, or `None` when it does not travel in one integer register.
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
                _ => None, // floating point, 128-bit, complex
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
