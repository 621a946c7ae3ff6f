//! The set of stage kinds a definition may use.

use simclr_core::{Extensions, StageKind};

/// An ordered, explicit list of stage kinds, and the values (registered transforms, say) a
/// program hands to their `build` functions ([`Registry::extensions_mut`]).
#[derive(Clone, Debug, Default)]
pub struct Registry {
    kinds: Vec<&'static StageKind>,
    extensions: Extensions,
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

    /// What the kinds' `build` functions can look up (`BuildContext::extension`).
    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// Add or change such values.
    pub fn extensions_mut(&mut self) -> &mut Extensions {
        &mut self.extensions
    }

    /// Every kind, in registration order.
    pub fn iter(&self) -> impl Iterator<Item = &'static StageKind> + '_ {
        self.kinds.iter().copied()
    }
}
