//! The set of stage kinds a definition may use.

use simclr_core::StageKind;

/// An ordered, explicit list of stage kinds.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    kinds: Vec<&'static StageKind>,
}

impl Registry {
    /// A registry of `kinds`, in the order given (the order `simclr stages` lists them).
    ///
    /// # Panics
    /// If two kinds share a name: that is a programming error in the list, caught by a test.
    pub fn new(kinds: impl IntoIterator<Item = &'static StageKind>) -> Self {
        let mut registry = Self::default();
        for kind in kinds {
            registry.add(kind);
        }
        registry
    }

    /// Add one kind.
    ///
    /// # Panics
    /// If a kind of that name is already registered.
    pub fn add(&mut self, kind: &'static StageKind) {
        assert!(
            self.get(kind.name).is_none(),
            "stage kind `{}` registered twice",
            kind.name
        );
        self.kinds.push(kind);
    }

    /// The kind named `name`.
    pub fn get(&self, name: &str) -> Option<&'static StageKind> {
        self.kinds.iter().copied().find(|k| k.name == name)
    }

    /// Every kind, in registration order.
    pub fn iter(&self) -> impl Iterator<Item = &'static StageKind> + '_ {
        self.kinds.iter().copied()
    }
}
