//! The ptrace engine's default trace: every function the main executable imports, hooked
//! where the program's calls reach it once the loader has bound its GOT.
//!
//! At the program's entry (or when attaching) each imported function's GOT slot is read:
//! - a slot bound into a library gives the defining function's entry, which is hooked
//!   (IFUNCs carry their implementation there, so `strlen` is seen under its own name);
//!   every caller reaches that entry, so the function is marked *imported* and replay
//!   tells the program's calls from the libraries' by the return address;
//! - a slot still unbound (lazy binding) has the program's PLT entry for it hooked
//!   instead, as ltrace does: only the program's calls go through it.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;

use super::{Tracer, UNHOOKABLE};
use crate::format::{FormatError, Origin};
use crate::record::ptrace::space::{Alias, BpKind, NewModule};
use crate::record::select::glob;

/// The main executable's imported functions in one process, read when its module
/// appears, resolved once its GOT is bound: the default trace hooks those it traces, and
/// `-x` finds the IFUNCs it selects through them.
pub(super) struct Imports {
    /// The executable's mapped range: a slot pointing inside it is not bound yet.
    pub(super) exe: (u64, u64),
    /// Every `JUMP_SLOT`/`GLOB_DAT` slot of an imported function.
    pub(super) slots: Vec<Slot>,
    /// The executable's file name (what `-e` library patterns match).
    pub(super) exe_name: String,
    /// The libraries mapped since, in load order: `-l` finds an import's definer there.
    pub(super) libraries: Vec<String>,
}

/// One GOT slot of an imported function.
pub(super) struct Slot {
    pub(super) name: String,
    /// Runtime address of the slot.
    pub(super) at: u64,
    /// Runtime address of the PLT entry jumping through it, if any.
    pub(super) plt: Option<u64>,
    /// Traced by default (neither skipped nor left out by `-e`, and imports are traced).
    pub(super) traced: bool,
}

impl Imports {
    /// The imports of executable module `m`; `traced` says which the default trace
    /// hooks (the `-e` chains; false for all with `-L`).
    pub(super) fn of(m: &NewModule, mut traced: impl FnMut(&str) -> bool) -> Imports {
        let plt: HashMap<u64, u64> = m.elf.plt_entries().into_iter().collect();
        let slots = m
            .elf
            .imported_functions()
            .into_iter()
            .map(|(name, slot)| Slot {
                traced: traceable(&name) && traced(&name),
                plt: plt.get(&slot).map(|e| m.bias.wrapping_add(*e)),
                at: m.bias.wrapping_add(slot),
                name,
            })
            .collect();
        Imports {
            exe: (m.start, m.end),
            slots,
            exe_name: std::path::Path::new(&m.path)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            libraries: Vec::new(),
        }
    }

    /// True if there is nothing to hook or resolve.
    pub(super) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// Where calls of each name in `slots` are hooked: `(bound, plt)`, the target a slot is
/// bound to if `bound` accepts it (every caller reaches it), and the program's PLT entry
/// (its own calls only). A bound slot of a name also catches the calls through an unbound
/// one once the loader has resolved it, so it wins.
pub(super) fn hook_points<'a>(
    slots: impl Iterator<Item = &'a Slot>,
    mut bound: impl FnMut(&Slot) -> Option<u64>,
) -> BTreeMap<String, (Option<u64>, Option<u64>)> {
    let mut found: BTreeMap<String, (Option<u64>, Option<u64>)> = BTreeMap::new();
    for s in slots {
        let b = bound(s);
        let e = found.entry(s.name.clone()).or_default();
        e.0 = e.0.or(b);
        e.1 = e.1.or(s.plt);
    }
    found
}

/// False for imports the engine leaves alone: the allocator family (hooked on its own),
/// those the agent leaves alone too, and those whose return address must stay theirs.
fn traceable(name: &str) -> bool {
    !rltrace_wire::import_skipped(name) && !UNHOOKABLE.iter().any(|p| glob(p, name))
}

impl<W: Write> Tracer<'_, W> {
    /// Hooks process `pid`'s traced imports where its GOT leads (see the module
    /// documentation).
    pub(super) fn hook_imports(&mut self, pid: u32, tid: u32) -> Result<(), FormatError> {
        let Some(mut imports) = self.imports.remove(&pid) else {
            return Ok(());
        };
        self.choose_by_library(&mut imports);
        let Some(space_rc) = self.procs.get(&pid).map(|p| p.space.clone()) else {
            return Ok(());
        };
        let (lo, hi) = imports.exe;
        let points = hook_points(imports.slots.iter().filter(|s| s.traced), |s| {
            let target = space_rc.borrow().read_u64(s.at, "read a GOT slot").ok();
            target.filter(|&t| t != 0 && !(lo..hi).contains(&t))
        });
        let mut by_addr: HashMap<u64, Vec<Alias>> = HashMap::new();
        for (name, (bound, plt)) in points {
            let Some(at) = bound.or(plt) else { continue };
            if self.selected_ids.contains_key(&name) {
                continue; // selected with -x: hooked at its definition already
            }
            let id = self.import_id(&name)?;
            by_addr.entry(at).or_default().push(Alias {
                id,
                plt,
                slots: imports
                    .slots
                    .iter()
                    .filter(|s| s.name == name)
                    .map(|s| s.at)
                    .collect(),
            });
            let placed = space_rc.borrow_mut().insert_bp(tid, at, BpKind::Call(id));
            if let Err(e) = placed {
                self.sink
                    .note(pid, format!("calls of {name} are not traced: {e}"))?;
            }
        }
        // The breakpoint carries the first name; the call site tells the others.
        by_addr.retain(|_, a| a.len() > 1);
        space_rc.borrow_mut().aliases.extend(by_addr);
        Ok(())
    }

    /// Marks traced the imports `-l` selects, by the library that defines them: the first
    /// in load order to export the name, as the loader binds it (and as the agent
    /// engine decides).
    fn choose_by_library(&mut self, imports: &mut Imports) {
        let Some(sel) = self.calls.as_deref_mut().filter(|s| s.has_libraries()) else {
            return;
        };
        if !self.opts.imports {
            return;
        }
        let mut names: Vec<&str> = imports
            .slots
            .iter()
            .filter(|s| !s.traced && traceable(&s.name))
            .map(|s| s.name.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        let found = crate::elf::definers(&names, imports.libraries.iter().map(String::as_str));
        let chosen: HashMap<String, bool> = names
            .iter()
            .map(|n| {
                let on = sel.selects_import(n, &imports.exe_name, found.get(n).copied());
                (n.to_string(), on)
            })
            .collect();
        for s in &mut imports.slots {
            s.traced |= chosen.get(&s.name).copied().unwrap_or(false);
        }
    }

    /// Prototypes, from library `m`'s DWARF, of process `pid`'s imports that `m` defines
    /// and that have none yet: used to capture their arguments and stored in the
    /// recording for replay. The first library defining a name, in load order, gives it.
    pub(super) fn callee_prototypes(&mut self, pid: u32, m: &NewModule) -> Result<(), FormatError> {
        let Some(imports) = self.imports.get(&pid) else {
            return Ok(());
        };
        // Those `-l` may select once the library defining each is known, too.
        let file = m.path.rsplit('/').next().unwrap_or(&m.path);
        let by_lib =
            self.opts.imports && self.calls.as_deref().is_some_and(|s| s.names_library(file));
        let names: Vec<&str> = imports
            .slots
            .iter()
            .filter(|s| s.traced || (by_lib && traceable(&s.name)))
            .map(|s| s.name.as_str())
            .filter(|n| crate::protos::lookup(n).is_none())
            .collect();
        if names.is_empty() {
            return Ok(());
        }
        let found = crate::symbolize::types::for_library(&m.path, &m.elf.build_id, &names);
        if found.is_empty() {
            return Ok(());
        }
        crate::protos::install(&found);
        self.sink.prototypes(&found)
    }

    /// The function id of an import traced by default, defining it on first use.
    fn import_id(&mut self, name: &str) -> Result<u32, FormatError> {
        if let Some(&id) = self.import_ids.get(name) {
            return Ok(id);
        }
        let id = self.define(name, Origin::Imported)?;
        self.import_ids.insert(name.to_string(), id);
        Ok(id)
    }
}
