//! Values a program hands to every stage kind's `build` through its registry, one per type:
//! how a kind finds what the program added beside the built-in kinds (the `views` stage, the
//! transforms a program registered) without a process-wide table.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

/// A set of values keyed by their type.
#[derive(Clone, Default)]
pub struct Extensions(Vec<Arc<dyn Any + Send + Sync>>);

impl Extensions {
    /// The value of type `T`, if one was added.
    pub fn get<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.0.iter().find_map(|v| v.downcast_ref::<T>())
    }

    /// Add `value`, replacing a value of the same type.
    pub fn insert<T: Any + Send + Sync>(&mut self, value: T) {
        self.0.retain(|v| !v.is::<T>());
        self.0.push(Arc::new(value));
    }

    /// Change the value of type `T` (starting from `T::default()` when there is none).
    pub fn update<T: Any + Send + Sync + Clone + Default, R>(
        &mut self,
        change: impl FnOnce(&mut T) -> R,
    ) -> R {
        let mut value = self.get::<T>().cloned().unwrap_or_default();
        let result = change(&mut value);
        self.insert(value);
        result
    }
}

impl fmt::Debug for Extensions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Extensions({} values)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_value_per_type() {
        let mut ext = Extensions::default();
        assert_eq!(ext.get::<u32>(), None);
        ext.insert(3_u32);
        ext.insert(String::from("a"));
        ext.insert(4_u32);
        assert_eq!(ext.get::<u32>(), Some(&4));
        assert_eq!(ext.get::<String>().map(String::as_str), Some("a"));
        let len = ext.update(|s: &mut String| {
            s.push('b');
            s.len()
        });
        assert_eq!(
            (len, ext.get::<String>().map(String::as_str)),
            (2, Some("ab"))
        );
        let copy = ext.clone();
        ext.insert(5_u32);
        assert_eq!(copy.get::<u32>(), Some(&4), "clones do not share changes");
    }
}
