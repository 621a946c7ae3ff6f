//! `webdataset`: images in tar shards, in the WebDataset layout — consecutive members that share
//! a key (the path up to the first dot of the file name) are one sample: `key.jpg` (or `.png`,
//! `.webp`, …) the image, `key.cls` its class as decimal text, anything else ignored. Shards are
//! written by `simclr data pack` ([`crate::pack`]), by Python's `webdataset`/`tarfile`, or by
//! `tar` itself.
//!
//! `path` names the shards: a folder (its `*.tar`), a glob (`shards/train-*.tar`) or a brace
//! pattern as WebDataset spells it (`train-{000000..000127}.tar`, `{a,b}.tar`).
//!
//! **Order.** Each epoch the shards are put in a seeded order and read in turn through a
//! shuffle buffer of `shuffle_buffer` samples (WebDataset's `shuffle(n)`): the order depends
//! only on the seed and the epoch, and memory on the buffer, not on the dataset. Workers
//! decode every n-th sample of that stream, and several ranks interleave it as with the other
//! sources, so every rank reads only its share and the global batches are the one-process
//! run's for any number of ranks; a resumed run restarts at its exact position.
//!
//! **Reading.** A shard's member table (offsets, keys, labels) is read from its tar headers the
//! first time one of its samples is needed, and kept for a few shards at a time; a sample is
//! then one positioned read. The sample counts come from the `index.json` that
//! `simclr data pack` writes beside its shards (used for a shard only while its size and
//! modification time match), else from the headers.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read as _;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use simclr_core::{
    BuildContext, DataError, InputPorts, OutputPort, Parallelism, ParamError, PortType,
    StageFactory, StageKind,
};

use crate::common::{Dataset, ItemError, Order, Sample, Split, check_options, factory_ordered};

/// Image members, by extension.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "bmp", "gif"];

/// The index file `simclr data pack` writes beside its shards.
pub const INDEX_FILE: &str = "index.json";

crate::source_config! {
    /// Parameters of `webdataset`.
    pub struct WebDatasetConfig {
        /// The shards: a folder (its `*.tar` files), a glob (`data/train-*.tar`) or a brace
        /// pattern (`data/train-{000000..000127}.tar`).
        pub path: String,
        /// Samples held in the shuffle buffer (WebDataset's `shuffle(n)`); 0 or 1: the shards'
        /// own order (still shuffled shard by shard when `shuffle` is on).
        #[serde(default = "default_buffer")]
        pub shuffle_buffer: usize,
        /// Label samples by their `.cls` member.
        #[serde(default = "crate::common::default_true")]
        pub labels: bool,
        /// 3 (RGB) or 1 (gray): images are converted when decoded.
        #[serde(default = "crate::common::default_channels")]
        pub channels: u8,
    }
}

fn default_buffer() -> usize {
    1000
}

/// The `webdataset` kind.
pub static KIND: StageKind = StageKind {
    name: "webdataset",
    summary: "WebDataset tar shards (key.jpg + key.cls), shard order and a shuffle buffer seeded per epoch, decoded in parallel workers",
    input: InputPorts::None,
    output: OutputPort::Emits(PortType::Images),
    parallelism: Parallelism::Parallel { ordered: true },
    example: "\
name: webdataset-example
stages:
  images:
    kind: webdataset
    workers: 2
    params: { path: 'data/shards/train-{000000..000003}.tar', shuffle_buffer: 2000 }
  drain: { kind: sink, inputs: [images] }
",
    params: || schemars::schema_for!(WebDatasetConfig),
    build,
};

/// A pattern that does not expand: what is wrong, at which character (0-based).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at character {})", at + 1)]
pub struct PatternError {
    /// Character offset in the pattern.
    pub at: usize,
    /// What is wrong.
    pub message: String,
}

/// The most names one pattern may expand to.
const MAX_EXPANDED: usize = 1_000_000;

/// Expand WebDataset's braces: `{000..127}` (a numeric range, zero-padded to the width of its
/// ends when either has a leading zero; descending when the first end is larger) and `{a,b,c}`
/// (alternatives); several braces multiply. No nesting.
///
/// # Errors
/// An unclosed `{`, a stray `}`, nested braces, an empty or malformed range or list, or more
/// than a million names.
pub fn expand_braces(pattern: &str) -> Result<Vec<String>, PatternError> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = vec![String::new()];
    let mut i = 0;
    let err = |at: usize, message: &str| PatternError {
        at,
        message: message.to_owned(),
    };
    while i < chars.len() {
        match chars[i] {
            '}' => return Err(err(i, "`}` without an opening `{`")),
            '{' => {
                let open = i;
                let mut j = i + 1;
                while j < chars.len() && chars[j] != '}' {
                    if chars[j] == '{' {
                        return Err(err(j, "nested braces are not supported"));
                    }
                    j += 1;
                }
                if j == chars.len() {
                    return Err(err(open, "`{` is never closed"));
                }
                let body: String = chars[open + 1..j].iter().collect();
                let choices = brace_choices(&body).map_err(|m| err(open, &m))?;
                if out.len().saturating_mul(choices.len()) > MAX_EXPANDED {
                    return Err(err(
                        open,
                        "the pattern expands to more than a million names",
                    ));
                }
                out = out
                    .iter()
                    .flat_map(|prefix| choices.iter().map(move |c| format!("{prefix}{c}")))
                    .collect();
                i = j + 1;
            }
            c => {
                for s in &mut out {
                    s.push(c);
                }
                i += 1;
            }
        }
    }
    Ok(out)
}

/// The alternatives of one brace's body.
fn brace_choices(body: &str) -> Result<Vec<String>, String> {
    if let Some((a, b)) = body.split_once("..") {
        let number = |s: &str| -> Result<u64, String> {
            if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
                return Err(format!(
                    "`{{{body}}}`: a range needs two whole numbers, as in {{000000..000127}}"
                ));
            }
            s.parse::<u64>()
                .map_err(|_| format!("`{{{body}}}`: {s} is too large"))
        };
        let (lo, hi) = (number(a)?, number(b.trim_start_matches('.'))?);
        if b.starts_with('.') {
            return Err(format!(
                "`{{{body}}}`: a range is two numbers joined by `..`"
            ));
        }
        let padded = |s: &str| s.len() > 1 && s.starts_with('0');
        let width = if padded(a) || padded(b) {
            a.len().max(b.len())
        } else {
            0
        };
        let count = lo.abs_diff(hi) + 1;
        if count > MAX_EXPANDED as u64 {
            return Err(format!("`{{{body}}}` holds more than a million numbers"));
        }
        let values: Vec<u64> = if lo <= hi {
            (lo..=hi).collect()
        } else {
            (hi..=lo).rev().collect()
        };
        return Ok(values.iter().map(|v| format!("{v:0width$}")).collect());
    }
    if !body.contains(',') {
        return Err(format!(
            "`{{{body}}}`: braces hold a range ({{000..127}}) or a list ({{a,b}})"
        ));
    }
    Ok(body.split(',').map(str::to_owned).collect())
}

/// The shard files `pattern` names, in order: a folder's `*.tar` (sorted), a glob's matches
/// (sorted), or the expanded brace pattern's files (in the pattern's order, each required).
///
/// # Errors
/// A malformed pattern, a missing shard, or a folder or glob that names none.
pub fn shard_paths(pattern: &str) -> Result<Vec<PathBuf>, ShardListError> {
    let expanded = expand_braces(pattern).map_err(ShardListError::Pattern)?;
    let mut out = Vec::new();
    for name in &expanded {
        let path = Path::new(name);
        if name.contains(['*', '?', '[']) {
            let mut found: Vec<PathBuf> = glob::glob(name)
                .map_err(|e| ShardListError::Glob(format!("{name}: {e}")))?
                .filter_map(Result::ok)
                .filter(|p| p.is_file())
                .collect();
            found.sort();
            if found.is_empty() {
                return Err(ShardListError::Missing(format!("no file matches {name}")));
            }
            out.extend(found);
        } else if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| ShardListError::Missing(format!("{name}: {e}")))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "tar") && p.is_file())
                .collect();
            found.sort();
            if found.is_empty() {
                return Err(ShardListError::Missing(format!(
                    "no .tar shards in the folder {name}"
                )));
            }
            out.extend(found);
        } else if path.is_file() {
            out.push(path.to_owned());
        } else {
            return Err(ShardListError::Missing(format!(
                "shard {name} does not exist{}",
                if expanded.len() > 1 {
                    format!(
                        " ({} of the pattern's {} names)",
                        out.len() + 1,
                        expanded.len()
                    )
                } else {
                    String::new()
                }
            )));
        }
    }
    Ok(out)
}

/// Why `path` names no shards.
#[derive(Debug, thiserror::Error)]
pub enum ShardListError {
    /// The brace pattern is malformed.
    #[error("{0}")]
    Pattern(PatternError),
    /// The glob is malformed.
    #[error("{0}")]
    Glob(String),
    /// A named shard, or any match, is missing.
    #[error("{0}")]
    Missing(String),
}

/// One sample of a shard: its key, where its image member's bytes are, its label, or why it
/// cannot be read.
#[derive(Clone, Debug)]
pub struct Member {
    /// The key (member path up to the first dot of its file name).
    pub key: String,
    /// The image member's name, data offset and size.
    pub image: Option<(String, u64, u64)>,
    /// The `.cls` member's class.
    pub label: Option<u32>,
    /// Why the sample cannot be used (no image member, an unreadable `.cls`, a member cut
    /// short by the end of the file).
    pub problem: Option<String>,
}

impl Member {
    /// A sample with key `key` and nothing found yet.
    fn new(key: &str) -> Self {
        Self {
            key: key.to_owned(),
            image: None,
            label: None,
            problem: None,
        }
    }
}

/// A shard's samples in file order.
#[derive(Debug)]
pub struct ShardTable {
    /// The shard file.
    pub path: PathBuf,
    file: File,
    /// Its samples.
    pub members: Vec<Member>,
}

/// `(key, extension)` of a member path: the extension starts at the first dot of the file
/// name, as WebDataset splits it (`a/b.seg.png` → `a/b`, `seg.png`).
fn split_key(path: &str) -> (&str, &str) {
    let start = path.rfind('/').map_or(0, |i| i + 1);
    match path[start..].find('.') {
        Some(dot) => (&path[..start + dot], &path[start + dot + 1..]),
        None => (path, ""),
    }
}

/// Whether an extension (`jpg`, `seg.png`) names an image member: its last part is an image
/// format's.
fn is_image(ext: &str) -> bool {
    let last = ext.rsplit('.').next().unwrap_or(ext).to_ascii_lowercase();
    IMAGE_EXTENSIONS.contains(&last.as_str())
}

/// Read a shard's tar headers into its table: consecutive members with one key are one sample.
/// A member whose data runs past the end of the file, or headers that stop making sense, end
/// the table with a sample whose `problem` says so (the samples before it stay readable).
///
/// # Errors
/// A shard that cannot be opened.
pub fn read_table(path: &Path) -> Result<ShardTable, DataError> {
    let cannot_open = |e: std::io::Error| DataError::File {
        path: path.to_owned(),
        message: Some("cannot open the shard".into()),
        source: Some(Box::new(e)),
    };
    let file = File::open(path).map_err(cannot_open)?;
    let file_len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut members: Vec<Member> = Vec::new();
    let reader = file.try_clone().map_err(cannot_open)?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(reader));
    let mut last_name = String::new();
    // Headers that cannot be read (from the first one on, or after `last_name`) end the table
    // with a sample saying so.
    let broken = |last_name: &str, e: std::io::Error| Member {
        problem: Some(if last_name.is_empty() {
            format!("not a readable tar file: {e}")
        } else {
            format!("the tar headers stop making sense after member {last_name}: {e}")
        }),
        ..Member::new(last_name)
    };
    let entries = match archive.entries_with_seek() {
        Ok(e) => e,
        Err(e) => {
            members.push(broken("", e));
            return Ok(ShardTable {
                path: path.to_owned(),
                file,
                members,
            });
        }
    };
    for entry in entries {
        let mut entry = match entry {
            Ok(e) => e,
            Err(e) => {
                members.push(broken(&last_name, e));
                break;
            }
        };
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry.path().map_or_else(
            |_| String::from_utf8_lossy(&entry.path_bytes()).into_owned(),
            |p| p.to_string_lossy().into_owned(),
        );
        let (offset, size) = (entry.raw_file_position(), entry.size());
        let (key, ext) = split_key(&name);
        if members.last().is_none_or(|m| m.key != key) {
            members.push(Member::new(key));
        }
        let Some(sample) = members.last_mut() else {
            continue;
        };
        last_name.clone_from(&name);
        if offset.saturating_add(size) > file_len {
            sample.problem = Some(format!(
                "member {name} is cut short: the shard ends {} bytes into its {size}",
                file_len.saturating_sub(offset)
            ));
            break;
        }
        if is_image(ext) {
            if sample.image.is_none() {
                sample.image = Some((name.clone(), offset, size));
            }
        } else if ext.eq_ignore_ascii_case("cls") {
            let mut text = String::new();
            let read = (&mut entry).take(64).read_to_string(&mut text);
            match read.ok().and_then(|_| text.trim().parse::<u32>().ok()) {
                Some(v) => sample.label = Some(v),
                None => {
                    sample.problem = Some(format!(
                        "member {name} does not hold a class number (found {:?})",
                        text.trim()
                    ));
                }
            }
        }
    }
    for m in &mut members {
        if m.image.is_none() && m.problem.is_none() {
            m.problem = Some(format!(
                "sample {} has no image member ({})",
                m.key,
                IMAGE_EXTENSIONS.join(", ")
            ));
        }
    }
    Ok(ShardTable {
        path: path.to_owned(),
        file,
        members,
    })
}

/// One shard's entry in [`Index`].
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct IndexShard {
    /// File name, relative to the index.
    pub name: String,
    /// Samples.
    pub count: u64,
    /// File size.
    pub bytes: u64,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// Modification time, nanoseconds since the epoch (the index is trusted for this shard
    /// only while it matches).
    pub modified_ns: u128,
    /// Dataset position of its first sample.
    pub first: u64,
}

/// `index.json`: what `simclr data pack` wrote.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Index {
    /// `simclr-webdataset`.
    pub format: String,
    /// Version of this layout.
    pub version: u32,
    /// What was packed (`image_folder (data/photos)`), and how.
    pub source: String,
    /// Samples in all shards.
    pub count: u64,
    /// Class names, by class number (empty when unknown).
    pub classes: Vec<String>,
    /// The shards, in order.
    pub shards: Vec<IndexShard>,
    /// How images were stored: `max_side`, `side` (`longer`/`shorter`), `format`, `quality`.
    pub encoding: serde_json::Value,
}

/// Modification time of a file in nanoseconds since the epoch (0 when unknown).
pub fn modified_ns(meta: &std::fs::Metadata) -> u128 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos())
}

/// Sample counts of `shards`: from the `index.json` beside each shard while its entry's size
/// and modification time match the file, else from the shard's headers. Also the index's class
/// names, when every shard is in one index.
///
/// # Errors
/// A shard that cannot be opened.
pub fn counts(shards: &[PathBuf]) -> Result<(Vec<u64>, Vec<String>), DataError> {
    let mut indexes: HashMap<PathBuf, Option<Index>> = HashMap::new();
    let mut out = Vec::with_capacity(shards.len());
    let mut classes: Option<Vec<String>> = None;
    let mut all_indexed = true;
    for path in shards {
        let dir = path.parent().map(Path::to_owned).unwrap_or_default();
        let index = indexes.entry(dir.clone()).or_insert_with(|| {
            let file = if dir.as_os_str().is_empty() {
                PathBuf::from(INDEX_FILE)
            } else {
                dir.join(INDEX_FILE)
            };
            std::fs::read(file)
                .ok()
                .and_then(|b| serde_json::from_slice::<Index>(&b).ok())
        });
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let meta = std::fs::metadata(path).map_err(|e| DataError::File {
            path: path.clone(),
            message: Some("cannot read the shard".into()),
            source: Some(Box::new(e)),
        })?;
        let entry = index.as_ref().and_then(|i| {
            i.shards.iter().find(|s| {
                s.name == name && s.bytes == meta.len() && s.modified_ns == modified_ns(&meta)
            })
        });
        match entry {
            Some(e) => {
                out.push(e.count);
                if classes.is_none() {
                    classes = index.as_ref().map(|i| i.classes.clone());
                }
            }
            None => {
                all_indexed = false;
                out.push(read_table(path)?.members.len() as u64);
            }
        }
    }
    Ok((
        out,
        if all_indexed {
            classes.unwrap_or_default()
        } else {
            Vec::new()
        },
    ))
}

/// Shards kept open with their tables at once, at least.
const MIN_CACHED: usize = 4;

/// The samples of a list of shards, numbered in shard order.
#[derive(Debug)]
pub struct Shards {
    paths: Vec<PathBuf>,
    /// `starts[s]`: number of the first sample of shard `s`; one more entry, the total.
    starts: Vec<u64>,
    channels: u8,
    labels: bool,
    /// Recently used shard tables (least recent first).
    cache: Mutex<Vec<(usize, Arc<ShardTable>)>>,
    capacity: usize,
}

impl Shards {
    /// The samples of `paths` with `counts` samples each; tables of about `keep` shards stay
    /// open (at least four).
    pub fn new(
        paths: Vec<PathBuf>,
        counts: &[u64],
        channels: u8,
        labels: bool,
        keep: usize,
    ) -> Self {
        let mut starts = Vec::with_capacity(counts.len() + 1);
        let mut total = 0;
        starts.push(0);
        for &c in counts {
            total += c;
            starts.push(total);
        }
        Self {
            paths,
            starts,
            channels,
            labels,
            cache: Mutex::new(Vec::new()),
            capacity: keep.max(MIN_CACHED),
        }
    }

    /// The shard holding sample `index`, and the sample's place in it.
    fn locate(&self, index: u64) -> Option<(usize, usize)> {
        if index >= *self.starts.last()? {
            return None;
        }
        let shard = self.starts.partition_point(|&s| s <= index) - 1;
        Some((shard, (index - self.starts[shard]) as usize))
    }

    fn table(&self, shard: usize) -> Result<Arc<ShardTable>, DataError> {
        if let Ok(mut cache) = self.cache.lock()
            && let Some(pos) = cache.iter().position(|(s, _)| *s == shard)
        {
            let hit = cache.remove(pos);
            let table = hit.1.clone();
            cache.push(hit);
            return Ok(table);
        }
        let table = Arc::new(read_table(&self.paths[shard])?);
        if let Ok(mut cache) = self.cache.lock() {
            if !cache.iter().any(|(s, _)| *s == shard) {
                if cache.len() >= self.capacity {
                    cache.remove(0);
                }
                cache.push((shard, table.clone()));
            }
        }
        Ok(table)
    }
}

impl Dataset for Shards {
    fn len(&self) -> u64 {
        self.starts.last().copied().unwrap_or(0)
    }

    fn get(&self, index: u64) -> Result<Sample, ItemError> {
        let (shard, k) = self.locate(index).ok_or_else(|| ItemError {
            item: format!("sample {index}"),
            cause: "out of range".into(),
        })?;
        let shard_name = self.paths[shard].display().to_string();
        let table = self.table(shard).map_err(|e| ItemError {
            item: shard_name.clone(),
            cause: simclr_core::error::chain(&e),
        })?;
        let member = table.members.get(k).ok_or_else(|| ItemError {
            item: format!("{shard_name}: sample {k}"),
            cause: format!(
                "the shard holds {} samples, not the {} its index says: re-pack it or delete {INDEX_FILE}",
                table.members.len(),
                self.starts[shard + 1] - self.starts[shard]
            ),
        })?;
        let item = |name: &str| {
            if name.is_empty() {
                shard_name.clone()
            } else {
                format!("{shard_name}: {name}")
            }
        };
        if let Some(problem) = &member.problem {
            return Err(ItemError {
                item: item(&member.key),
                cause: problem.clone(),
            });
        }
        let Some((name, offset, size)) = &member.image else {
            return Err(ItemError {
                item: item(&member.key),
                cause: "no image member".into(),
            });
        };
        let mut bytes = vec![0u8; usize::try_from(*size).unwrap_or(0)];
        table
            .file
            .read_exact_at(&mut bytes, *offset)
            .map_err(|e| ItemError {
                item: item(name),
                cause: e.to_string(),
            })?;
        let label = if self.labels { member.label } else { None };
        crate::image_folder::decode_sample(&bytes, self.channels, label).map_err(|e| ItemError {
            item: item(name),
            cause: simclr_core::error::chain(&e),
        })
    }

    fn name(&self, index: u64) -> Option<String> {
        let (shard, k) = self.locate(index)?;
        let table = self.table(shard).ok()?;
        let m = table.members.get(k)?;
        Some(format!("{}: {}", self.paths[shard].display(), m.key))
    }
}

/// Open the shards `pattern` names.
fn open(pattern: &str, channels: u8, labels: bool, buffer: usize) -> Result<Shards, DataError> {
    let paths = shard_paths(pattern).map_err(|e| DataError::Unavailable(e.to_string()))?;
    let (counts, _) = counts(&paths)?;
    let keep = keep_for(&counts, buffer);
    Ok(Shards::new(paths, &counts, channels, labels, keep))
}

/// Shard tables (each an open file) kept at most, whatever the buffer spans.
const MAX_CACHED: usize = 256;

/// Shard tables to keep open for a shuffle buffer of `buffer` samples. A sample stays in the
/// buffer for a geometric number of draws (mean `buffer`): one that entered `k·buffer` draws
/// ago is still there with probability e^−k, so the tables of the shards read in the last
/// 8·`buffer` samples are kept (a table read again for 0.03 % of samples), plus the one being
/// read; at most [`MAX_CACHED`]. (Keeping only the shards the buffer spans on average made
/// a 20 000-sample, 38-shard read 9× slower per sample: every lingering sample re-read its
/// shard's headers.)
fn keep_for(counts: &[u64], buffer: usize) -> usize {
    let smallest = counts.iter().copied().filter(|&c| c > 0).min().unwrap_or(1);
    ((8 * buffer as u64).div_ceil(smallest) as usize + 2).min(MAX_CACHED)
}

fn build(cx: &BuildContext<'_>) -> Result<StageFactory, ParamError> {
    let config: WebDatasetConfig = cx.parse()?;
    let options = config.source_options();
    check_options(&options).map_err(|(field, msg, help)| cx.invalid(field, msg, help))?;
    crate::common::check_channels(config.channels)
        .map_err(|(field, msg, help)| cx.invalid(field, msg, help))?;
    let paths = shard_paths(&config.path).map_err(|e| {
        let help = match e {
            ShardListError::Pattern(_) => {
                "write a range as {000000..000127} or a list as {a,b}, as WebDataset does"
            }
            _ => "point `path` at a folder of .tar shards, a glob or a brace pattern",
        };
        cx.invalid("path", format!("`path` {:?}: {e}", config.path), help)
    })?;
    let (counts, classes) = counts(&paths).map_err(|e| {
        cx.invalid(
            "path",
            simclr_core::error::chain(&e),
            "check the shards' permissions",
        )
    })?;
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return Err(cx.invalid(
            "path",
            format!(
                "the {} shard(s) of {:?} hold no samples",
                paths.len(),
                config.path
            ),
            "write shards with `simclr data pack`",
        ));
    }
    let channels = config.channels;
    let labels = config.labels;
    let buffer = config.shuffle_buffer;
    let keep = keep_for(&counts, buffer);
    let labelled = Arc::new(ShardSplits {
        path: config.path.clone(),
        channels,
        classes,
    });
    let order = Order::Shards {
        counts: Arc::from(counts.clone()),
        buffer,
    };
    Ok(factory_ordered(
        cx,
        options,
        total,
        usize::from(channels),
        labelled,
        order,
        move || {
            Ok(
                Arc::new(Shards::new(paths.clone(), &counts, channels, labels, keep))
                    as Arc<dyn Dataset>,
            )
        },
    ))
}

/// The labelled splits of a `webdataset` stage: its shards, and for the test split the shards
/// the caller names (a folder, glob or pattern).
#[derive(Debug)]
struct ShardSplits {
    path: String,
    channels: u8,
    classes: Vec<String>,
}

impl crate::common::LabelledData for ShardSplits {
    fn describe(&self) -> String {
        if self.classes.is_empty() {
            format!("webdataset ({})", self.path)
        } else {
            format!("webdataset ({}, {} classes)", self.path, self.classes.len())
        }
    }

    fn has_test_split(&self) -> bool {
        false
    }

    fn open(&self, split: Split, test_path: Option<&str>) -> Result<Arc<dyn Dataset>, DataError> {
        let path = match split {
            Split::Train => self.path.as_str(),
            Split::Test => test_path.ok_or_else(|| {
                DataError::Unavailable(
                    "a `webdataset` source has no test split of its own: name the held-out shards (a folder, glob or brace pattern)".into(),
                )
            })?,
        };
        Ok(Arc::new(open(path, self.channels, true, 0)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn braces_expand_as_webdataset_spells_them() {
        assert_eq!(
            expand_braces("a-{000..003}.tar").expect("range"),
            ["a-000.tar", "a-001.tar", "a-002.tar", "a-003.tar"]
        );
        assert_eq!(
            expand_braces("{8..11}").expect("range"),
            ["8", "9", "10", "11"]
        );
        assert_eq!(
            expand_braces("{3..1}").expect("descending"),
            ["3", "2", "1"]
        );
        assert_eq!(
            expand_braces("{a,b}-{0..1}").expect("product"),
            ["a-0", "a-1", "b-0", "b-1"]
        );
        assert_eq!(expand_braces("plain.tar").expect("none"), ["plain.tar"]);
        for (bad, at, says) in [
            ("x-{000..012.tar", 2, "never closed"),
            ("x-000}.tar", 5, "without an opening"),
            ("x-{0..{1}}", 6, "nested"),
            ("x-{a..3}", 2, "two whole numbers"),
            ("x-{}", 2, "range"),
            ("x-{7}", 2, "a list"),
            ("x-{0...3}", 2, "joined by"),
        ] {
            let e = expand_braces(bad).expect_err(bad);
            assert_eq!(e.at, at, "{bad}: {e}");
            assert!(e.message.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn keys_split_at_the_first_dot_of_the_file_name() {
        assert_eq!(split_key("a/b.seg.png"), ("a/b", "seg.png"));
        assert_eq!(split_key("x.y/000001.jpg"), ("x.y/000001", "jpg"));
        assert_eq!(split_key("noext"), ("noext", ""));
        assert!(is_image("seg.PNG") && is_image("jpg") && !is_image("cls") && !is_image("json"));
    }
}
