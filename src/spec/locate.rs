//! Maps key paths (`strategies.rnf.prune.threshold`, `tasks.2.0`) to line and column in the
//! YAML source, so that errors found after deserialization (range checks, overlapping class
//! groups, missing files) still point at the exact place in the file.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

#[derive(Debug, Default)]
pub struct Locator {
    keys: HashMap<String, Pos>,
    values: HashMap<String, Pos>,
}

impl Locator {
    /// Build from YAML text; unparsable text yields an empty locator (serde_yaml reports the
    /// syntax error with its own location).
    pub fn new(src: &str) -> Locator {
        let mut b = Builder {
            stack: vec![],
            loc: Locator::default(),
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

    fn find(&self, path: &str, prefer_value: bool) -> Option<Pos> {
        let mut p = path.to_string();
        loop {
            let hit = if prefer_value {
                self.values.get(&p).or_else(|| self.keys.get(&p))
            } else {
                self.keys.get(&p).or_else(|| self.values.get(&p))
            };
            if let Some(pos) = hit {
                return Some(*pos);
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

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = Pos {
            line: mark.line(),
            col: mark.col() + 1,
        };
        match ev {
            Event::Scalar(s, ..) => {
                if let Some(Frame::Map { path, key }) = self.stack.last_mut() {
                    if key.is_none() {
                        self.loc.keys.insert(join(path, &s), pos);
                        *key = Some(s);
                        return;
                    }
                }
                let p = self.value_path();
                self.loc.values.insert(p, pos);
            }
            Event::Alias(_) => {
                let p = self.value_path();
                self.loc.values.insert(p, pos);
            }
            Event::MappingStart(..) => {
                let p = self.value_path();
                self.loc.values.insert(p.clone(), pos);
                self.stack.push(Frame::Map { path: p, key: None });
            }
            Event::SequenceStart(..) => {
                let p = self.value_path();
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
}
