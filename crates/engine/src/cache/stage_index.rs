//! The key each stage id of one scope (a pipeline) was last recorded with, in one file per
//! scope (`index/stages/<scope>.keys`, lines of `key id`). A stage's record (`StageRecord`,
//! one file per id) is what `status` explains a rerun against; a cached rerun would otherwise
//! read and compare every one of them to find that nothing changed. With this index it reads
//! one file, and touches a record only when its stage's key moved.
//!
//! Advisory, like the records themselves: a lost or stale index costs record writes, and a
//! record it wrongly believes current costs an explanation against an older configuration
//! (two runs of one pipeline racing), never a wrong result.

use super::GroupPerms;
use crate::digest::StageKey;
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(Debug)]
pub(crate) struct ScopeKeys {
    path: PathBuf,
    keys: HashMap<String, StageKey>,
    dirty: bool,
}

impl ScopeKeys {
    pub(crate) fn load(path: PathBuf) -> ScopeKeys {
        let keys = std::fs::read_to_string(&path)
            .map(|text| {
                text.lines()
                    .filter_map(|l| {
                        let (k, id) = l.split_once(' ')?;
                        Some((id.to_string(), StageKey::from_hex(k)?))
                    })
                    .collect()
            })
            .unwrap_or_default();
        ScopeKeys {
            path,
            keys,
            dirty: false,
        }
    }

    /// Whether `id`'s record was last written with `key`.
    pub(crate) fn holds(&self, id: &str, key: &StageKey) -> bool {
        self.keys.get(id) == Some(key)
    }

    pub(crate) fn note(&mut self, id: &str, key: StageKey) {
        if !self.holds(id, &key) {
            self.keys.insert(id.to_string(), key);
            self.dirty = true;
        }
    }

    /// Write the index if anything was noted since it was read.
    pub(crate) fn save(&mut self, perms: GroupPerms) -> std::io::Result<()> {
        if !self.dirty {
            return Ok(());
        }
        let mut lines: Vec<String> = self
            .keys
            .iter()
            .map(|(id, k)| format!("{} {id}\n", k.to_hex()))
            .collect();
        lines.sort();
        super::atomic_write_shared(&self.path, lines.concat().as_bytes(), perms)?;
        self.dirty = false;
        Ok(())
    }
}
