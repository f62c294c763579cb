//! Which extra functions to trace: ltrace's filter chains (`-x 'write+str*-strlen@libc.so*'`).
//!
//! A chain is rules each introduced by `+` (include) or `-` (exclude), the first one
//! including unless it starts with `-`; a rule is `SYMBOL[@LIBRARY]`, where both parts are
//! globs (`*`, `?`), an empty symbol means every one, and `MAIN` names the main executable.
//! Rules apply left to right and the last one that matches a function decides. As in
//! ltrace, `-` always separates rules, so library names containing `-` need `?`.

/// Why a filter cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    /// An empty rule, as in `a++b`.
    #[error("empty rule in filter {0:?}")]
    Empty(String),
    /// `/regex/` rules.
    #[error("filter {0:?}: regular expressions are not supported yet; use a glob (`str*`)")]
    Regex(String),
}

#[derive(Clone, Debug)]
struct Rule {
    text: String,
    exclude: bool,
    sym: String,
    lib: Option<String>,
    hits: u64,
}

/// Parsed `-x` filters.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    rules: Vec<Rule>,
}

impl Selection {
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
            for (i, c) in chain.char_indices() {
                if c == '+' || c == '-' {
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
                if body.starts_with('/') {
                    return Err(SelectError::Regex(chain.to_string()));
                }
                let (sym, lib) = match body.split_once('@') {
                    Some((s, l)) => (s, Some(l.to_string())),
                    None => (body, None),
                };
                let sym = if sym.is_empty() { "*" } else { sym };
                rules.push(Rule {
                    text: part.trim_start_matches('+').to_string(),
                    exclude,
                    sym: sym.to_string(),
                    lib,
                    hits: 0,
                });
            }
        }
        Ok(Selection { rules })
    }

    /// True if there is nothing to select.
    pub fn is_empty(&self) -> bool {
        self.rules.iter().all(|r| r.exclude)
    }

    /// Does the chain select function `sym` defined in the module whose file name is
    /// `module` (`is_main` for the main executable)? Counts the deciding rule's hit.
    pub fn selects(&mut self, sym: &str, module: &str, is_main: bool) -> bool {
        let mut decided: Option<usize> = None;
        for (i, r) in self.rules.iter().enumerate() {
            let lib_ok = match &r.lib {
                None => true,
                Some(l) if l == "MAIN" => is_main,
                Some(l) => glob(l, module),
            };
            if lib_ok && glob(&r.sym, sym) {
                decided = Some(i);
            }
        }
        match decided {
            Some(i) if !self.rules[i].exclude => {
                self.rules[i].hits += 1;
                true
            }
            _ => false,
        }
    }

    /// Inclusion rules that selected no function.
    pub fn unmatched(&self) -> Vec<String> {
        self.rules
            .iter()
            .filter(|r| !r.exclude && r.hits == 0)
            .map(|r| r.text.clone())
            .collect()
    }
}

/// Shell-style glob with `*` and `?`.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Iterative matcher with one backtrack point for the last `*`.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(Selection::parse(&["/^str/"]).is_err());
        assert!(Selection::parse(&["a++b"]).is_err());
    }
}
