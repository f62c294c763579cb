//! Which functions to trace: ltrace's filter chains, for function entries (`-x
//! 'write+str*-strlen@libc.so*'`) and for the program's calls into libraries (`-e`).
//!
//! A chain is rules each introduced by `+` (include) or `-` (exclude), the first one
//! including unless it starts with `-`; a rule is `SYMBOL[@LIBRARY]`, where both parts are
//! globs (`*`, `?`) or `/regular expressions/` (matched anywhere in the name), an empty
//! symbol means every one, and `MAIN` names the main executable.
//! Rules apply left to right and the last one that matches a function decides. As in
//! ltrace, `-` always separates rules, so library names containing `-` need `?`.

/// The file name of the C library, where the allocator family is defined unless the
/// program defines its own.
pub const C_LIBRARY: &str = "libc.so.6";

/// Why a filter cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    /// An empty rule, as in `a++b`.
    #[error("empty rule in filter {0:?}")]
    Empty(String),
    /// A `/regex/` that does not compile.
    #[error("filter {chain:?}: bad regular expression /{re}/: {why}")]
    Regex {
        /// The chain.
        chain: String,
        /// The expression.
        re: String,
        /// The regex crate's reason.
        why: String,
    },
}

/// A symbol or library pattern: a glob, or `/regex/` (matched anywhere in the name).
#[derive(Clone, Debug)]
enum Pat {
    Glob(String),
    Re(regex::Regex),
}

impl Pat {
    fn parse(text: &str, chain: &str) -> Result<Self, SelectError> {
        match text.strip_prefix('/').and_then(|t| t.strip_suffix('/')) {
            Some(re) => regex::Regex::new(re)
                .map(Pat::Re)
                .map_err(|e| SelectError::Regex {
                    chain: chain.to_string(),
                    re: re.to_string(),
                    why: e.to_string(),
                }),
            None => Ok(Pat::Glob(text.to_string())),
        }
    }

    fn matches(&self, s: &str) -> bool {
        match self {
            Pat::Glob(g) => glob(g, s),
            Pat::Re(r) => r.is_match(s),
        }
    }
}

#[derive(Clone, Debug)]
struct Rule {
    text: String,
    exclude: bool,
    sym: Pat,
    /// `None`: any module; `Some(None)`: `MAIN`, the main executable.
    lib: Option<Option<Pat>>,
    hits: u64,
}

/// Parsed `-x` filters.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    rules: Vec<Rule>,
    /// `-l` patterns: the program's calls to functions these libraries define (matched on
    /// the defining library, where `rules` match the caller), any one selecting.
    libraries: Vec<Rule>,
}

impl Selection {
    /// Parses `-e` chains: as in ltrace, a chain that starts with an exclusion selects
    /// everything else (`-e -puts`: every call but `puts`).
    pub fn parse_calls<S: AsRef<str>>(chains: &[S]) -> Result<Self, SelectError> {
        let chains: Vec<String> = chains
            .iter()
            .map(|c| {
                let c = c.as_ref();
                if c.starts_with('-') {
                    format!("*{c}")
                } else {
                    c.to_string()
                }
            })
            .collect();
        Self::parse(&chains)
    }

    /// Parses one or more chains.
    pub fn parse<S: AsRef<str>>(chains: &[S]) -> Result<Self, SelectError> {
        let mut rules = Vec::new();
        for chain in chains {
            let chain = chain.as_ref();
            // `+` starts an inclusion, `-` an exclusion; the first rule includes unless it
            // starts with `-`.
            let mut parts: Vec<(bool, &str, &str)> = Vec::new();
            let mut start = 0;
            let mut exclude = false;
            let mut in_regex = false;
            for (i, c) in chain.char_indices() {
                if c == '/' {
                    in_regex = !in_regex;
                }
                if (c == '+' || c == '-') && !in_regex {
                    if i > 0 {
                        parts.push((
                            exclude,
                            &chain[start..i],
                            &chain[start.saturating_sub(1)..i],
                        ));
                    }
                    exclude = c == '-';
                    start = i + 1;
                }
            }
            parts.push((exclude, &chain[start..], &chain[start.saturating_sub(1)..]));
            for (exclude, body, part) in parts {
                if body.is_empty() {
                    return Err(SelectError::Empty(chain.to_string()));
                }
                // `@` separates the library, unless it is inside a symbol's /regex/.
                let split = match body.strip_prefix('/') {
                    Some(inner) => inner.find('/').and_then(|e| {
                        let rest = &inner[e + 1..];
                        rest.strip_prefix('@').map(|l| (&body[..e + 2], l))
                    }),
                    None => body.split_once('@'),
                };
                let (sym, lib) = match split {
                    Some((s, l)) => (s, Some(l)),
                    None => (body, None),
                };
                let sym = if sym.is_empty() { "*" } else { sym };
                let lib = match lib {
                    None => None,
                    Some("MAIN") => Some(None),
                    Some(l) => Some(Some(Pat::parse(l, chain)?)),
                };
                rules.push(Rule {
                    text: part.trim_start_matches('+').to_string(),
                    exclude,
                    sym: Pat::parse(sym, chain)?,
                    lib,
                    hits: 0,
                });
            }
        }
        Ok(Selection {
            rules,
            libraries: Vec::new(),
        })
    }

    /// Adds ltrace's `-l` patterns (globs or `/regex/` on a library's file name): the
    /// program's calls to functions those libraries define are selected too.
    pub fn add_libraries<S: AsRef<str>>(&mut self, patterns: &[S]) -> Result<(), SelectError> {
        for p in patterns {
            let p = p.as_ref();
            if p.is_empty() {
                return Err(SelectError::Empty(format!("-l {p}")));
            }
            self.libraries.push(Rule {
                text: format!("-l {p}"),
                exclude: false,
                sym: Pat::Glob("*".to_string()),
                lib: Some(Some(Pat::parse(p, p)?)),
                hits: 0,
            });
        }
        Ok(())
    }

    /// True if `-l` patterns were added: imports are then chosen by their defining library
    /// too, which callers must look up.
    pub fn has_libraries(&self) -> bool {
        !self.libraries.is_empty()
    }

    /// Does the selection take the program's call of import `sym` (made from the main
    /// executable, whose file name is `caller`), defined in the library whose file name
    /// is `definer` if known? Counts the deciding rules' hits.
    pub fn selects_import(&mut self, sym: &str, caller: &str, definer: Option<&str>) -> bool {
        let by_caller = self.deciding(sym, caller, true);
        let by_lib = self.library_rule(definer);
        if let Some(i) = by_caller {
            self.rules[i].hits += 1;
        }
        if let Some(i) = by_lib {
            self.libraries[i].hits += 1;
        }
        by_caller.is_some() || by_lib.is_some()
    }

    /// [`Selection::selects_import`] without counting the hits.
    pub fn would_select_import(&self, sym: &str, caller: &str, definer: Option<&str>) -> bool {
        self.deciding(sym, caller, true).is_some() || self.library_rule(definer).is_some()
    }

    /// True if a `-l` pattern matches the library whose file name is `file`.
    pub fn names_library(&self, file: &str) -> bool {
        self.library_rule(Some(file)).is_some()
    }

    /// The `-l` rule matching library `definer`, if one does.
    fn library_rule(&self, definer: Option<&str>) -> Option<usize> {
        let d = definer?;
        self.libraries
            .iter()
            .position(|r| matches!(&r.lib, Some(Some(l)) if l.matches(d)))
    }

    /// Does the chain select function `sym` defined in the module whose file name is
    /// `module` (`is_main` for the main executable)? Counts the deciding rule's hit.
    pub fn selects(&mut self, sym: &str, module: &str, is_main: bool) -> bool {
        match self.deciding(sym, module, is_main) {
            Some(i) => {
                self.rules[i].hits += 1;
                true
            }
            None => false,
        }
    }

    /// [`Selection::selects`] without counting the hit.
    pub fn would_select(&self, sym: &str, module: &str, is_main: bool) -> bool {
        self.deciding(sym, module, is_main).is_some()
    }

    /// The including rule that decides for `sym`, if one does.
    fn deciding(&self, sym: &str, module: &str, is_main: bool) -> Option<usize> {
        let mut decided: Option<usize> = None;
        for (i, r) in self.rules.iter().enumerate() {
            let lib_ok = match &r.lib {
                None => true,
                Some(None) => is_main,
                Some(Some(l)) => l.matches(module),
            };
            if lib_ok && r.sym.matches(sym) {
                decided = Some(i);
            }
        }
        decided.filter(|&i| !self.rules[i].exclude)
    }

    /// The names the selection includes, when every including rule is a plain name (no
    /// glob, regex or library part): then nothing else can be selected, whatever the
    /// modules define. `None` when a rule could match names not known in advance.
    pub fn plain_names(&self) -> Option<Vec<&str>> {
        let mut names = Vec::new();
        for r in self.rules.iter().filter(|r| !r.exclude) {
            match (&r.sym, &r.lib) {
                (Pat::Glob(g), None) if !g.contains(['*', '?', '[']) => names.push(g.as_str()),
                _ => return None,
            }
        }
        Some(names)
    }

    /// The same selection, less the functions named (as a trailing `-name` rule each).
    pub fn without(mut self, names: &[&str]) -> Self {
        for n in names {
            if let Ok(sym) = Pat::parse(n, n) {
                self.rules.push(Rule {
                    text: format!("-{n}"),
                    exclude: true,
                    sym,
                    lib: None,
                    hits: 0,
                });
            }
        }
        self
    }

    /// Inclusion rules that selected no function (`-l` ones as `-l PATTERN`).
    pub fn unmatched(&self) -> Vec<String> {
        self.rules
            .iter()
            .chain(&self.libraries)
            .filter(|r| !r.exclude && r.hits == 0)
            .map(|r| r.text.clone())
            .collect()
    }
}

/// What to say of a rule of the `-e` chains or a `-l` pattern (as [`Selection::unmatched`]
/// names it) that selected no call.
pub fn unmatched_call_text(rule: &str) -> String {
    match rule.strip_prefix("-l ") {
        Some(lib) => format!("-l {lib:?} matched no library the program calls into"),
        None => format!("-e rule {rule:?} matched no call the program makes into a library"),
    }
}

/// Shell-style glob with `*` and `?` (shared with the agent).
pub use rltrace_wire::glob;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l_patterns_select_by_the_defining_library_and_add_to_e() {
        let mut only_l = Selection::parse_calls::<&str>(&[]).unwrap();
        only_l.add_libraries(&["libgreet*"]).unwrap();
        assert!(only_l.has_libraries());
        // No default @MAIN: nothing but the library's functions.
        assert!(only_l.selects_import("greet", "callee", Some("libgreet.so")));
        assert!(!only_l.selects_import("printf", "callee", Some("libc.so.6")));
        assert!(!only_l.selects_import("greet", "callee", None));
        let mut both = Selection::parse_calls(&["printf"]).unwrap();
        both.add_libraries(&["libgreet*", "libz.so*"]).unwrap();
        assert!(both.selects_import("printf", "callee", Some("libc.so.6")));
        assert!(both.selects_import("twice", "callee", Some("libgreet.so")));
        assert!(!both.selects_import("puts", "callee", Some("libc.so.6")));
        assert_eq!(both.unmatched(), ["-l libz.so*"]);
        assert!(both.names_library("libgreet.so") && !both.names_library("libc.so.6"));
        assert!(Selection::default().add_libraries(&[""]).is_err());
    }

    #[test]
    fn globs() {
        assert!(glob("str*", "strlen"));
        assert!(glob("*", ""));
        assert!(glob("libc.so*", "libc.so.6"));
        assert!(glob("?rite", "write"));
        assert!(!glob("str*", "memcpy"));
        assert!(glob("*cpy", "memcpy"));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
    }

    #[test]
    fn chains_apply_left_to_right() {
        let mut s = Selection::parse(&["str*-strlen", "write@libc.so*", "frob@MAIN"]).unwrap();
        assert!(s.selects("strdup", "libc.so.6", false));
        assert!(!s.selects("strlen", "libc.so.6", false));
        assert!(s.selects("write", "libc.so.6", false));
        assert!(!s.selects("write", "libfoo.so", false));
        assert!(!s.selects("frob", "libfoo.so", false));
        assert!(s.selects("frob", "prog", true));
        assert!(!s.selects("memcpy", "libc.so.6", false));
        let mut s = Selection::parse(&["nosuch+write"]).unwrap();
        s.selects("write", "libc.so.6", false);
        assert_eq!(s.unmatched(), vec!["nosuch".to_string()]);
        assert!(Selection::parse(&["a++b"]).is_err());
        assert!(Selection::parse(&["/(/"]).is_err());
    }

    #[test]
    fn regular_expressions_match_anywhere_and_keep_their_operators() {
        let mut s = Selection::parse(&["/^s+tr.*d.p$/@/libc[.]so/-strndup"]).unwrap();
        assert!(s.selects("strdup", "libc.so.6", false));
        assert!(!s.selects("strndup", "libc.so.6", false));
        assert!(!s.selects("strdup", "libfoo.so", false));
        assert!(!s.selects("wcsdup", "libc.so.6", false));
        let mut s = Selection::parse(&["/^(read|write)$/+frob@MAIN"]).unwrap();
        assert!(s.selects("read", "libc.so.6", false));
        assert!(s.selects("write", "libc.so.6", false));
        assert!(!s.selects("readv", "libc.so.6", false));
        assert!(s.selects("frob", "prog", true));
    }
}
