//! `image_folder`: a folder tree of images; the class is the sub-folder's name.
//!
//! `root/cat/001.jpg` gets the label of `cat` (classes are numbered in sorted name order);
//! images directly under `root` are unlabelled. JPEG, PNG, WebP, BMP and GIF are decoded
//! through the `image` crate, in parallel: with `workers: N`, N threads each decode every
//! N-th item and the runtime keeps the stream in order.

use std::path::{Path, PathBuf};
use std::sync::Arc;

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
        #[serde(default = "yes")]
        pub labels: bool,
        /// 3 (RGB) or 1 (gray): images are converted when decoded.
        #[serde(default = "three")]
        pub channels: u8,
    }
}

fn yes() -> bool {
    true
}

fn three() -> u8 {
    3
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
/// read) count as images.
///
/// # Errors
/// An unreadable folder.
pub fn scan(root: &Path, labels: bool) -> Result<(LabelledFiles, Vec<String>), DataError> {
    let mut classes: Vec<String> = Vec::new();
    let mut files: Vec<(PathBuf, Option<String>)> = Vec::new();
    let mut stack: Vec<(PathBuf, Option<String>)> = vec![(root.to_owned(), None)];
    // Every real folder is read once: a symbolic link back up the tree (or two links to one
    // folder) would otherwise list the same images again and again.
    let mut seen = std::collections::HashSet::new();
    while let Some((dir, class)) = stack.pop() {
        let real = std::fs::canonicalize(&dir).map_err(DataError::io(&dir))?;
        if !seen.insert(real) {
            continue;
        }
        let entries = std::fs::read_dir(&dir).map_err(DataError::io(&dir))?;
        for entry in entries {
            let entry = entry.map_err(DataError::io(&dir))?;
            let path = entry.path();
            // Through links; a dangling link stays a candidate, so reading it names it.
            let meta = std::fs::metadata(&path).ok();
            if meta.as_ref().is_some_and(|m| !m.is_dir() && !m.is_file()) {
                // A pipe, socket or device named like an image is not one (reading a pipe
                // would wait forever).
                continue;
            }
            if meta.as_ref().is_some_and(std::fs::Metadata::is_dir) {
                let sub = class
                    .clone()
                    .or_else(|| (labels).then(|| entry.file_name().to_string_lossy().into_owned()));
                stack.push((path, sub));
            } else if path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
            {
                files.push((path, class.clone()));
            }
        }
    }
    files.sort();
    for (_, class) in &files {
        if let Some(c) = class
            && !classes.contains(c)
        {
            classes.push(c.clone());
        }
    }
    classes.sort();
    let files = files
        .into_iter()
        .map(|(p, c)| {
            let label = c
                .and_then(|c| classes.iter().position(|x| *x == c))
                .map(|i| i as u32);
            (p, label)
        })
        .collect();
    Ok((files, classes))
}

/// Image files, decoded on demand.
#[derive(Debug)]
pub struct ImageFolder {
    files: Vec<(PathBuf, Option<u32>)>,
    channels: u8,
}

impl ImageFolder {
    /// A dataset over `files` decoded to `channels` channels.
    pub fn new(files: Vec<(PathBuf, Option<u32>)>, channels: u8) -> Self {
        Self { files, channels }
    }
}

impl Dataset for ImageFolder {
    fn len(&self) -> u64 {
        self.files.len() as u64
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
        let decoded = decode(&bytes).map_err(|e| fail(simclr_core::error::chain(&e)))?;
        let (width, height) = (decoded.width(), decoded.height());
        let pixels: Vec<u8> = if self.channels == 1 {
            decoded.into_luma8().into_raw()
        } else {
            decoded.into_rgb8().into_raw()
        };
        Ok(Sample {
            width,
            height,
            channels: self.channels,
            pixels: Arc::from(pixels),
            label: *label,
        })
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
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(DecodeError::Format)?;
    if reader.format() == Some(image::ImageFormat::Jpeg) {
        jpeg_complete(bytes)?;
    }
    reader.decode().map_err(DecodeError::Image)
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
    if config.channels != 1 && config.channels != 3 {
        return Err(cx.invalid(
            "channels",
            format!("`channels` must be 1 or 3, found {}", config.channels),
            "1 decodes to gray, 3 to RGB",
        ));
    }
    let root = Path::new(&config.path);
    if !root.is_dir() {
        return Err(cx.invalid(
            "path",
            format!("{} is not a folder", root.display()),
            "point `path` at a folder of images, one sub-folder per class",
        ));
    }
    let (files, _classes) = scan(root, config.labels).map_err(|e| {
        cx.invalid(
            "path",
            simclr_core::error::chain(&e),
            "check the folder's permissions",
        )
    })?;
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
    });
    Ok(factory(
        cx,
        options,
        n,
        usize::from(channels),
        labelled,
        move || Ok(Arc::new(ImageFolder::new(files.clone(), channels)) as Arc<dyn Dataset>),
    ))
}

/// The labelled splits of an `image_folder` stage: its folder, and for the test split a folder
/// of held-out images the caller names (one sub-folder per class, the same class names).
#[derive(Debug)]
struct FolderSplits {
    path: String,
    channels: u8,
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
        let (files, _) = scan(Path::new(path), true)?;
        if files.is_empty() {
            return Err(DataError::Unavailable(format!("no images under {path}")));
        }
        Ok(Arc::new(ImageFolder::new(files, self.channels)))
    }
}

#[cfg(test)]
mod tests {
    use super::decode;

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
}
