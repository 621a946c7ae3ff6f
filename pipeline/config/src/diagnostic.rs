//! Located configuration errors and their rendering.
//!
//! ```text
//! error: unknown stage kind `sikn`
//!   --> definitions/demo.yaml:12:11
//!    |
//! 12 |     kind: sikn
//!    |           ^^^^
//!    = at: stages.sink.kind
//!    = help: did you mean `sink`? `simclr stages` lists every kind
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

use simclr_core::Loc;

/// One problem in a definition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// Where (`None` only for problems with the file as a whole, e.g. unreadable).
    pub loc: Option<Loc>,
    /// Dotted key path of the node at fault (`stages.views.workers`); empty for the root.
    pub path: String,
    /// What is wrong, naming the stages and values involved.
    pub message: String,
    /// How to fix it.
    pub help: Option<String>,
}

impl Diagnostic {
    /// A problem at `loc` / `path`.
    pub fn new(loc: Loc, path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            loc: Some(loc),
            path: path.into(),
            message: message.into(),
            help: None,
        }
    }

    /// Add a help line.
    #[must_use]
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// Every problem found in one definition file, with the text needed to show them in context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostics {
    /// The file, as the user named it.
    pub file: PathBuf,
    /// Its text (empty if it could not be read).
    pub source: String,
    /// The problems, sorted by position.
    pub items: Vec<Diagnostic>,
}

impl Diagnostics {
    /// A report for `file` whose text is `source`.
    pub fn new(file: &Path, source: &str, mut items: Vec<Diagnostic>) -> Self {
        items.sort_by(|a, b| (a.loc, &a.message).cmp(&(b.loc, &b.message)));
        items.dedup();
        Self {
            file: file.to_owned(),
            source: source.to_owned(),
            items,
        }
    }

    /// `(line, column, message)` of each problem: what tests assert.
    pub fn summary(&self) -> Vec<(u32, u32, String)> {
        self.items
            .iter()
            .map(|d| {
                let loc = d.loc.unwrap_or_default();
                (loc.line, loc.column, d.message.clone())
            })
            .collect()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        let lines: Vec<&str> = self.source.lines().collect();
        for d in &self.items {
            writeln!(f, "error: {}", d.message)?;
            match d.loc {
                Some(loc) => {
                    let number = loc.line.to_string();
                    let pad = " ".repeat(number.len());
                    writeln!(f, "{pad}--> {file}:{}:{}", loc.line, loc.column)?;
                    if let Some(text) = lines.get(loc.line as usize - 1).filter(|_| loc.line > 0) {
                        let col = loc.column.max(1) as usize - 1;
                        let width = token_width(text, col);
                        writeln!(f, "{pad} |")?;
                        writeln!(f, "{number} | {text}")?;
                        let lead: String = text
                            .chars()
                            .take(col)
                            .map(|c| if c == '\t' { '\t' } else { ' ' })
                            .collect();
                        writeln!(f, "{pad} | {lead}{}", "^".repeat(width))?;
                    }
                    if !d.path.is_empty() {
                        writeln!(f, "{pad} = at: {}", d.path)?;
                    }
                    if let Some(help) = &d.help {
                        writeln!(f, "{pad} = help: {help}")?;
                    }
                }
                None => {
                    writeln!(f, " --> {file}")?;
                    if let Some(help) = &d.help {
                        writeln!(f, "  = help: {help}")?;
                    }
                }
            }
            writeln!(f)?;
        }
        let n = self.items.len();
        write!(f, "{file}: {n} error{}", if n == 1 { "" } else { "s" })
    }
}

/// Width of the YAML token starting at character `col` of `line`, for the underline.
fn token_width(line: &str, col: usize) -> usize {
    let rest: Vec<char> = line.chars().skip(col).collect();
    let mut width = 0;
    while width < rest.len() {
        let c = rest[width];
        let next = rest.get(width + 1).copied();
        if c.is_whitespace() || matches!(c, ',' | ']' | '}' | '#') {
            break;
        }
        if c == ':' && next.is_none_or(char::is_whitespace) {
            break;
        }
        width += 1;
    }
    width.max(1)
}

impl std::error::Error for Diagnostics {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_line_an_underline_the_path_and_help() {
        let source = "name: x\nstages:\n  sink:\n    kind: sikn\n";
        let d = Diagnostic::new(
            Loc {
                line: 4,
                column: 11,
            },
            "stages.sink.kind",
            "unknown stage kind `sikn`",
        )
        .with_help("did you mean `sink`?");
        let text = Diagnostics::new(Path::new("demo.yaml"), source, vec![d]).to_string();
        let expected = "error: unknown stage kind `sikn`\n --> demo.yaml:4:11\n  |\n4 |     kind: sikn\n  |           ^^^^\n  = at: stages.sink.kind\n  = help: did you mean `sink`?\n\ndemo.yaml: 1 error";
        assert_eq!(text, expected);
    }

    #[test]
    fn underlines_a_key_without_its_colon() {
        assert_eq!(token_width("  bogus: 1", 2), 5);
        assert_eq!(token_width("device: cuda:0", 8), 6);
        assert_eq!(token_width("inputs: [a, b]", 9), 1);
    }
}

/// The candidate closest to `name` by edit distance, if close enough to be a likely typo.
pub fn closest<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .map(|c| (edit_distance(name, c), c))
        .filter(|&(d, c)| d <= (c.len().max(name.len()) / 3).max(1))
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// Optimal string alignment distance: insertions, deletions, substitutions and adjacent
/// transpositions (the commonest typo, `sikn` for `sink`) each cost 1.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod closest_tests {
    use super::*;

    #[test]
    fn suggests_near_misses_only() {
        let kinds = ["sink", "sequence", "resnet"];
        assert_eq!(closest("sikn", kinds.iter().copied()), Some("sink"));
        assert_eq!(closest("sequense", kinds.iter().copied()), Some("sequence"));
        assert_eq!(closest("transformer", kinds.iter().copied()), None);
    }
}
