//! Process-wide handles that stage kinds need and the engine only carries: a map from type to
//! value, filled by the binary before a run and read by stages through
//! [`StageContext::resource`](super::StageContext::resource). The engine knows nothing of what
//! they are (a compute device opened once, say), so it stays free of any domain crate, and a
//! handle that is costly to open is opened once per process instead of once per stage run.
//!
//! Resources are never part of a stage key: a stage's result must not depend on them beyond
//! what its parameters and inputs say (a GPU and a CPU compute the same stage).

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;

/// Shared handles by type; cloning shares them.
#[derive(Clone, Default)]
pub struct Resources(Arc<HashMap<TypeId, Arc<dyn Any + Send + Sync>>>);

impl Resources {
    pub fn new() -> Self {
        Self::default()
    }

    /// These resources plus `value`, replacing any earlier value of its type.
    pub fn with<T: Any + Send + Sync>(self, value: T) -> Self {
        let mut map = Arc::try_unwrap(self.0).unwrap_or_else(|shared| (*shared).clone());
        map.insert(TypeId::of::<T>(), Arc::new(value));
        Resources(Arc::new(map))
    }

    /// The value of type `T`, if one was given.
    pub fn get<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.0.get(&TypeId::of::<T>())?.downcast_ref()
    }
}

impl std::fmt::Debug for Resources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Resources({} handles)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Device(u32);

    #[test]
    fn a_resource_is_found_by_its_type_and_a_later_one_replaces_it() {
        let r = Resources::new().with(Device(1)).with(7u8);
        assert_eq!(r.get::<Device>(), Some(&Device(1)));
        assert_eq!(r.get::<u8>(), Some(&7));
        assert_eq!(r.get::<u16>(), None);
        let shared = r.clone();
        let r = r.with(Device(2));
        assert_eq!(r.get::<Device>(), Some(&Device(2)));
        assert_eq!(
            shared.get::<Device>(),
            Some(&Device(1)),
            "clones keep theirs"
        );
    }
}
