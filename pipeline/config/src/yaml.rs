//! The one module that knows the YAML crate: text in, located [`Value`] tree out.
//!
//! serde_yaml is archived (RUSTSEC-2024-0320); we use serde-saphyr, which keeps the serde
//! API, has no unsafe code and reports line:column for every node. Duplicate keys are passed
//! through so the graph layer can report a duplicate stage id with both locations; booleans
//! are strict (`true`/`false` only), so a key such as `n` or `y` stays a string.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{DuplicateKeyPolicy, Spanned};
use simclr_core::{Loc, Value, ValueKind};

/// A YAML syntax error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    /// The parser's message, without its location suffix.
    pub message: String,
    /// Where the parser stopped.
    pub loc: Loc,
}

/// Parse one YAML document. An empty document (or one of only comments) is `Null`.
///
/// # Errors
/// A syntax error, located.
pub fn parse(text: &str) -> Result<Value, SyntaxError> {
    let options = serde_saphyr::options! {
        duplicate_keys: DuplicateKeyPolicy::PassThrough,
        strict_booleans: true,
    };
    match serde_saphyr::from_str_with_options::<Spanned<Node>>(text, options) {
        Ok(node) => Ok(convert(node)),
        Err(error) => {
            let loc = error
                .location()
                .map(|l| Loc {
                    line: to_u32(l.line()),
                    column: to_u32(l.column()),
                })
                .unwrap_or(Loc { line: 1, column: 1 });
            let mut message = error.without_snippet().to_string();
            if let Some(cut) = message.rfind(" at line ") {
                message.truncate(cut);
            }
            if let Some(rest) = message.strip_prefix("error: ") {
                message = rest.to_owned();
            }
            if let Some(idx) = message.find(": ").filter(|_| message.starts_with("line ")) {
                message = message[idx + 2..].to_owned();
            }
            if message.contains("multiple YAML documents") {
                message = "a definition file holds exactly one YAML document (found `---`)".into();
            }
            Err(SyntaxError { message, loc })
        }
    }
}

fn to_u32(x: u64) -> u32 {
    u32::try_from(x).unwrap_or(u32::MAX)
}

fn convert(node: Spanned<Node>) -> Value {
    let loc = Loc {
        line: to_u32(node.referenced.line()),
        column: to_u32(node.referenced.column()),
    };
    let kind = match node.value {
        Node::Null => ValueKind::Null,
        Node::Bool(b) => ValueKind::Bool(b),
        Node::Int(i) => ValueKind::Int(i),
        Node::UInt(u) => ValueKind::UInt(u),
        Node::Float(x) => ValueKind::Float(x),
        Node::Str(s) => ValueKind::Str(s),
        Node::Seq(items) => ValueKind::Seq(items.into_iter().map(convert).collect()),
        Node::Map(entries) => ValueKind::Map(
            entries
                .into_iter()
                .map(|(k, v)| (convert(k), convert(v)))
                .collect(),
        ),
    };
    Value::new(loc, kind)
}

/// The parser-side tree: every node wrapped in serde-saphyr's `Spanned`.
enum Node {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(Spanned<Node>, Spanned<Node>)>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any YAML node")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        Ok(i64::try_from(v).map_or(Node::UInt(v), Node::Int))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(Node::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_locations_duplicates_and_plain_strings() {
        let v = parse("a: 1\nn: y\na: [x, 2.5]\n").expect("valid yaml");
        let entries = v.entries().expect("mapping");
        assert_eq!(entries.len(), 3, "duplicate key kept");
        assert_eq!(entries[1].0.as_str(), Some("n"));
        assert_eq!(entries[1].1.as_str(), Some("y"));
        assert_eq!(entries[2].1.loc, Loc { line: 3, column: 4 });
    }

    #[test]
    fn empty_and_comment_only_documents_are_null() {
        assert!(parse("").expect("empty").is_null());
        assert!(parse("# nothing\n\n").expect("comments").is_null());
    }

    #[test]
    fn syntax_errors_are_located_and_bare() {
        let e = parse("a: [1,\n").expect_err("unclosed");
        assert_eq!(e.loc, Loc { line: 1, column: 4 });
        assert_eq!(e.message, "unclosed bracket '['");
    }
}
