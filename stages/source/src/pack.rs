//! Packing a dataset into WebDataset tar shards (`simclr data pack`): every item resized so its
//! longer (or shorter) side is at most `max_side`, encoded as JPEG or PNG, and written as
//! `key.jpg|png` + `key.cls` (the label, when there is one) + `key.json` (what the item was),
//! in shards of about `shard_size` bytes, with an [`Index`] beside them.
//!
//! - **Deterministic**: the key is the item's number (`000000042`), headers carry no time or
//!   owner, encoders are deterministic, and a shard ends after the first sample that takes it
//!   to `shard_size` — so the same input gives the same bytes, resumed or not.
//! - **Parallel**: items are read, resized and encoded on the rayon pool in blocks, in order.
//! - **Atomic and resumable**: a shard is written under a temporary name, synced and renamed;
//!   after each shard a progress file records the finished shards, so an interrupted pack
//!   starts again after the last whole shard. The index is written (atomically) last.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use simclr_stage_augment::resample::{Interpolation, crop_resize};
use simclr_stage_augment::{Img, Pixels, Shape};

use crate::common::{Dataset, ItemError, OnError};
use crate::webdataset::{INDEX_FILE, Index, IndexShard, modified_ns};

/// Which side `max_side` bounds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// The longer side (the whole image fits in `max_side`²).
    #[default]
    Longer,
    /// The shorter side (what a later `random_resized_crop` or `resize` of that size needs).
    Shorter,
}

/// How images are stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// PNG for small images (both sides at most 64 after resizing: MNIST, CIFAR), where JPEG's
    /// 8×8 blocks would show; JPEG otherwise.
    #[default]
    Auto,
    /// JPEG at `quality`.
    Jpg,
    /// PNG (lossless).
    Png,
}

/// Chroma resolution of packed colour JPEGs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Chroma {
    /// Colour at half resolution both ways (4:2:0), box-averaged: what PIL, libjpeg and
    /// OpenCV write by default, and what most photo collections already are. Decodes about
    /// 1.2–1.3× faster than 4:4:4 and makes smaller files.
    #[default]
    #[serde(rename = "420")]
    Half,
    /// Colour at full resolution (4:4:4).
    #[serde(rename = "444")]
    Full,
}

/// How to pack.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PackOptions {
    /// Largest size of the bounded side, in pixels (images already within it are kept).
    pub max_side: u32,
    /// The side `max_side` bounds.
    pub side: Side,
    /// Storage format.
    pub format: Format,
    /// JPEG quality, 1–100.
    pub quality: u8,
    /// Chroma resolution of colour JPEGs.
    pub chroma: Chroma,
    /// Bytes after which a shard ends.
    pub shard_size: u64,
    /// Shard names: `{prefix}-000000.tar`, …
    pub prefix: String,
    /// Pack only the first `limit` items.
    pub limit: Option<u64>,
    /// `skip` leaves unreadable items out (listed in the report); `fail` stops at the first.
    pub on_error: OnError,
}

impl Default for PackOptions {
    fn default() -> Self {
        Self {
            max_side: 256,
            side: Side::Longer,
            format: Format::Auto,
            quality: 90,
            chroma: Chroma::Half,
            shard_size: 512 << 20,
            prefix: "train".into(),
            limit: None,
            on_error: OnError::Fail,
        }
    }
}

/// What a pack did.
#[derive(Debug, Default)]
pub struct PackReport {
    /// The index written.
    pub index: Option<Index>,
    /// Shards kept from an interrupted earlier pack.
    pub reused: usize,
    /// Items left out (`on_error: skip`).
    pub skipped: Vec<ItemError>,
    /// Bytes of image data read from the source, decoded (width·height·channels summed).
    pub pixels_in: u64,
}

/// Why a pack stopped.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// An item could not be read (`on_error: fail`).
    #[error("{0} (pass `--on-error skip` to leave unreadable items out)")]
    Item(ItemError),
    /// Options that cannot work.
    #[error("{0}")]
    Invalid(String),
    /// Writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> PackError + '_ {
    move |source| PackError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The progress file of a pack in progress.
const PROGRESS: &str = ".pack-progress.json";

/// What [`PROGRESS`] holds: the job (so a different pack into the same folder starts over)
/// and the shards finished so far.
#[derive(Debug, Serialize, Deserialize)]
struct Progress {
    job: serde_json::Value,
    shards: Vec<IndexShard>,
    /// The next item to pack.
    next: u64,
    skipped: Vec<(String, String)>,
    pixels_in: u64,
}

/// Items read and encoded in parallel at a time.
const BLOCK: usize = 256;

/// One encoded sample.
struct Encoded {
    key: String,
    ext: &'static str,
    image: Vec<u8>,
    label: Option<u32>,
    json: Vec<u8>,
    pixels_in: u64,
}

/// The `(width, height)` an image of `w × h` is stored at.
pub fn stored_size(w: u32, h: u32, max_side: u32, side: Side) -> (u32, u32) {
    let bound = match side {
        Side::Longer => w.max(h),
        Side::Shorter => w.min(h),
    };
    if bound <= max_side || bound == 0 {
        return (w, h);
    }
    let scale = f64::from(max_side) / f64::from(bound);
    let fit = |v: u32| ((f64::from(v) * scale).round() as u32).max(1);
    (fit(w), fit(h))
}

/// `pixels` (`w × h`, 1 or 3 channels) as a baseline JPEG at `opts.quality` and
/// `opts.chroma`, appended to `out`.
fn encode_jpeg(
    out: &mut Vec<u8>,
    pixels: &[u8],
    w: u32,
    h: u32,
    channels: u8,
    opts: &PackOptions,
) -> Result<(), String> {
    use jpeg_encoder::{ChromaSubsamplingMethod, ColorType, Encoder, SamplingFactor};
    let (Ok(w), Ok(h)) = (u16::try_from(w), u16::try_from(h)) else {
        return Err(format!("{w}x{h} is larger than JPEG's 65535x65535"));
    };
    let mut encoder = Encoder::new(out, opts.quality);
    encoder.set_sampling_factor(match opts.chroma {
        Chroma::Half => SamplingFactor::R_4_2_0,
        Chroma::Full => SamplingFactor::R_4_4_4,
    });
    encoder.set_chroma_subsampling_method(ChromaSubsamplingMethod::Average);
    let color = if channels == 1 {
        ColorType::Luma
    } else {
        ColorType::Rgb
    };
    encoder
        .encode(pixels, w, h, color)
        .map_err(|e| e.to_string())
}

fn encode(data: &dyn Dataset, index: u64, opts: &PackOptions) -> Result<Encoded, ItemError> {
    let s = data.get(index)?;
    let name = data.name(index).unwrap_or_else(|| format!("item {index}"));
    let fail = |cause: String| ItemError {
        item: name.clone(),
        cause,
    };
    if s.channels != 1 && s.channels != 3 {
        return Err(fail(format!(
            "{}-channel images cannot be packed",
            s.channels
        )));
    }
    let (w, h) = stored_size(s.width, s.height, opts.max_side, opts.side);
    let pixels: Arc<[u8]> = if (w, h) == (s.width, s.height) {
        s.pixels.clone()
    } else {
        // The augmentations' resampler (fast_image_resize), over the whole image.
        let img = Img {
            shape: Shape {
                channels: usize::from(s.channels),
                height: s.height as usize,
                width: s.width as usize,
            },
            pixels: Pixels::U8(s.pixels.clone()),
        };
        let resized = crop_resize(
            &img,
            [0, 0, s.width, s.height],
            h as usize,
            w as usize,
            Interpolation::Lanczos,
        )
        .map_err(|e| fail(format!("cannot resize: {e}")))?;
        match resized.pixels {
            Pixels::U8(p) => p,
            Pixels::F32(_) => return Err(fail("resize gave float pixels".into())),
        }
    };
    let png = match opts.format {
        Format::Png => true,
        Format::Jpg => false,
        Format::Auto => w <= 64 && h <= 64,
    };
    let mut image = Vec::new();
    let written = if png {
        let color = if s.channels == 1 {
            image::ExtendedColorType::L8
        } else {
            image::ExtendedColorType::Rgb8
        };
        image::ImageEncoder::write_image(
            image::codecs::png::PngEncoder::new(&mut image),
            &pixels,
            w,
            h,
            color,
        )
        .map_err(|e| e.to_string())
    } else {
        encode_jpeg(&mut image, &pixels, w, h, s.channels, opts)
    };
    written.map_err(|e| fail(format!("cannot encode: {e}")))?;
    let json = serde_json::to_vec(&serde_json::json!({
        "source": name,
        "width": s.width,
        "height": s.height,
    }))
    .unwrap_or_default();
    Ok(Encoded {
        key: format!("{index:09}"),
        ext: if png { "png" } else { "jpg" },
        image,
        label: s.label,
        json,
        pixels_in: u64::from(s.width) * u64::from(s.height) * u64::from(s.channels),
    })
}

/// A shard being written: a tar stream into a temporary file, hashed as it goes.
struct ShardWriter {
    name: String,
    tmp: PathBuf,
    builder: tar::Builder<Hashing>,
    count: u64,
    first: u64,
}

/// A file writer that hashes and counts what passes through.
struct Hashing {
    file: std::io::BufWriter<File>,
    hash: Sha256,
    bytes: u64,
}

impl Write for Hashing {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

fn member(builder: &mut tar::Builder<Hashing>, name: &str, data: &[u8]) -> std::io::Result<()> {
    let mut header = tar::Header::new_ustar();
    header.set_path(name)?;
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    builder.append(&header, data)
}

impl ShardWriter {
    fn new(out: &Path, prefix: &str, number: usize, first: u64) -> Result<Self, PackError> {
        let name = format!("{prefix}-{number:06}.tar");
        let tmp = out.join(format!(".{name}.partial"));
        let file = File::create(&tmp).map_err(io(&tmp))?;
        let mut builder = tar::Builder::new(Hashing {
            file: std::io::BufWriter::with_capacity(1 << 20, file),
            hash: Sha256::new(),
            bytes: 0,
        });
        builder.mode(tar::HeaderMode::Deterministic);
        Ok(Self {
            name,
            tmp,
            builder,
            count: 0,
            first,
        })
    }

    fn add(&mut self, e: &Encoded) -> Result<(), PackError> {
        let tmp = self.tmp.clone();
        member(&mut self.builder, &format!("{}.{}", e.key, e.ext), &e.image).map_err(io(&tmp))?;
        if let Some(label) = e.label {
            member(
                &mut self.builder,
                &format!("{}.cls", e.key),
                label.to_string().as_bytes(),
            )
            .map_err(io(&tmp))?;
        }
        member(&mut self.builder, &format!("{}.json", e.key), &e.json).map_err(io(&tmp))?;
        self.count += 1;
        Ok(())
    }

    fn bytes(&self) -> u64 {
        self.builder.get_ref().bytes
    }

    /// Close the tar, sync it and move it to its name.
    fn finish(self, out: &Path) -> Result<IndexShard, PackError> {
        let tmp = self.tmp.clone();
        let mut hashing = self.builder.into_inner().map_err(io(&tmp))?;
        hashing.flush().map_err(io(&tmp))?;
        let Hashing { file, hash, bytes } = hashing;
        let file = file.into_inner().map_err(|e| io(&tmp)(e.into_error()))?;
        file.sync_all().map_err(io(&tmp))?;
        drop(file);
        let path = out.join(&self.name);
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        let meta = std::fs::metadata(&path).map_err(io(&path))?;
        Ok(IndexShard {
            name: self.name,
            count: self.count,
            bytes,
            sha256: hex(&hash.finalize()),
            modified_ns: modified_ns(&meta),
            first: self.first,
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Write `text` to `path` through a temporary file and a rename.
fn write_atomic(path: &Path, text: &[u8]) -> Result<(), PackError> {
    let tmp = path.with_extension("partial");
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(text).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Pack `data` (described as `source`, with class names `classes`) into `out`. `progress` is
/// called with the number of items done so far.
///
/// # Errors
/// An unreadable item with `on_error: fail`, bad options, or a write that failed.
pub fn pack(
    data: &dyn Dataset,
    source: &str,
    classes: Vec<String>,
    out: &Path,
    opts: &PackOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<PackReport, PackError> {
    if opts.max_side == 0 {
        return Err(PackError::Invalid("`--max-side` must be at least 1".into()));
    }
    if !(1..=100).contains(&opts.quality) {
        return Err(PackError::Invalid(format!(
            "`--quality` must be 1 to 100, found {}",
            opts.quality
        )));
    }
    if opts.prefix.is_empty() || opts.prefix.contains(['/', '\\']) {
        return Err(PackError::Invalid(format!(
            "`--prefix` {:?} must be a plain file-name start",
            opts.prefix
        )));
    }
    let n = opts.limit.map_or(data.len(), |l| l.min(data.len()));
    std::fs::create_dir_all(out).map_err(io(out))?;
    let job = serde_json::json!({ "source": source, "items": n, "options": opts });
    let progress_path = out.join(PROGRESS);
    // An interrupted pack of the same job: keep its whole shards (each still the size it had).
    let mut state = std::fs::read(&progress_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Progress>(&b).ok())
        .filter(|p| p.job == job)
        .unwrap_or(Progress {
            job: job.clone(),
            shards: Vec::new(),
            next: 0,
            skipped: Vec::new(),
            pixels_in: 0,
        });
    if let Some(bad) = state
        .shards
        .iter()
        .position(|s| std::fs::metadata(out.join(&s.name)).map_or(true, |m| m.len() != s.bytes))
    {
        // A shard gone or changed: pack again from there.
        state.next = state.shards[bad].first;
        state.shards.truncate(bad);
    }
    let mut report = PackReport {
        reused: state.shards.len(),
        ..PackReport::default()
    };
    let mut writer: Option<ShardWriter> = None;
    let mut next = state.next;
    progress(next);
    while next < n {
        let end = (next + BLOCK as u64).min(n);
        let encoded: Vec<Result<Encoded, ItemError>> = (next..end)
            .into_par_iter()
            .map(|i| encode(data, i, opts))
            .collect();
        for (i, e) in (next..end).zip(encoded) {
            let e = match e {
                Ok(e) => e,
                Err(err) if opts.on_error == OnError::Skip => {
                    state.skipped.push((err.item, err.cause));
                    continue;
                }
                Err(err) => return Err(PackError::Item(err)),
            };
            if writer.is_none() {
                writer = Some(ShardWriter::new(out, &opts.prefix, state.shards.len(), i)?);
            }
            let Some(w) = writer.as_mut() else { continue };
            w.add(&e)?;
            state.pixels_in += e.pixels_in;
            if w.bytes() >= opts.shard_size {
                if let Some(done) = writer.take() {
                    state.shards.push(done.finish(out)?);
                }
                state.next = i + 1;
                let text = serde_json::to_vec_pretty(&state).unwrap_or_default();
                write_atomic(&progress_path, &text)?;
            }
        }
        next = end;
        progress(next);
    }
    if let Some(done) = writer.take() {
        state.shards.push(done.finish(out)?);
    }
    let index = Index {
        format: "simclr-webdataset".into(),
        version: 1,
        source: source.to_owned(),
        count: state.shards.iter().map(|s| s.count).sum(),
        classes,
        shards: state.shards.clone(),
        encoding: serde_json::json!({
            "max_side": opts.max_side,
            "side": opts.side,
            "format": opts.format,
            "quality": opts.quality,
            "chroma": opts.chroma,
        }),
    };
    let text = serde_json::to_vec_pretty(&index).unwrap_or_default();
    write_atomic(&out.join(INDEX_FILE), &text)?;
    let _ = std::fs::remove_file(&progress_path);
    report.skipped = state
        .skipped
        .into_iter()
        .map(|(item, cause)| ItemError { item, cause })
        .collect();
    report.pixels_in = state.pixels_in;
    report.index = Some(index);
    Ok(report)
}

#[cfg(test)]
mod tests {
    /// The (horizontal, vertical) sampling factors of each component in a JPEG's SOF0.
    fn sampling(jpeg: &[u8]) -> Vec<(u8, u8)> {
        let at = jpeg
            .windows(2)
            .position(|w| w == [0xFF, 0xC0])
            .expect("a baseline frame header");
        let components = usize::from(jpeg[at + 9]);
        (0..components)
            .map(|c| {
                let f = jpeg[at + 11 + 3 * c];
                (f >> 4, f & 15)
            })
            .collect()
    }

    #[test]
    fn colour_jpegs_are_4_2_0_unless_asked_for_4_4_4() {
        let pixels: Vec<u8> = (0..32 * 24 * 3).map(|i| (i * 7 % 256) as u8).collect();
        let jpeg = |chroma, channels: u8| {
            let opts = PackOptions {
                chroma,
                ..PackOptions::default()
            };
            let mut out = Vec::new();
            let n = 32 * 24 * usize::from(channels);
            encode_jpeg(&mut out, &pixels[..n], 32, 24, channels, &opts).expect("encodes");
            out
        };
        assert_eq!(sampling(&jpeg(Chroma::Half, 3)), [(2, 2), (1, 1), (1, 1)]);
        assert_eq!(sampling(&jpeg(Chroma::Full, 3)), [(1, 1), (1, 1), (1, 1)]);
        assert_eq!(sampling(&jpeg(Chroma::Half, 1)), [(1, 1)]);
        // Deterministic: the same pixels give the same bytes (the shard-level test packs PNG).
        assert_eq!(jpeg(Chroma::Half, 3), jpeg(Chroma::Half, 3));
        let decoded = crate::image_folder::decode(&jpeg(Chroma::Half, 3)).expect("decodes");
        assert_eq!((decoded.width(), decoded.height()), (32, 24));
    }

    use super::*;

    #[test]
    fn the_bounded_side_is_scaled_to_max_side() {
        assert_eq!(stored_size(500, 375, 256, Side::Longer), (256, 192));
        assert_eq!(stored_size(500, 375, 256, Side::Shorter), (341, 256));
        assert_eq!(stored_size(28, 28, 256, Side::Longer), (28, 28));
        assert_eq!(stored_size(1000, 1, 10, Side::Longer), (10, 1));
    }
}
