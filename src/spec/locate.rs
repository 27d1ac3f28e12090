//! Maps key paths (`strategies.rnf.prune.threshold`, `tasks.2.0`) to line and column in the
//! YAML source, so that errors found after deserialization (range checks, overlapping class
//! groups, missing files) still point at the exact place in the file. A value a mapping
//! inherits (a YAML alias, a `<<` merge key, a strategy's `extends:`) is located where it is
//! written: the path is followed to the mapping it came from.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

#[derive(Debug, Default, Clone)]
pub struct Locator {
    keys: HashMap<String, Pos>,
    values: HashMap<String, Pos>,
    /// (path, the path it inherits from), in the order inheritance takes precedence.
    inherits: Vec<(String, String)>,
}

impl Locator {
    /// Build from YAML text; unparsable text yields an empty locator (serde_yaml reports the
    /// syntax error with its own location).
    pub fn new(src: &str) -> Locator {
        let mut b = Builder {
            stack: vec![],
            loc: Locator::default(),
            anchors: HashMap::new(),
        };
        let mut p = Parser::new_from_str(src);
        if p.load(&mut b, false).is_err() {
            return Locator::default();
        }
        b.loc
    }

    /// Where the value at `path` starts (or its key, or the nearest existing parent).
    pub fn value(&self, path: &str) -> Option<Pos> {
        self.find(path, true)
    }

    /// Where the key of `path` is written (or the nearest existing parent).
    pub fn key(&self, path: &str) -> Option<Pos> {
        self.find(path, false)
    }

    /// Values under `child` not written there come from `parent` (`extends:`).
    pub fn inherit(&mut self, child: &str, parent: &str) {
        self.inherits.push((child.to_string(), parent.to_string()));
    }

    fn exact(&self, p: &str, prefer_value: bool) -> Option<Pos> {
        let hit = if prefer_value {
            self.values.get(p).or_else(|| self.keys.get(p))
        } else {
            self.keys.get(p).or_else(|| self.values.get(p))
        };
        hit.copied()
    }

    /// `path` as written: itself, or where an inheritance chain leads it (at most a few hops,
    /// so a self-referencing file cannot loop).
    fn written(&self, path: &str, prefer_value: bool, hops: usize) -> Option<Pos> {
        if let Some(pos) = self.exact(path, prefer_value) {
            return Some(pos);
        }
        if hops == 0 {
            return None;
        }
        self.inherits.iter().find_map(|(child, parent)| {
            let rest = path.strip_prefix(child.as_str())?;
            if !(rest.is_empty() || rest.starts_with('.')) {
                return None;
            }
            self.written(&format!("{parent}{rest}"), prefer_value, hops - 1)
        })
    }

    fn find(&self, path: &str, prefer_value: bool) -> Option<Pos> {
        let mut p = path.to_string();
        loop {
            if let Some(pos) = self.written(&p, prefer_value, 8) {
                return Some(pos);
            }
            match p.rfind('.') {
                Some(i) => p.truncate(i),
                None if !p.is_empty() => p.clear(),
                None => return None,
            }
        }
    }
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

struct Builder {
    stack: Vec<Frame>,
    loc: Locator,
    /// Anchor id → the path of the node that carries it.
    anchors: HashMap<usize, String>,
}

fn join(path: &str, seg: &str) -> String {
    if path.is_empty() {
        seg.to_string()
    } else {
        format!("{path}.{seg}")
    }
}

impl Builder {
    /// The path a value arriving now belongs to, and advance the parent.
    fn value_path(&mut self) -> String {
        match self.stack.last_mut() {
            None => String::new(),
            Some(Frame::Map { path, key }) => join(path, &key.take().unwrap_or_default()),
            Some(Frame::Seq { path, index }) => {
                let p = join(path, &index.to_string());
                *index += 1;
                p
            }
        }
    }
}

impl Builder {
    fn anchor(&mut self, id: usize, path: &str) {
        if id != 0 {
            self.anchors.insert(id, path.to_string());
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = Pos {
            line: mark.line(),
            col: mark.col() + 1,
        };
        match ev {
            Event::Scalar(s, _, anchor, _) => {
                if let Some(Frame::Map { path, key }) = self.stack.last_mut() {
                    if key.is_none() {
                        self.loc.keys.insert(join(path, &s), pos);
                        *key = Some(s);
                        return;
                    }
                }
                let p = self.value_path();
                self.anchor(anchor, &p);
                self.loc.values.insert(p, pos);
            }
            Event::Alias(id) => {
                let p = self.value_path();
                if let Some(from) = self.anchors.get(&id).cloned() {
                    // `<<: *a` merges into the mapping that holds it (`<<: [*a, *b]` too);
                    // any other alias stands for the whole node at its own path.
                    let merged = p.strip_suffix(".<<").map(str::to_string).or_else(|| {
                        let (parent, last) = p.rsplit_once('.')?;
                        let parent = parent.strip_suffix(".<<")?;
                        last.parse::<usize>().is_ok().then(|| parent.to_string())
                    });
                    self.loc
                        .inherits
                        .push((merged.unwrap_or_else(|| p.clone()), from));
                }
                self.loc.values.insert(p, pos);
            }
            Event::MappingStart(anchor, _) => {
                let p = self.value_path();
                self.anchor(anchor, &p);
                self.loc.values.insert(p.clone(), pos);
                self.stack.push(Frame::Map { path: p, key: None });
            }
            Event::SequenceStart(anchor, _) => {
                let p = self.value_path();
                self.anchor(anchor, &p);
                self.loc.values.insert(p.clone(), pos);
                self.stack.push(Frame::Seq { path: p, index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_nested_keys_and_sequence_items() {
        let src = "a: 1\nb:\n  c: [1, 2]\n  d:\n    - x: 3\n";
        let l = Locator::new(src);
        assert_eq!(l.key("a"), Some(Pos { line: 1, col: 1 }));
        assert_eq!(l.value("a"), Some(Pos { line: 1, col: 4 }));
        assert_eq!(l.value("b.c.1"), Some(Pos { line: 3, col: 10 }));
        assert_eq!(l.key("b.d.0.x"), Some(Pos { line: 5, col: 7 }));
        // A missing leaf falls back to its parent.
        assert_eq!(l.key("b.zzz"), l.key("b"));
    }

    #[test]
    fn inherited_values_are_located_where_they_are_written() {
        let src = "a: &base\n  x: 1\n  y: {z: 2}\nb:\n  <<: *base\n  x: 3\nc: *base\n";
        let l = Locator::new(src);
        // b.x is its own; b.y.z comes from a through the merge key, c.y.z through the alias.
        assert_eq!(l.value("b.x"), Some(Pos { line: 6, col: 6 }));
        assert_eq!(l.value("b.y.z"), Some(Pos { line: 3, col: 10 }));
        assert_eq!(l.value("c.y.z"), Some(Pos { line: 3, col: 10 }));
        let mut l = Locator::new("s:\n  p: {t: 1}\n  q: {extends: p}\n");
        l.inherit("s.q", "s.p");
        assert_eq!(l.value("s.q.t"), Some(Pos { line: 2, col: 10 }));
    }
}
