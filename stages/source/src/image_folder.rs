//! `image_folder`: a folder tree of images; the class is the sub-folder's name.
//!
//! `root/cat/001.jpg` gets the label of `cat` (classes are numbered in sorted name order);
//! images directly under `root` are unlabelled. JPEG, PNG, WebP, BMP and GIF are decoded
//! through the `image` crate, in parallel: with `workers: N`, N threads each decode every
//! N-th item and the runtime keeps the stream in order.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;

use simclr_core::{
    BuildContext, InputPorts, OutputPort, Parallelism, ParamError, PortType, StageFactory,
    StageKind,
};

use simclr_core::DataError;

use crate::common::{Dataset, ItemError, Sample, check_options, factory};

const EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "bmp", "gif"];

crate::source_config! {
    /// Parameters of `image_folder`.
    pub struct ImageFolderConfig {
        /// Root folder; each sub-folder is a class.
        pub path: String,
        /// Label images by their sub-folder (otherwise every image is unlabelled).
        #[serde(default = "crate::common::default_true")]
        pub labels: bool,
        /// 3 (RGB) or 1 (gray): images are converted when decoded.
        #[serde(default = "crate::common::default_channels")]
        pub channels: u8,
        /// The file that keeps the folder's listing between runs, rewritten when a folder
        /// changes (default: `.NAME.simclr-index` beside the folder `NAME`). Set it where the
        /// data's parent folder cannot be written, or the listing is walked on every run.
        #[serde(default)]
        pub index: Option<String>,
    }
}

/// The `image_folder` kind.
pub static KIND: StageKind = StageKind {
    name: "image_folder",
    summary: "a folder tree of JPEG/PNG/WebP/BMP/GIF images (class = sub-folder), decoded in parallel workers",
    input: InputPorts::None,
    output: OutputPort::Emits(PortType::Images),
    parallelism: Parallelism::Parallel { ordered: true },
    example: "\
name: image-folder-example
stages:
  images:
    kind: image_folder
    workers: 2
    params: { path: data/photos, on_error: skip }
  drain: { kind: sink, inputs: [images] }
",
    params: || schemars::schema_for!(ImageFolderConfig),
    build,
};

/// Image files with their class index.
pub type LabelledFiles = Vec<(PathBuf, Option<u32>)>;

/// Image files under `root`, sorted, with their class index; and the class names. Links are
/// followed, each real folder once; only regular files (or dangling links, reported when
/// read) count as images. The folders of each level of the tree are listed in parallel, and
/// an entry is looked at through its directory entry's type (a `stat` only for links), so a
/// million files list in about a second.
///
/// # Errors
/// An unreadable folder.
pub fn scan(root: &Path, labels: bool) -> Result<(LabelledFiles, Vec<String>), DataError> {
    scan_folders(root, labels).map(|(files, classes, _)| (files, classes))
}

/// [`scan`], with every folder read and its modification time before it was listed.
fn scan_folders(
    root: &Path,
    labels: bool,
) -> Result<(LabelledFiles, Vec<String>, Vec<(PathBuf, u128)>), DataError> {
    let mut read: Vec<(PathBuf, u128)> = Vec::new();
    let mut files: Vec<(PathBuf, Option<Arc<str>>)> = Vec::new();
    let mut level: Vec<(PathBuf, Option<Arc<str>>)> = vec![(root.to_owned(), None)];
    // Every real folder is read once: a symbolic link back up the tree (or two links to one
    // folder) would otherwise list the same images again and again.
    let mut seen = std::collections::HashSet::new();
    while !level.is_empty() {
        let mut todo = Vec::with_capacity(level.len());
        for (dir, class) in level {
            let real = std::fs::canonicalize(&dir).map_err(DataError::io(&dir))?;
            if seen.insert(real) {
                todo.push((dir, class));
            }
        }
        let listed: Vec<Result<Listing, DataError>> = todo
            .par_iter()
            .map(|(dir, class)| list(dir, class.as_ref(), labels))
            .collect();
        level = Vec::new();
        for ((dir, _), listing) in todo.iter().zip(listed) {
            let (found, folders, modified) = listing?;
            read.push((dir.clone(), modified));
            files.extend(found);
            level.extend(folders);
        }
        // Depth-first order is not needed: the files are sorted below.
        level.sort_by(|a, b| a.0.cmp(&b.0));
    }
    files.par_sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let classes: Vec<String> = files
        .iter()
        .filter_map(|(_, c)| c.clone())
        .collect::<std::collections::BTreeSet<Arc<str>>>()
        .into_iter()
        .map(|c| c.to_string())
        .collect();
    let number: std::collections::HashMap<&str, u32> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i as u32))
        .collect();
    let files = files
        .into_iter()
        .map(|(p, c)| {
            let label = c.and_then(|c| number.get(&*c).copied());
            (p, label)
        })
        .collect();
    Ok((files, classes, read))
}

/// One folder's image files and sub-folders, each with its class, and the folder's
/// modification time before it was listed.
type Listing = (
    Vec<(PathBuf, Option<Arc<str>>)>,
    Vec<(PathBuf, Option<Arc<str>>)>,
    u128,
);

fn list(dir: &Path, class: Option<&Arc<str>>, labels: bool) -> Result<Listing, DataError> {
    let mut files = Vec::new();
    let mut folders = Vec::new();
    let modified = std::fs::metadata(dir)
        .map(|m| crate::webdataset::modified_ns(&m))
        .map_err(DataError::io(dir))?;
    for entry in std::fs::read_dir(dir).map_err(DataError::io(dir))? {
        let entry = entry.map_err(DataError::io(dir))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(DataError::io(&path))?;
        // Through links; a dangling link stays a candidate, so reading it names it.
        let (is_dir, is_file) = if kind.is_symlink() {
            std::fs::metadata(&path).map_or((false, true), |m| (m.is_dir(), m.is_file()))
        } else {
            (kind.is_dir(), kind.is_file())
        };
        if is_dir {
            let sub = class.cloned().or_else(|| {
                labels.then(|| Arc::from(entry.file_name().to_string_lossy().as_ref()))
            });
            folders.push((path, sub));
        } else if is_file
            && path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        {
            // A pipe, socket or device named like an image is not one (reading a pipe would
            // wait forever): only files (and dangling links) get here.
            files.push((path, class.cloned()));
        }
    }
    Ok((files, folders, modified))
}

/// Where [`scan_cached`] keeps the listing of `root` unless told otherwise: beside it,
/// `.<name>.simclr-index` in its parent folder (inside, writing it would change the root's own
/// modification time, the very thing that says the listing is current). `None` for a root
/// without a parent.
pub fn index_path(root: &Path) -> Option<PathBuf> {
    beside(&std::fs::canonicalize(root).ok()?)
}

/// [`index_path`] of a root already made real (canonical).
fn beside(real_root: &Path) -> Option<PathBuf> {
    let name = real_root.file_name()?.to_string_lossy().into_owned();
    Some(real_root.parent()?.join(format!(".{name}.simclr-index")))
}

/// How [`scan_cached`] got its listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listed {
    /// From the cache (this file): no folder changed since it was written.
    Cached(PathBuf),
    /// Walked, and the cache (this file) (re)written.
    Walked(PathBuf),
    /// Walked, nothing cached: a folder changed in the last two seconds (it might change again
    /// without its time moving).
    Unsettled,
    /// Walked, nothing cached: the cache could not be written (why: the file and the cause).
    Unwritable(String),
}

/// A folder's listing: its images, its class names, and how it was got.
pub type FolderListing = (LabelledFiles, Vec<String>, Listed);

/// [`scan`] through a cache file (`index`, or by default [`index_path`]): used while every
/// folder it lists keeps the modification time it had when listed (adding, removing or
/// renaming an entry changes its folder's), else the tree is walked again and the cache
/// rewritten (atomically). A cache records its root and is used for that root only.
///
/// # Errors
/// An unreadable folder.
pub fn scan_cached(
    root: &Path,
    labels: bool,
    index: Option<&Path>,
) -> Result<FolderListing, DataError> {
    let real_root = std::fs::canonicalize(root).map_err(DataError::io(root))?;
    let cache = index.map(Path::to_owned).or_else(|| beside(&real_root));
    if let Some(c) = &cache
        && let Some((files, classes)) = read_index(c, root, &real_root, labels)
    {
        return Ok((files, classes, Listed::Cached(c.clone())));
    }
    let started = std::time::SystemTime::now();
    let (files, classes, folders) = scan_folders(root, labels)?;
    // A folder changed in the last seconds may change again within its clock's resolution
    // and keep its time (git's "racily clean" entries): such a listing is not cached.
    let settled = started
        .checked_sub(RACY)
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .is_some_and(|limit| folders.iter().all(|(_, t)| *t < limit));
    let listed = match &cache {
        _ if !settled => Listed::Unsettled,
        None => Listed::Unwritable(format!(
            "{} has no parent folder to keep the index in",
            root.display()
        )),
        Some(c) => match write_index(c, root, &real_root, labels, &files, &classes, &folders) {
            Ok(()) => Listed::Walked(c.clone()),
            Err(e) => Listed::Unwritable(format!("{}: {e}", c.display())),
        },
    };
    Ok((files, classes, listed))
}

/// Folders modified this recently before a walk are not trusted to be settled.
const RACY: std::time::Duration = std::time::Duration::from_secs(2);

/// Paths in the cache are relative to the root, one per line.
fn relative(root: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(root).ok()?.to_str()?;
    (!rel.contains('\n')).then(|| rel.to_owned())
}

fn write_index(
    cache: &Path,
    root: &Path,
    real_root: &Path,
    labels: bool,
    files: &LabelledFiles,
    classes: &[String],
    folders: &[(PathBuf, u128)],
) -> std::io::Result<()> {
    use std::io::Write as _;
    let bad = || std::io::Error::other("a path the cache cannot hold");
    let tmp = cache.with_extension(format!("{}.partial", std::process::id()));
    let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    let result = (|| {
        writeln!(out, "{}", index_header(real_root, labels).ok_or_else(bad)?)?;
        for c in classes {
            if c.contains('\n') {
                return Err(bad());
            }
            writeln!(out, "C {c}")?;
        }
        for (dir, modified) in folders {
            writeln!(out, "D {modified} {}", relative(root, dir).ok_or_else(bad)?)?;
        }
        for (file, label) in files {
            let l = label.map_or_else(|| "-".to_owned(), |l| l.to_string());
            writeln!(out, "F {l} {}", relative(root, file).ok_or_else(bad)?)?;
        }
        out.flush()?;
        out.get_ref().sync_all()
    })();
    match result {
        Ok(()) => std::fs::rename(&tmp, cache),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// A cache's first line: its format, the labels setting and the (real) root it lists.
fn index_header(real_root: &Path, labels: bool) -> Option<String> {
    let root = real_root.to_str().filter(|r| !r.contains('\n'))?;
    Some(format!(
        "simclr-image-folder-index 2 labels={} root={root}",
        u8::from(labels)
    ))
}

fn read_index(
    cache: &Path,
    root: &Path,
    real_root: &Path,
    labels: bool,
) -> Option<(LabelledFiles, Vec<String>)> {
    let text = std::fs::read_to_string(cache).ok()?;
    let mut lines = text.lines();
    if lines.next()? != index_header(real_root, labels)? {
        return None;
    }
    let mut classes = Vec::new();
    let mut folders = Vec::new();
    let mut files = Vec::new();
    for line in lines {
        let (tag, rest) = line.split_once(' ')?;
        match tag {
            "C" => classes.push(rest.to_owned()),
            "D" => {
                let (t, rel) = rest.split_once(' ')?;
                folders.push((t.parse::<u128>().ok()?, rel));
            }
            "F" => {
                let (l, rel) = rest.split_once(' ')?;
                let label = if l == "-" {
                    None
                } else {
                    Some(l.parse::<u32>().ok()?)
                };
                files.push((root.join(rel), label));
            }
            _ => return None,
        }
    }
    let unchanged = folders.par_iter().all(|(t, rel)| {
        std::fs::metadata(root.join(rel)).is_ok_and(|m| crate::webdataset::modified_ns(&m) == *t)
    });
    unchanged.then_some((files, classes))
}

/// Image files, decoded on demand.
#[derive(Debug)]
pub struct ImageFolder {
    files: Vec<(PathBuf, Option<u32>)>,
    channels: u8,
    notes: Vec<String>,
}

impl ImageFolder {
    /// A dataset over `files` decoded to `channels` channels.
    pub fn new(files: Vec<(PathBuf, Option<u32>)>, channels: u8) -> Self {
        Self {
            files,
            channels,
            notes: Vec::new(),
        }
    }

    /// The same, with `notes` for the run report ([`Dataset::notes`]).
    #[must_use]
    pub fn with_notes(mut self, notes: Vec<String>) -> Self {
        self.notes = notes;
        self
    }
}

impl Dataset for ImageFolder {
    fn len(&self) -> u64 {
        self.files.len() as u64
    }

    fn notes(&self) -> Vec<String> {
        self.notes.clone()
    }

    fn get(&self, index: u64) -> Result<Sample, ItemError> {
        let (path, label) = self.files.get(index as usize).ok_or_else(|| ItemError {
            item: format!("image {index}"),
            cause: "out of range".into(),
        })?;
        let fail = |cause: String| ItemError {
            item: path.display().to_string(),
            cause,
        };
        let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
        decode_sample(&bytes, self.channels, *label)
            .map_err(|e| fail(simclr_core::error::chain(&e)))
    }

    fn name(&self, index: u64) -> Option<String> {
        let (path, _) = self.files.get(usize::try_from(index).ok()?)?;
        Some(path.display().to_string())
    }
}

/// Why an image file's bytes cannot be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// A JPEG whose data ends before its end-of-image marker.
    #[error(
        "image file is truncated: the JPEG data ends at byte {at} before its end-of-image marker"
    )]
    Truncated {
        /// The data's length.
        at: usize,
    },
    /// The format could not be guessed from the content.
    #[error(transparent)]
    Format(std::io::Error),
    /// The decoder refused the data.
    #[error("cannot decode")]
    Image(#[source] image::ImageError),
}

/// Decode an image file's bytes (the format guessed from its content), refusing a JPEG
/// whose data ends before its end-of-image marker: the decoder would fill the missing part
/// with gray and report nothing, where PIL reports "image file is truncated".
///
/// # Errors
/// A truncated JPEG, an unknown format, or data the decoder refuses.
pub fn decode(bytes: &[u8]) -> Result<image::DynamicImage, DecodeError> {
    checked_reader(bytes)?.decode().map_err(DecodeError::Image)
}

/// A reader of `bytes` with its format guessed from the content, a JPEG first checked for
/// its end-of-image marker.
fn checked_reader(bytes: &[u8]) -> Result<image::ImageReader<std::io::Cursor<&[u8]>>, DecodeError> {
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(DecodeError::Format)?;
    if reader.format() == Some(image::ImageFormat::Jpeg) {
        jpeg_complete(bytes)?;
    }
    Ok(reader)
}

/// Decode an image file's bytes into a sample of `channels` channels: [`decode`], then
/// [`sample_from`](crate::common::sample_from), the same bytes by a shorter road for the
/// common case.
///
/// A baseline or progressive colour JPEG (YCbCr or RGB) wanted as RGB is decoded by
/// zune-jpeg directly, with the options `image` gives it (so the pixels are `image`'s): that
/// skips `image`'s copy of the file, its second header parse and its zero-filled output
/// buffer. Anything else, and any error there, takes `image`'s decoder (whose errors are the
/// ones reported).
///
/// # Errors
/// As [`decode`].
pub fn decode_sample(
    bytes: &[u8],
    channels: u8,
    label: Option<u32>,
) -> Result<simclr_core::data::Sample, DecodeError> {
    let reader = checked_reader(bytes)?;
    if channels == 3
        && reader.format() == Some(image::ImageFormat::Jpeg)
        && let Some((width, height, pixels)) = jpeg_rgb(bytes)
    {
        return Ok(simclr_core::data::Sample {
            width,
            height,
            channels,
            pixels,
            label,
        });
    }
    let decoded = reader.decode().map_err(DecodeError::Image)?;
    Ok(crate::common::sample_from(decoded, channels, label))
}

/// `bytes` (a JPEG) as RGB through zune-jpeg, or `None` for a colour space `image` would
/// decode differently, or on any error (left for [`decode`] to report). The pixels are
/// decoded straight into the sample's shared buffer.
fn jpeg_rgb(bytes: &[u8]) -> Option<(u32, u32, std::sync::Arc<[u8]>)> {
    use zune_core::colorspace::ColorSpace;
    // `image`'s options (`codecs/jpeg/decoder.rs`): lenient, no size limits, RGB out.
    let options = zune_core::options::DecoderOptions::default()
        .set_strict_mode(false)
        .set_max_width(usize::MAX)
        .set_max_height(usize::MAX)
        .jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(
        zune_core::bytestream::ZCursor::new(bytes),
        options,
    );
    decoder.decode_headers().ok()?;
    if !matches!(
        decoder.input_colorspace()?,
        ColorSpace::YCbCr | ColorSpace::RGB
    ) {
        return None;
    }
    let (width, height) = decoder.dimensions()?;
    let len = decoder.output_buffer_size()?;
    if len != width.checked_mul(height)?.checked_mul(3)? {
        return None;
    }
    let pixels = simclr_core::filled_pixels(len, |buf| decoder.decode_into(buf)).ok()?;
    Some((
        u32::try_from(width).ok()?,
        u32::try_from(height).ok()?,
        pixels,
    ))
}

/// Check that a JPEG stream reaches its end-of-image marker (EOI): walk the marker segments
/// by their lengths, and the entropy-coded data of each scan (where `FF` is followed by `00`
/// or a restart marker) to the marker that ends it. Data after EOI is allowed.
fn jpeg_complete(data: &[u8]) -> Result<(), DecodeError> {
    const EOI: u8 = 0xD9;
    const SOS: u8 = 0xDA;
    let truncated = |at: usize| Err(DecodeError::Truncated { at });
    // The common case: the file ends with EOI (a cut file cannot, unless cut right after one
    // inside a header segment, which the decoder refuses).
    if data.ends_with(&[0xFF, EOI]) {
        return Ok(());
    }
    let mut i = 2; // past SOI
    loop {
        // The next marker: 0xFF (fill bytes allowed), then its code. Stray bytes between
        // segments are tolerated, as decoders do.
        let Some(ff) = data
            .get(i..)
            .and_then(|d| d.iter().position(|&b| b == 0xFF))
        else {
            return truncated(data.len());
        };
        i += ff;
        while data.get(i + 1) == Some(&0xFF) {
            i += 1;
        }
        let Some(&code) = data.get(i + 1) else {
            return truncated(data.len());
        };
        match code {
            EOI => return Ok(()),
            // Markers without a length: TEM, RSTn, SOI.
            0x00 | 0x01 | 0xD0..=0xD8 => i += 2,
            _ => {
                let Some(len) = data
                    .get(i + 2..i + 4)
                    .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
                else {
                    return truncated(data.len());
                };
                i += 2 + len;
                if i > data.len() {
                    return truncated(data.len());
                }
                if code == SOS {
                    // Entropy-coded data runs to the next marker that is neither a stuffed
                    // 0xFF00 nor a restart marker.
                    loop {
                        let Some(ff) = data[i..].iter().position(|&b| b == 0xFF) else {
                            return truncated(data.len());
                        };
                        i += ff;
                        match data.get(i + 1) {
                            None => return truncated(data.len()),
                            Some(0x00 | 0xD0..=0xD7) => i += 2,
                            Some(0xFF) => i += 1,
                            Some(_) => break,
                        }
                    }
                }
            }
        }
    }
}

fn build(cx: &BuildContext<'_>) -> Result<StageFactory, ParamError> {
    let config: ImageFolderConfig = cx.parse()?;
    let options = config.source_options();
    check_options(&options).map_err(|(field, msg, help)| cx.invalid(field, msg, help))?;
    crate::common::check_channels(config.channels)
        .map_err(|(field, msg, help)| cx.invalid(field, msg, help))?;
    let root = Path::new(&config.path);
    if !root.is_dir() {
        return Err(cx.invalid(
            "path",
            format!("{} is not a folder", root.display()),
            "point `path` at a folder of images, one sub-folder per class",
        ));
    }
    let index = config.index.as_deref().map(Path::new);
    let started = std::time::Instant::now();
    let (files, _classes, listed) = scan_cached(root, config.labels, index).map_err(|e| {
        cx.invalid(
            "path",
            simclr_core::error::chain(&e),
            "check the folder's permissions",
        )
    })?;
    let seconds = started.elapsed().as_secs_f64();
    let how = match listed {
        Listed::Unwritable(cause) if index.is_some() => {
            return Err(cx.invalid(
                "index",
                format!("cannot write the listing's index: {cause}"),
                "name a file in a folder this user can write, or leave `index` out",
            ));
        }
        Listed::Cached(kept) => format!("from the index {}", kept.display()),
        Listed::Walked(kept) => format!(
            "by walking the folder; the listing is kept in {} for the next run",
            kept.display()
        ),
        Listed::Unsettled => {
            "by walking the folder; not kept: a folder changed in the last two seconds".to_owned()
        }
        Listed::Unwritable(cause) => format!(
            "by walking the folder, as on every run: the listing cannot be kept ({cause}); set `index:` to a file in a writable folder"
        ),
    };
    let note = format!("{} images listed in {seconds:.2} s {how}", files.len());
    if files.is_empty() {
        return Err(cx.invalid(
            "path",
            format!(
                "no images ({}) under {}",
                EXTENSIONS.join(", "),
                root.display()
            ),
            "point `path` at a folder of images, one sub-folder per class",
        ));
    }
    let n = files.len() as u64;
    let channels = config.channels;
    let labelled = Arc::new(FolderSplits {
        path: config.path.clone(),
        channels,
        index: config.index.clone(),
    });
    Ok(factory(
        cx,
        options,
        n,
        usize::from(channels),
        labelled,
        move || {
            Ok(
                Arc::new(ImageFolder::new(files.clone(), channels).with_notes(vec![note.clone()]))
                    as Arc<dyn Dataset>,
            )
        },
    ))
}

/// The labelled splits of an `image_folder` stage: its folder, and for the test split a folder
/// of held-out images the caller names (one sub-folder per class, the same class names).
#[derive(Debug)]
struct FolderSplits {
    path: String,
    channels: u8,
    index: Option<String>,
}

impl crate::common::LabelledData for FolderSplits {
    fn describe(&self) -> String {
        format!("image_folder ({})", self.path)
    }

    fn has_test_split(&self) -> bool {
        false
    }

    fn open(
        &self,
        split: crate::common::Split,
        test_path: Option<&str>,
    ) -> Result<Arc<dyn Dataset>, DataError> {
        let path = match split {
            crate::common::Split::Train => self.path.as_str(),
            crate::common::Split::Test => test_path.ok_or_else(|| DataError::Unavailable(
                "an `image_folder` source has no test split: name a folder of held-out images (one sub-folder per class, the same class names)".into(),
            ))?,
        };
        // The train split's own index is for its `labels` setting; the test folder keeps
        // its default one.
        let index = match split {
            crate::common::Split::Train => self.index.as_deref().map(Path::new),
            crate::common::Split::Test => None,
        };
        let (files, _, _) = scan_cached(Path::new(path), true, index)?;
        if files.is_empty() {
            return Err(DataError::Unavailable(format!("no images under {path}")));
        }
        Ok(Arc::new(ImageFolder::new(files, self.channels)))
    }
}

#[cfg(test)]
mod index_tests {
    use super::*;

    /// Set a folder's modification time an hour back (a settled folder).
    fn settle(dir: &Path) {
        let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        std::fs::File::open(dir)
            .and_then(|f| f.set_modified(hour_ago))
            .expect("set the folder's time");
    }

    #[test]
    fn the_cached_listing_is_used_until_a_folder_changes() {
        let parent = std::env::temp_dir().join(format!("simclr-index-test-{}", std::process::id()));
        std::fs::remove_dir_all(&parent).ok();
        let root = parent.join("photos");
        for class in ["cat", "dog"] {
            std::fs::create_dir_all(root.join(class)).expect("folder");
            for i in 0..3 {
                std::fs::write(root.join(class).join(format!("{i}.jpg")), b"").expect("file");
            }
        }
        let settle_all = || {
            for d in [root.join("cat"), root.join("dog"), root.clone()] {
                settle(&d);
            }
        };
        settle_all();
        let walked = scan_cached(&root, true, None).expect("lists");
        assert_eq!(walked.2, Listed::Walked(index_path(&root).expect("path")));
        assert_eq!(walked.0.len(), 6);
        assert_eq!(walked.1, ["cat", "dog"]);
        assert!(index_path(&root).expect("path").exists());
        let cached = scan_cached(&root, true, None).expect("lists");
        assert_eq!(cached.2, Listed::Cached(index_path(&root).expect("path")));
        assert_eq!((&cached.0, &cached.1), (&walked.0, &walked.1));
        assert_eq!(
            (cached.0.clone(), cached.1.clone()),
            scan(&root, true).expect("walk")
        );
        // Another labels setting is another listing.
        assert_ne!(
            scan_cached(&root, false, None).expect("lists").2,
            Listed::Cached(index_path(&root).expect("path"))
        );

        // A file added: its folder's time moves, the tree is walked again.
        std::fs::write(root.join("dog/3.jpg"), b"").expect("file");
        let fresh = scan_cached(&root, true, None).expect("lists");
        assert_eq!(fresh.2, Listed::Unsettled, "a folder changed just now");
        assert_eq!(fresh.0.len(), 7);
        settle_all();
        assert_eq!(
            scan_cached(&root, true, None).expect("lists").2,
            Listed::Walked(index_path(&root).expect("path"))
        );
        // A class folder renamed: the root's time moves.
        std::fs::rename(root.join("cat"), root.join("cats")).expect("rename");
        settle(&root);
        settle(&root.join("cats"));
        let renamed = scan_cached(&root, true, None).expect("lists");
        assert_eq!(renamed.2, Listed::Walked(index_path(&root).expect("path")));
        assert_eq!(renamed.1, ["cats", "dog"]);
        std::fs::remove_dir_all(&parent).ok();
    }

    /// A settled tree of `n` images in two classes under a fresh `parent/photos`.
    fn settled_tree(parent: &Path, n: usize) -> PathBuf {
        std::fs::remove_dir_all(parent).ok();
        let root = parent.join("photos");
        for class in ["cat", "dog"] {
            std::fs::create_dir_all(root.join(class)).expect("folder");
            for i in 0..n / 2 {
                std::fs::write(root.join(class).join(format!("{i}.jpg")), b"").expect("file");
            }
            settle(&root.join(class));
        }
        settle(&root);
        root
    }

    #[test]
    fn a_named_index_is_used_and_an_index_of_another_root_is_not() {
        let parent =
            std::env::temp_dir().join(format!("simclr-index-named-{}", std::process::id()));
        let root = settled_tree(&parent, 4);
        let index = parent.join("elsewhere.idx");
        assert_eq!(
            scan_cached(&root, true, Some(&index)).expect("lists").2,
            Listed::Walked(index.clone())
        );
        assert!(index.exists());
        assert!(
            !index_path(&root).expect("path").exists(),
            "the default place is left alone"
        );
        let cached = scan_cached(&root, true, Some(&index)).expect("lists");
        assert_eq!(cached.2, Listed::Cached(index.clone()));
        assert_eq!(cached.0.len(), 4);
        // The same index named for another folder whose folders have the same names and
        // times (a copy that kept them) but other files: walked, not trusted.
        let other = parent.join("other");
        for d in ["cat", "dog", ""] {
            let to = other.join(d);
            std::fs::create_dir_all(&to).expect("folder");
            if !d.is_empty() {
                std::fs::write(to.join("copied.jpg"), b"").expect("file");
            }
        }
        for d in ["cat", "dog", ""] {
            let time = std::fs::metadata(root.join(d))
                .and_then(|m| m.modified())
                .expect("time");
            std::fs::File::open(other.join(d))
                .and_then(|f| f.set_modified(time))
                .expect("set the folder's time");
        }
        let listed = scan_cached(&other, true, Some(&index)).expect("lists");
        assert_eq!(listed.2, Listed::Walked(index.clone()));
        assert_eq!(listed.1, ["cat", "dog"]);
        assert_eq!(
            listed.0.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>(),
            [other.join("cat/copied.jpg"), other.join("dog/copied.jpg")]
        );
        std::fs::remove_dir_all(&parent).ok();
    }

    #[test]
    fn an_index_that_cannot_be_written_says_where_and_why() {
        let parent = std::env::temp_dir().join(format!("simclr-index-ro-{}", std::process::id()));
        let root = settled_tree(&parent, 2);
        // A file where the index's folder should be: no user (root included) can write there.
        std::fs::write(parent.join("blocker"), b"").expect("file");
        let index = parent.join("blocker/photos.idx");
        let listed = scan_cached(&root, true, Some(&index)).expect("lists");
        let Listed::Unwritable(why) = &listed.2 else {
            panic!("expected an unwritable index, got {:?}", listed.2);
        };
        assert!(why.contains("blocker/photos.idx"), "{why}");
        assert_eq!(listed.0.len(), 2, "the listing itself is still made");
        std::fs::remove_dir_all(&parent).ok();
    }
}

#[cfg(test)]
mod tests {
    use super::{decode, decode_sample};

    /// Baseline, gray, progressive (10 scans), with restart markers, and with `FF D9` inside a
    /// comment segment: written by PIL, which refuses every one of them cut at any byte.
    const JPEGS: [(&str, &[u8]); 4] = [
        (
            "gray",
            include_bytes!("../../../tests/fixtures/jpeg/gray.jpg"),
        ),
        (
            "progressive",
            include_bytes!("../../../tests/fixtures/jpeg/progressive.jpg"),
        ),
        (
            "restart",
            include_bytes!("../../../tests/fixtures/jpeg/restart.jpg"),
        ),
        (
            "comment",
            include_bytes!("../../../tests/fixtures/jpeg/comment.jpg"),
        ),
    ];

    #[test]
    fn a_jpeg_cut_anywhere_is_refused_and_a_whole_one_decodes() {
        for (name, data) in JPEGS {
            let whole = decode(data).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!((whole.width(), whole.height()), (40, 30), "{name}");
            let mut trailing = data.to_vec();
            trailing.extend_from_slice(b"data after the end \xff\xd8\xff");
            decode(&trailing).unwrap_or_else(|e| panic!("{name} + trailing data: {e}"));
            for cut in 0..data.len() {
                assert!(
                    decode(&data[..cut]).is_err(),
                    "{name} cut to {cut} of {} bytes decoded",
                    data.len()
                );
            }
            let third = decode(&data[..data.len() / 3])
                .expect_err("a third")
                .to_string();
            assert!(third.contains("image file is truncated"), "{name}: {third}");
        }
    }

    /// A 61 × 47 picture with edges and gradients in every channel.
    fn picture() -> Vec<u8> {
        (0..61 * 47)
            .flat_map(|i| {
                let (x, y) = (i % 61, i / 61);
                [(x * 4) as u8, (y * 5) as u8, ((x * y) % 256) as u8]
            })
            .collect()
    }

    /// The same picture through `image`'s encoder (4:4:4) and jpeg-encoder's (4:2:0 and
    /// 4:4:4, baseline and progressive).
    fn encoded() -> Vec<(String, Vec<u8>)> {
        use jpeg_encoder::{ColorType, Encoder, SamplingFactor};
        let pixels = picture();
        let mut out = Vec::new();
        let mut bytes = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90)
            .encode(&pixels, 61, 47, image::ExtendedColorType::Rgb8)
            .expect("encodes");
        out.push(("image 4:4:4".to_owned(), bytes));
        for (name, sampling) in [
            ("4:2:0", SamplingFactor::R_4_2_0),
            ("4:4:4", SamplingFactor::R_4_4_4),
        ] {
            for progressive in [false, true] {
                let mut bytes = Vec::new();
                let mut encoder = Encoder::new(&mut bytes, 85);
                encoder.set_sampling_factor(sampling);
                encoder.set_progressive(progressive);
                encoder
                    .encode(&pixels, 61, 47, ColorType::Rgb)
                    .expect("encodes");
                out.push((format!("{name}, progressive {progressive}"), bytes));
            }
        }
        out
    }

    #[test]
    fn the_direct_jpeg_path_gives_image_s_pixels() {
        let mut all: Vec<(String, Vec<u8>)> = JPEGS
            .iter()
            .map(|(name, data)| ((*name).to_owned(), data.to_vec()))
            .collect();
        all.extend(encoded());
        for (name, data) in &all {
            for channels in [1, 3] {
                let expected =
                    crate::common::sample_from(decode(data).expect("decodes"), channels, Some(4));
                let direct = decode_sample(data, channels, Some(4))
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(direct, expected, "{name}, {channels} channels");
            }
            // Refused when cut, as `decode` refuses it (the same check runs first).
            for cut in [data.len() / 2, data.len() - 1] {
                assert!(
                    decode_sample(&data[..cut], 3, None).is_err(),
                    "{name} cut to {cut}"
                );
            }
        }
    }
}
