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

/// Write a value tree as a YAML document that [`parse`] reads back to the same tree
/// (locations aside): block mappings and sequences, every string double-quoted (JSON
/// escapes), floats in Rust's shortest round-trip form. Comments, anchors and the original
/// layout are not kept: this is for definitions the program resolved (`--set` applied).
pub fn emit(value: &Value) -> String {
    let mut out = String::new();
    match &value.kind {
        ValueKind::Map(entries) if !entries.is_empty() => block_map(entries, 0, &mut out),
        ValueKind::Seq(items) if !items.is_empty() => block_seq(items, 0, &mut out),
        _ => {
            out.push_str(&scalar(value));
            out.push('\n');
        }
    }
    out
}

fn block_map(entries: &[(Value, Value)], indent: usize, out: &mut String) {
    for (i, (k, v)) in entries.iter().enumerate() {
        // The first key of a mapping inside a sequence item follows the `- ` already written.
        if i > 0 || indent == 0 || !out.ends_with("- ") {
            out.push_str(&" ".repeat(indent));
        }
        out.push_str(&key(k));
        out.push(':');
        nested(v, indent, out);
    }
}

fn block_seq(items: &[Value], indent: usize, out: &mut String) {
    for (i, v) in items.iter().enumerate() {
        if i > 0 || indent == 0 || !out.ends_with("- ") {
            out.push_str(&" ".repeat(indent));
        }
        out.push_str("- ");
        match &v.kind {
            ValueKind::Map(entries) if !entries.is_empty() => block_map(entries, indent + 2, out),
            ValueKind::Seq(inner) if !inner.is_empty() => block_seq(inner, indent + 2, out),
            _ => {
                out.push_str(&scalar(v));
                out.push('\n');
            }
        }
    }
}

/// The value after `key:` at `indent`.
fn nested(v: &Value, indent: usize, out: &mut String) {
    match &v.kind {
        ValueKind::Map(entries) if !entries.is_empty() => {
            out.push('\n');
            block_map(entries, indent + 2, out);
        }
        ValueKind::Seq(items) if !items.is_empty() => {
            out.push('\n');
            block_seq(items, indent + 2, out);
        }
        _ => {
            out.push(' ');
            out.push_str(&scalar(v));
            out.push('\n');
        }
    }
}

fn key(k: &Value) -> String {
    match &k.kind {
        ValueKind::Str(s) if plain_key(s) => s.clone(),
        _ => scalar(k),
    }
}

/// A key that reads back as the same string unquoted.
fn plain_key(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n"
        )
}

fn scalar(v: &Value) -> String {
    match &v.kind {
        ValueKind::Null => "null".into(),
        ValueKind::Bool(b) => b.to_string(),
        ValueKind::Int(i) => i.to_string(),
        ValueKind::UInt(u) => u.to_string(),
        ValueKind::Float(f) if f.is_nan() => ".nan".into(),
        ValueKind::Float(f) if f.is_infinite() => if *f > 0.0 { ".inf" } else { "-.inf" }.into(),
        ValueKind::Float(f) => {
            // Rust's shortest round-trip form: `0.5`, `3.0`, `1e-7`, `1e20`. A mantissa
            // without a dot (`1e-7`) gets one, which every YAML version reads as a float.
            let text = format!("{f:?}");
            match text.split_once('e') {
                Some((mantissa, exp)) if !mantissa.contains('.') => {
                    format!("{mantissa}.0e{exp}")
                }
                _ => text,
            }
        }
        ValueKind::Str(s) => quoted(s),
        ValueKind::Seq(_) => "[]".into(),
        ValueKind::Map(_) => "{}".into(),
    }
}

/// `s` in double quotes with JSON's escapes (a YAML double-quoted scalar).
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
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

    /// The tree without its locations.
    fn shape(v: &Value) -> String {
        match &v.kind {
            ValueKind::Map(entries) => format!(
                "{{{}}}",
                entries
                    .iter()
                    .map(|(k, v)| format!("{}: {}", shape(k), shape(v)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            ValueKind::Seq(items) => format!(
                "[{}]",
                items.iter().map(shape).collect::<Vec<_>>().join(", ")
            ),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn emitted_documents_read_back_to_the_same_tree() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../definitions");
        let mut files = 0;
        for entry in std::fs::read_dir(&root).expect("definitions/") {
            let path = entry.expect("entry").path();
            if path.extension().is_none_or(|e| e != "yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read");
            let tree = parse(&text).expect("shipped definitions parse");
            let again = parse(&emit(&tree)).expect("emitted YAML parses");
            assert_eq!(shape(&again), shape(&tree), "{}", path.display());
            files += 1;
        }
        assert!(files >= 5, "read the shipped definitions");
        let tricky = "\
plain: text
quoted: \"a: b # not a comment\"
words: [true, \"true\", null, \"null\", \"yes\", \"1\", \"0x10\", \"\", \" padded \"]
escapes: \"tab\\there\\\"quote\\\\ backslash \\u00e9 \\n line\"
numbers: [0, -3, 18446744073709551615, 0.5, -1.0e-6, 1.0e20, 3.0, 1e-7]
\"key with space\": 1
\"true\": key
\"1\": key
empty_map: {}
empty_seq: []
nested: [[1, [2]], [], {a: {b: [x, {c: d}]}}]
items:
  - { random_resized_crop: { size: 32, scale: [0.08, 1.0] } }
  - random_apply: { p: 0.8, transforms: [{ color_jitter: { brightness: 0.4 } }] }
";
        let tree = parse(tricky).expect("tricky parses");
        let emitted = emit(&tree);
        let again = parse(&emitted).expect("emitted parses");
        assert_eq!(shape(&again), shape(&tree), "{emitted}");
    }
}
