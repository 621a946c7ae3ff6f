//! A configuration value tree that remembers where every node came from, and a serde
//! deserializer over it.
//!
//! The YAML parser lives behind one module of `simclr-config`, which turns a document into a
//! [`Value`]. Everything after that (the definition's own fields, every stage's parameters)
//! is deserialized from the tree with [`from_value`], so each error carries the line:column
//! and the key path of the node at fault, however deep, and each stage's parameters can be
//! checked independently of the others (all errors are collected, not just the first).

use std::fmt;

use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};

/// A 1-based line and column in a definition file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Loc {
    /// Line, from 1.
    pub line: u32,
    /// Column (in characters), from 1.
    pub column: u32,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// A node of a parsed definition, with its location.
#[derive(Clone, Debug, PartialEq)]
pub struct Value {
    /// Where the node starts.
    pub loc: Loc,
    /// What it is.
    pub kind: ValueKind,
}

/// The shape of a [`Value`].
#[derive(Clone, Debug, PartialEq)]
pub enum ValueKind {
    /// `null`, `~` or nothing.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer that fits `i64`.
    Int(i64),
    /// A positive integer above `i64::MAX`.
    UInt(u64),
    /// A floating-point number.
    Float(f64),
    /// A string (quoted or plain).
    Str(String),
    /// A sequence.
    Seq(Vec<Value>),
    /// A mapping, in document order; duplicate keys are kept so they can be reported.
    Map(Vec<(Value, Value)>),
}

impl Value {
    /// A value at `loc`.
    pub fn new(loc: Loc, kind: ValueKind) -> Self {
        Self { loc, kind }
    }

    /// An empty mapping at `loc` (what an absent `params:` means).
    pub fn empty_map(loc: Loc) -> Self {
        Self::new(loc, ValueKind::Map(Vec::new()))
    }

    /// The value under `key` if this is a mapping holding it (the first, if duplicated).
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    /// The entries if this is a mapping.
    pub fn entries(&self) -> Option<&[(Value, Value)]> {
        match &self.kind {
            ValueKind::Map(entries) => Some(entries),
            _ => None,
        }
    }

    /// The string if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            ValueKind::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Whether this is `null` (or absent content).
    pub fn is_null(&self) -> bool {
        matches!(self.kind, ValueKind::Null)
    }

    /// An article and a noun for error messages: "a mapping", "a string", ...
    pub fn describe(&self) -> &'static str {
        match self.kind {
            ValueKind::Null => "null",
            ValueKind::Bool(_) => "a boolean",
            ValueKind::Int(_) | ValueKind::UInt(_) => "an integer",
            ValueKind::Float(_) => "a number",
            ValueKind::Str(_) => "a string",
            ValueKind::Seq(_) => "a sequence",
            ValueKind::Map(_) => "a mapping",
        }
    }
}

/// A deserialization error with the location and key path of the node at fault.
#[derive(Clone, Debug, PartialEq)]
pub struct ValueError {
    /// What went wrong, in serde's words ("missing field `count`", "invalid type: ...").
    pub message: String,
    /// Where, when known.
    pub loc: Option<Loc>,
    /// Dotted key path, e.g. `stages.views.params.size` (empty for the root).
    pub path: String,
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.loc {
            Some(loc) => write!(f, "{loc}: {}: {}", self.path, self.message),
            None => write!(f, "{}: {}", self.path, self.message),
        }
    }
}

impl std::error::Error for ValueError {}

impl de::Error for ValueError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self {
            message: msg.to_string(),
            loc: None,
            path: String::new(),
        }
    }
}

impl ValueError {
    /// Attach a location and path if the error has none yet: the innermost node that sees
    /// the error first claims it.
    fn locate(mut self, value: &Value, path: &str) -> Self {
        if self.loc.is_none() {
            self.loc = Some(value.loc);
            self.path = path.to_owned();
        }
        self
    }
}

/// Deserialize a `T` from `value`; errors carry paths that start with `path`.
///
/// # Errors
/// The first mismatch between `value` and `T`, located.
pub fn from_value<T: DeserializeOwned>(value: &Value, path: &str) -> Result<T, ValueError> {
    T::deserialize(ValueDeserializer {
        value,
        path: path.to_owned(),
    })
}

/// Joins a path and a key: `a.b` + `c` = `a.b.c`.
pub fn join_path(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// The serde deserializer over a [`Value`].
struct ValueDeserializer<'a> {
    value: &'a Value,
    path: String,
}

impl<'a> ValueDeserializer<'a> {
    fn any<'de, V: Visitor<'de>>(&self, visitor: V) -> Result<V::Value, ValueError> {
        match &self.value.kind {
            ValueKind::Null => visitor.visit_unit(),
            ValueKind::Bool(b) => visitor.visit_bool(*b),
            ValueKind::Int(i) => visitor.visit_i64(*i),
            ValueKind::UInt(u) => visitor.visit_u64(*u),
            ValueKind::Float(x) => visitor.visit_f64(*x),
            ValueKind::Str(s) => visitor.visit_str(s),
            ValueKind::Seq(items) => visitor.visit_seq(SeqAccess {
                items: items.iter().enumerate(),
                path: &self.path,
            }),
            ValueKind::Map(entries) => visitor.visit_map(MapAccess {
                entries: entries.iter(),
                pending: None,
                path: &self.path,
            }),
        }
    }
}

impl<'de, 'a> de::Deserializer<'de> for ValueDeserializer<'a> {
    type Error = ValueError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        self.any(visitor)
            .map_err(|e| e.locate(self.value, &self.path))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        if self.value.is_null() {
            visitor.visit_none()
        } else {
            let (value, path) = (self.value, self.path.clone());
            visitor.visit_some(self).map_err(|e| e.locate(value, &path))
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        let (value, path) = (self.value, self.path.clone());
        visitor
            .visit_newtype_struct(self)
            .map_err(|e| e.locate(value, &path))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        let result = match &self.value.kind {
            ValueKind::Str(s) => visitor.visit_enum(s.as_str().into_deserializer()),
            ValueKind::Map(entries) if entries.len() == 1 => {
                let (key, value) = &entries[0];
                visitor.visit_enum(EnumAccess {
                    key,
                    value,
                    path: &self.path,
                })
            }
            _ => Err(de::Error::custom(format!(
                "expected a variant name or a one-key mapping, found {}",
                self.value.describe()
            ))),
        };
        result.map_err(|e| e.locate(self.value, &self.path))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}

struct SeqAccess<'a> {
    items: std::iter::Enumerate<std::slice::Iter<'a, Value>>,
    path: &'a str,
}

impl<'de, 'a> de::SeqAccess<'de> for SeqAccess<'a> {
    type Error = ValueError;

    fn next_element_seed<T: de::DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, ValueError> {
        match self.items.next() {
            None => Ok(None),
            Some((i, value)) => seed
                .deserialize(ValueDeserializer {
                    value,
                    path: format!("{}[{i}]", self.path),
                })
                .map(Some),
        }
    }
}

struct MapAccess<'a> {
    entries: std::slice::Iter<'a, (Value, Value)>,
    pending: Option<(&'a Value, String)>,
    path: &'a str,
}

fn key_path(parent: &str, key: &Value) -> String {
    match &key.kind {
        ValueKind::Str(s) => join_path(parent, s),
        _ => join_path(parent, "?"),
    }
}

impl<'de, 'a> de::MapAccess<'de> for MapAccess<'a> {
    type Error = ValueError;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, ValueError> {
        match self.entries.next() {
            None => Ok(None),
            Some((key, value)) => {
                let path = key_path(self.path, key);
                self.pending = Some((value, path.clone()));
                seed.deserialize(ValueDeserializer { value: key, path })
                    .map(Some)
            }
        }
    }

    fn next_value_seed<V: de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, ValueError> {
        match self.pending.take() {
            Some((value, path)) => seed.deserialize(ValueDeserializer { value, path }),
            None => Err(de::Error::custom("value requested before key")),
        }
    }
}

struct EnumAccess<'a> {
    key: &'a Value,
    value: &'a Value,
    path: &'a str,
}

impl<'de, 'a> de::EnumAccess<'de> for EnumAccess<'a> {
    type Error = ValueError;
    type Variant = VariantAccess<'a>;

    fn variant_seed<V: de::DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self::Variant), ValueError> {
        let path = key_path(self.path, self.key);
        let variant = seed.deserialize(ValueDeserializer {
            value: self.key,
            path: path.clone(),
        })?;
        Ok((
            variant,
            VariantAccess {
                value: self.value,
                path,
            },
        ))
    }
}

struct VariantAccess<'a> {
    value: &'a Value,
    path: String,
}

impl<'de, 'a> de::VariantAccess<'de> for VariantAccess<'a> {
    type Error = ValueError;

    fn unit_variant(self) -> Result<(), ValueError> {
        if self.value.is_null() {
            Ok(())
        } else {
            Err(ValueError {
                message: format!(
                    "this variant takes no value, found {}",
                    self.value.describe()
                ),
                loc: Some(self.value.loc),
                path: self.path,
            })
        }
    }

    fn newtype_variant_seed<T: de::DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, ValueError> {
        seed.deserialize(ValueDeserializer {
            value: self.value,
            path: self.path,
        })
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        de::Deserializer::deserialize_any(
            ValueDeserializer {
                value: self.value,
                path: self.path,
            },
            visitor,
        )
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        de::Deserializer::deserialize_any(
            ValueDeserializer {
                value: self.value,
                path: self.path,
            },
            visitor,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(line: u32, column: u32, kind: ValueKind) -> Value {
        Value::new(Loc { line, column }, kind)
    }

    fn s(line: u32, column: u32, text: &str) -> Value {
        at(line, column, ValueKind::Str(text.into()))
    }

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Params {
        count: u32,
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        mode: Mode,
    }

    #[derive(Debug, serde::Deserialize, PartialEq, Default)]
    #[serde(rename_all = "snake_case")]
    enum Mode {
        #[default]
        Fast,
        Slow,
    }

    fn map(entries: Vec<(Value, Value)>) -> Value {
        at(1, 1, ValueKind::Map(entries))
    }

    #[test]
    fn deserializes_a_struct_with_options_and_enums() {
        let v = map(vec![
            (s(1, 1, "count"), at(1, 8, ValueKind::Int(3))),
            (s(2, 1, "mode"), s(2, 7, "slow")),
        ]);
        let p: Params = from_value(&v, "p").expect("valid");
        assert_eq!(
            p,
            Params {
                count: 3,
                name: None,
                mode: Mode::Slow
            }
        );
    }

    #[test]
    fn a_wrong_type_points_at_the_value() {
        let v = map(vec![(s(1, 1, "count"), s(1, 8, "many"))]);
        let e = from_value::<Params>(&v, "stages.x.params").expect_err("bad type");
        assert_eq!(e.loc, Some(Loc { line: 1, column: 8 }));
        assert_eq!(e.path, "stages.x.params.count");
        assert!(e.message.contains("invalid type: string \"many\""), "{e}");
    }

    #[test]
    fn an_unknown_key_points_at_the_key() {
        let v = map(vec![
            (s(1, 1, "count"), at(1, 8, ValueKind::Int(3))),
            (s(4, 3, "cuont"), at(4, 10, ValueKind::Int(3))),
        ]);
        let e = from_value::<Params>(&v, "").expect_err("unknown key");
        assert_eq!(e.loc, Some(Loc { line: 4, column: 3 }));
        assert_eq!(e.path, "cuont");
        assert!(e.message.starts_with("unknown field `cuont`"), "{e}");
    }

    #[test]
    fn a_missing_field_points_at_the_mapping() {
        let v = at(7, 5, ValueKind::Map(vec![(s(7, 5, "name"), s(7, 11, "a"))]));
        let e = from_value::<Params>(&v, "params").expect_err("missing");
        assert_eq!(e.loc, Some(Loc { line: 7, column: 5 }));
        assert_eq!(e.path, "params");
        assert_eq!(e.message, "missing field `count`");
    }

    #[test]
    fn a_negative_number_for_an_unsigned_field_is_rejected() {
        let v = map(vec![(s(1, 1, "count"), at(1, 8, ValueKind::Int(-2)))]);
        let e = from_value::<Params>(&v, "").expect_err("negative");
        assert_eq!(e.loc, Some(Loc { line: 1, column: 8 }));
        assert!(e.message.contains("-2"), "{e}");
    }

    #[test]
    fn sequences_extend_the_path_with_an_index() {
        let v = at(
            1,
            1,
            ValueKind::Seq(vec![at(1, 2, ValueKind::Int(1)), s(1, 5, "x")]),
        );
        let e = from_value::<Vec<u8>>(&v, "inputs").expect_err("bad element");
        assert_eq!(e.path, "inputs[1]");
        assert_eq!(e.loc, Some(Loc { line: 1, column: 5 }));
    }
}
