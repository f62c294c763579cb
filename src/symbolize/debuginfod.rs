//! A debuginfod client: fetches separate debug info by build-id from the servers listed in
//! `DEBUGINFOD_URLS`, into the cache the elfutils client uses, so files are shared with gdb
//! and friends. Downloads are capped, and a file is kept only if its build-id matches.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::elf::{hex, ElfInfo};

/// Largest debug file accepted from a server.
const MAX_DOWNLOAD: u64 = 4 << 30;

/// Servers and cache, from the environment.
pub struct Debuginfod {
    urls: Vec<String>,
    cache: PathBuf,
    agent: ureq::Agent,
    /// Build-ids no server had, not asked again.
    missing: HashSet<String>,
}

impl Debuginfod {
    /// `None` unless `DEBUGINFOD_URLS` names at least one server.
    pub fn from_env() -> Option<Self> {
        let urls: Vec<String> = std::env::var("DEBUGINFOD_URLS")
            .ok()?
            .split_whitespace()
            .map(|u| u.trim_end_matches('/').to_string())
            .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
            .collect();
        if urls.is_empty() {
            return None;
        }
        let cache = std::env::var_os("DEBUGINFOD_CACHE_PATH")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("XDG_CACHE_HOME")
                    .map(|d| PathBuf::from(d).join("debuginfod_client"))
            })
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/debuginfod_client"))
            })?;
        // DEBUGINFOD_TIMEOUT bounds the wait for a server to answer, as in elfutils; a
        // replay offline must not hang on every module, so connecting gets less.
        let timeout: u64 = std::env::var("DEBUGINFOD_TIMEOUT")
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or(90);
        let config = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(timeout.clamp(1, 5))))
            .timeout_recv_response(Some(Duration::from_secs(timeout.max(1))))
            .build();
        Some(Debuginfod {
            urls,
            cache,
            agent: ureq::Agent::new_with_config(config),
            missing: HashSet::new(),
        })
    }

    /// The debug file for `build_id`, from the cache or a server.
    pub fn debuginfo(&mut self, build_id: &[u8], warnings: &mut Vec<String>) -> Option<PathBuf> {
        if build_id.is_empty() {
            return None;
        }
        // Hex only: the id comes from a recording and becomes a path and a URL.
        let id = hex(build_id);
        let dest = self.cache.join(&id).join("debuginfo");
        if matches_build_id(&dest, build_id) {
            return Some(dest);
        }
        if self.missing.contains(&id) {
            return None;
        }
        let mut i = 0;
        while i < self.urls.len() {
            let full = format!("{}/buildid/{id}/debuginfo", self.urls[i]);
            match self.download(&full, &dest, build_id) {
                Ok(true) => return Some(dest),
                Ok(false) => i += 1,
                Err(e) => {
                    // Unreachable or broken: not asked again during this run.
                    warnings.push(format!(
                        "debuginfod {full}: {e}; not asking {} again",
                        self.urls[i]
                    ));
                    self.urls.remove(i);
                }
            }
        }
        self.missing.insert(id);
        None
    }

    /// Fetches `url` into `dest`; false if the server does not have it.
    fn download(&self, url: &str, dest: &Path, build_id: &[u8]) -> Result<bool, String> {
        let mut resp = match self.agent.get(url).call() {
            Ok(r) => r,
            Err(ureq::Error::StatusCode(404)) => return Ok(false),
            Err(e) => return Err(e.to_string()),
        };
        let dir = dest.parent().ok_or("cache path has no directory")?;
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let tmp = dir.join(format!(".debuginfo.rltrace-{}", std::process::id()));
        let result = (|| {
            let mut body = resp.body_mut().with_config().limit(MAX_DOWNLOAD).reader();
            let mut out =
                BufWriter::new(File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?);
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = body.read(&mut buf).map_err(|e| e.to_string())?;
                if n == 0 {
                    break;
                }
                out.write_all(&buf[..n]).map_err(|e| e.to_string())?;
            }
            out.flush().map_err(|e| e.to_string())?;
            drop(out);
            if !matches_build_id(&tmp, build_id) {
                return Err("the server sent a file with another build-id; not used".to_string());
            }
            std::fs::rename(&tmp, dest).map_err(|e| format!("{}: {e}", dest.display()))?;
            Ok(true)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

fn matches_build_id(path: &Path, build_id: &[u8]) -> bool {
    ElfInfo::open(path).is_ok_and(|i| i.build_id == build_id)
}
