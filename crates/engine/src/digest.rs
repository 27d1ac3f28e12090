//! Typed blake3 digests and the canonical encoding that stage keys are hashed from.
//!
//! A [`StageKey`] names a cache entry (what was asked for); a [`ContentHash`] names what a
//! stage produced (or a data file's bytes). They are distinct types so the executor can never
//! key a stage on another stage's key by mistake: keys are built from input *content*, which is
//! what gives early cutoff.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::marker::PhantomData;

/// Marker for what a digest identifies.
pub trait DigestKind: 'static {
    const NAME: &'static str;
}

/// A 32-byte blake3 digest tagged with what it identifies.
pub struct Digest<K: DigestKind> {
    bytes: [u8; 32],
    _kind: PhantomData<fn() -> K>,
}

#[derive(Debug)]
pub enum KeyKind {}
impl DigestKind for KeyKind {
    const NAME: &'static str = "stage key";
}
#[derive(Debug)]
pub enum ContentKind {}
impl DigestKind for ContentKind {
    const NAME: &'static str = "content hash";
}

/// The cache key of a stage: blake3 of its kind, implementation version, canonical parameters
/// and the content hashes of its inputs.
pub type StageKey = Digest<KeyKind>;
/// The blake3 of bytes: a data file, an artifact file, or a whole artifact (its file list).
pub type ContentHash = Digest<ContentKind>;

impl<K: DigestKind> Digest<K> {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Digest {
            bytes,
            _kind: PhantomData,
        }
    }
    pub fn of(data: &[u8]) -> Self {
        Self::from_bytes(*blake3::hash(data).as_bytes())
    }
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.bytes
    }
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.bytes).to_hex().to_string()
    }
    /// First 12 hex digits, for humans.
    pub fn short(&self) -> String {
        self.to_hex()[..12].to_string()
    }
    pub fn from_hex(s: &str) -> Option<Self> {
        blake3::Hash::from_hex(s)
            .ok()
            .map(|h| Self::from_bytes(*h.as_bytes()))
    }
}

impl<K: DigestKind> Clone for Digest<K> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K: DigestKind> Copy for Digest<K> {}
impl<K: DigestKind> PartialEq for Digest<K> {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}
impl<K: DigestKind> Eq for Digest<K> {}
impl<K: DigestKind> std::hash::Hash for Digest<K> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.bytes.hash(state)
    }
}
impl<K: DigestKind> PartialOrd for Digest<K> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<K: DigestKind> Ord for Digest<K> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.bytes.cmp(&other.bytes)
    }
}
impl<K: DigestKind> fmt::Display for Digest<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}
impl<K: DigestKind> fmt::Debug for Digest<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", K::NAME, self.short())
    }
}
impl<K: DigestKind> Serialize for Digest<K> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(blake3::Hash::from_bytes(self.bytes).to_hex().as_str())
    }
}
impl<'de, K: DigestKind> Deserialize<'de> for Digest<K> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::from_hex(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("invalid {} `{s}`", K::NAME)))
    }
}

/// Canonical bytes of a JSON value: object keys sorted (serde_json's default map is ordered),
/// no whitespace, floats in shortest round-trip form. This is the only encoding hashed into keys.
pub fn canonical_json(value: &serde_json::Value) -> Vec<u8> {
    // serde_json::Map is a BTreeMap unless `preserve_order` is enabled, which this crate never
    // enables; re-sorting here would hide such a change, so assert it in tests instead.
    serde_json::to_vec(value).expect("serialising a serde_json::Value cannot fail")
}

/// Bump when the key derivation itself changes, so old entries are never mistaken for new ones.
pub const KEY_SCHEME: u32 = 1;

/// Everything a stage key is derived from.
///
/// The key is the blake3 of the canonical JSON of this struct: an object with sorted keys.
/// The fields are declared in that sorted order, so serialising the struct directly gives the
/// canonical bytes without building a `serde_json::Value` first (a cached rerun derives every
/// stage's key); `key_via_value` in the tests checks the two agree.
#[derive(Debug, Clone, Serialize)]
pub struct KeyMaterial<'a> {
    /// File role → content hash of the file (paths are deliberately not part of the key, so a
    /// teammate with the data elsewhere shares entries).
    pub files: &'a std::collections::BTreeMap<String, ContentHash>,
    /// Input slot name → content hash of the artifact feeding it.
    pub inputs: &'a std::collections::BTreeMap<String, ContentHash>,
    pub kind: &'a str,
    pub params: &'a serde_json::Value,
    pub scheme: u32,
    pub version: u32,
}

impl KeyMaterial<'_> {
    pub fn key(&self) -> StageKey {
        // Hashed as it is written (the same bytes as `to_vec`, without the buffer).
        let mut h = blake3::Hasher::new();
        serde_json::to_writer(&mut h, self).expect("key material is plain data");
        StageKey::from_bytes(*h.finalize().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_via_value() {
        // The key as it was first derived: through a Value, whose map sorts the fields.
        let params = json!({"lr": 0.001, "hidden": [400, 400], "z": {"b": 1, "a": null}});
        let m = KeyMaterial {
            files: &[("images".to_string(), ContentHash::of(b"i"))].into(),
            inputs: &[
                ("model".to_string(), ContentHash::of(b"m")),
                ("data".to_string(), ContentHash::of(b"d")),
            ]
            .into(),
            kind: "train",
            params: &params,
            scheme: KEY_SCHEME,
            version: 7,
        };
        let value = serde_json::to_value(&m).unwrap();
        assert_eq!(m.key(), StageKey::of(&canonical_json(&value)));
    }

    #[test]
    fn canonical_json_sorts_keys_regardless_of_insertion_order() {
        let a: serde_json::Value = serde_json::from_str(r#"{"b":1,"a":{"y":2,"x":3}}"#).unwrap();
        let b: serde_json::Value = serde_json::from_str(r#"{"a":{"x":3,"y":2},"b":1}"#).unwrap();
        assert_eq!(canonical_json(&a), canonical_json(&b));
        assert_eq!(canonical_json(&a), br#"{"a":{"x":3,"y":2},"b":1}"#.to_vec());
    }

    #[test]
    fn key_depends_on_every_component() {
        let params = json!({"threshold": 0.02});
        let base = KeyMaterial {
            scheme: KEY_SCHEME,
            kind: "prune",
            version: 1,
            params: &params,
            inputs: &[("model".to_string(), ContentHash::of(b"m"))].into(),
            files: &Default::default(),
        };
        let k = base.key();
        let mut v = base.clone();
        v.version = 2;
        assert_ne!(k, v.key());
        let mut v = base.clone();
        v.kind = "mask";
        assert_ne!(k, v.key());
        let p2 = json!({"threshold": 0.05});
        let mut v = base.clone();
        v.params = &p2;
        assert_ne!(k, v.key());
        let mut v = base.clone();
        let other_input = [("model".to_string(), ContentHash::of(b"n"))].into();
        v.inputs = &other_input;
        assert_ne!(k, v.key());
        assert_eq!(k, base.clone().key());
    }

    #[test]
    fn hex_round_trip() {
        let h = ContentHash::of(b"abc");
        assert_eq!(ContentHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(ContentHash::from_hex("zz"), None);
    }
}
