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

use std::collections::HashMap;
use std::io::Write;

use super::{Tracer, UNHOOKABLE};
use crate::format::{FormatError, Origin};
use crate::record::ptrace::space::{BpKind, NewModule};
use crate::record::select::glob;

/// The main executable's imports of one process, read when its module appears and hooked
/// once its GOT is bound.
pub(super) struct Imports {
    /// The executable's mapped range: a slot pointing inside it is not bound yet.
    exe: (u64, u64),
    /// `(name, runtime slot address, runtime PLT entry jumping through it)`.
    slots: Vec<(String, u64, Option<u64>)>,
}

impl Imports {
    /// The imports of executable module `m` that the engine traces by default, and that
    /// `keep` (the `-e` chains) selects.
    pub(super) fn of(m: &NewModule, mut keep: impl FnMut(&str) -> bool) -> Imports {
        let plt: HashMap<u64, u64> = m.elf.plt_entries().into_iter().collect();
        let slots = m
            .elf
            .imported_functions()
            .into_iter()
            .filter(|(name, _)| traceable(name) && keep(name))
            .map(|(name, slot)| {
                let entry = plt.get(&slot).map(|e| m.bias.wrapping_add(*e));
                (name, m.bias.wrapping_add(slot), entry)
            })
            .collect();
        Imports {
            exe: (m.start, m.end),
            slots,
        }
    }

    /// True if there is nothing to hook.
    pub(super) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// False for imports the engine leaves alone: the allocator family (hooked on its own),
/// those the agent leaves alone too, and those whose return address must stay theirs.
fn traceable(name: &str) -> bool {
    !rltrace_wire::import_skipped(name) && !UNHOOKABLE.iter().any(|p| glob(p, name))
}

impl<W: Write> Tracer<'_, W> {
    /// Hooks process `pid`'s imports where its GOT leads (see the module documentation).
    pub(super) fn hook_imports(&mut self, pid: u32, tid: u32) -> Result<(), FormatError> {
        let Some(imports) = self.imports.remove(&pid) else {
            return Ok(());
        };
        let Some(space_rc) = self.procs.get(&pid).map(|p| p.space.clone()) else {
            return Ok(());
        };
        let (lo, hi) = imports.exe;
        // Per name, the bound target wins: it also catches the calls through an unbound
        // slot of the same name once the loader has resolved it.
        let mut wanted: Vec<(String, u64)> = Vec::new();
        let mut by_name: HashMap<String, usize> = HashMap::new();
        for (name, slot, plt) in imports.slots {
            let target = space_rc.borrow().read_u64(slot, "read a GOT slot").ok();
            let bound = target.filter(|&t| t != 0 && !(lo..hi).contains(&t));
            let Some(at) = bound.or(plt) else { continue };
            match by_name.get(&name) {
                Some(&i) if bound.is_some() => wanted[i].1 = at,
                Some(_) => {}
                None => {
                    by_name.insert(name.clone(), wanted.len());
                    wanted.push((name, at));
                }
            }
        }
        for (name, at) in wanted {
            if self.selected_ids.contains_key(&name) {
                continue; // selected with -x: hooked at its definition already
            }
            let id = self.import_id(&name)?;
            let placed = space_rc.borrow_mut().insert_bp(tid, at, BpKind::Call(id));
            if let Err(e) = placed {
                self.sink
                    .note(pid, format!("calls of {name} are not traced: {e}"))?;
            }
        }
        Ok(())
    }

    /// Prototypes, from library `m`'s DWARF, of process `pid`'s imports that `m` defines
    /// and that have none yet: used to capture their arguments and stored in the
    /// recording for replay. The first library defining a name, in load order, gives it.
    pub(super) fn callee_prototypes(&mut self, pid: u32, m: &NewModule) -> Result<(), FormatError> {
        let Some(imports) = self.imports.get(&pid) else {
            return Ok(());
        };
        let names: Vec<&str> = imports
            .slots
            .iter()
            .map(|(n, _, _)| n.as_str())
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
