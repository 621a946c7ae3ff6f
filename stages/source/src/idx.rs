//! `idx`: MNIST / Fashion-MNIST IDX files (gzipped or raw).
//!
//! Format (<http://yann.lecun.com/exdb/mnist/>): a big-endian header `0x00 0x00 type ndims`,
//! then `ndims` u32 sizes, then the data. Images are type `0x08` (u8) with 3 dims
//! `[n, rows, cols]`; labels are type `0x08` with 1 dim `[n]`.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flate2::read::GzDecoder;
use simclr_core::{
    BuildContext, InputPorts, OutputPort, Parallelism, ParamError, PortType, StageFactory,
    StageKind,
};

use simclr_core::DataError;
use simclr_core::error::chain;

use crate::common::{Dataset, ItemError, Sample, Split, check_options, factory};

/// Where `apt-get install dataset-fashion-mnist` puts the files.
pub const DEFAULT_PATH: &str = "/usr/share/datasets/fashion-mnist";

crate::source_config! {
    /// Parameters of `idx`.
    pub struct IdxConfig {
        /// A folder holding `{train,t10k}-images-idx3-ubyte[.gz]` (and the matching labels
        /// files), or the path of one images file.
        #[serde(default = "default_path")]
        pub path: String,
        /// `train` or `test`, when `path` is a folder.
        #[serde(default)]
        pub split: Split,
        /// Labels file, when `path` names an images file (in a folder it is found by name).
        #[serde(default)]
        pub labels: Option<String>,
    }
}

fn default_path() -> String {
    DEFAULT_PATH.to_owned()
}

/// The `idx` kind.
pub static KIND: StageKind = StageKind {
    name: "idx",
    summary: "MNIST/Fashion-MNIST IDX files (gzipped or raw), 28x28 gray images with labels",
    input: InputPorts::None,
    output: OutputPort::Emits(PortType::Images),
    parallelism: Parallelism::Single,
    example: "\
name: idx-example
stages:
  images:
    kind: idx
    params: { path: /usr/share/datasets/fashion-mnist, split: test, limit: 100 }
  drain: { kind: sink, inputs: [images] }
",
    params: || schemars::schema_for!(IdxConfig),
    build,
};

/// The files a configuration names.
pub(crate) fn resolve(config: &IdxConfig) -> Result<(PathBuf, Option<PathBuf>), DataError> {
    let path = Path::new(&config.path);
    if path.is_dir() {
        let prefix = match config.split {
            Split::Train => "train",
            Split::Test => "t10k",
        };
        let find = |stem: &str| {
            [
                format!("{prefix}-{stem}-ubyte.gz"),
                format!("{prefix}-{stem}-ubyte"),
                format!("{prefix}-{stem}.idx3-ubyte"),
            ]
            .into_iter()
            .map(|name| path.join(name))
            .find(|p| p.is_file())
        };
        let images = find("images-idx3").ok_or_else(|| {
            DataError::Unavailable(format!(
                "no `{prefix}-images-idx3-ubyte[.gz]` in {}",
                path.display()
            ))
        })?;
        return Ok((images, find("labels-idx1")));
    }
    if path.is_file() {
        return Ok((path.to_owned(), config.labels.as_ref().map(PathBuf::from)));
    }
    Err(DataError::Unavailable(format!(
        "{} does not exist",
        path.display()
    )))
}

fn open(path: &Path) -> Result<Box<dyn Read>, DataError> {
    use std::io::BufRead;
    let file = File::open(path).map_err(DataError::io(path))?;
    let mut reader = BufReader::new(file);
    let gz = reader
        .fill_buf()
        .map_err(DataError::io(path))?
        .starts_with(&[0x1f, 0x8b]);
    Ok(if gz {
        Box::new(GzDecoder::new(reader))
    } else {
        Box::new(reader)
    })
}

/// Read an IDX header: the dims.
fn read_header(reader: &mut dyn Read, path: &Path, want_dims: u8) -> Result<Vec<u32>, DataError> {
    let mut head = [0u8; 4];
    reader
        .read_exact(&mut head)
        .map_err(|e| DataError::caused(path, "cannot read the IDX header", e))?;
    if head[0] != 0 || head[1] != 0 {
        return Err(DataError::file(
            path,
            format!(
                "not an IDX file (magic bytes {:02x} {:02x}, expected 00 00)",
                head[0], head[1]
            ),
        ));
    }
    if head[2] != 0x08 {
        return Err(DataError::file(
            path,
            format!(
                "IDX element type 0x{:02x} is not supported (only 0x08, unsigned bytes)",
                head[2]
            ),
        ));
    }
    if head[3] != want_dims {
        return Err(DataError::file(
            path,
            format!("IDX file has {} dimensions, expected {want_dims}", head[3]),
        ));
    }
    let mut dims = Vec::new();
    for _ in 0..want_dims {
        let mut d = [0u8; 4];
        reader
            .read_exact(&mut d)
            .map_err(|e| DataError::caused(path, "truncated IDX header", e))?;
        dims.push(u32::from_be_bytes(d));
    }
    if want_dims == 3 && (dims[1] == 0 || dims[2] == 0) {
        return Err(DataError::file(
            path,
            format!(
                "images of {}×{} pixels: there is nothing to read",
                dims[1], dims[2]
            ),
        ));
    }
    Ok(dims)
}

fn read_body(reader: &mut dyn Read, path: &Path, expected: usize) -> Result<Vec<u8>, DataError> {
    // Not `with_capacity(expected)`: the size is the header's claim, and a header claiming
    // 2³² images must not allocate terabytes before the file is found short. The buffer grows
    // with the data actually there.
    let mut data = Vec::new();
    reader
        .take(expected as u64 + 1)
        .read_to_end(&mut data)
        .map_err(|e| DataError::caused(path, "cannot read the data (corrupt gzip stream?)", e))?;
    if data.len() < expected {
        return Err(DataError::file(
            path,
            format!(
                "truncated: the header promises {expected} bytes of data, the file holds {}",
                data.len()
            ),
        ));
    }
    data.truncate(expected);
    Ok(data)
}

/// Fashion-MNIST or MNIST held in memory.
#[derive(Debug)]
pub struct IdxDataset {
    rows: u32,
    cols: u32,
    images: Vec<u8>,
    labels: Option<Vec<u8>>,
}

impl IdxDataset {
    /// Load an images file and an optional labels file.
    ///
    /// # Errors
    /// A missing, truncated, corrupt or mismatched file, named.
    pub fn load(images: &Path, labels: Option<&Path>) -> Result<Self, DataError> {
        let mut reader = open(images)?;
        let dims = read_header(reader.as_mut(), images, 3)?;
        let (n, rows, cols) = (dims[0], dims[1], dims[2]);
        let size = (n as usize)
            .checked_mul(rows as usize)
            .and_then(|x| x.checked_mul(cols as usize))
            .ok_or_else(|| {
                DataError::file(
                    images,
                    format!("the header's {n} images of {rows}×{cols} do not fit in memory"),
                )
            })?;
        let data = read_body(reader.as_mut(), images, size)?;
        let labels = match labels {
            None => None,
            Some(path) => {
                let mut reader = open(path)?;
                let dims = read_header(reader.as_mut(), path, 1)?;
                if dims[0] != n {
                    return Err(DataError::file(
                        path,
                        format!("{} labels for {n} images in {}", dims[0], images.display()),
                    ));
                }
                Some(read_body(reader.as_mut(), path, n as usize)?)
            }
        };
        Ok(Self {
            rows,
            cols,
            images: data,
            labels,
        })
    }
}

impl Dataset for IdxDataset {
    fn len(&self) -> u64 {
        (self.images.len() / (self.rows as usize * self.cols as usize).max(1)) as u64
    }

    fn get(&self, index: u64) -> Result<Sample, ItemError> {
        let size = self.rows as usize * self.cols as usize;
        let start = index as usize * size;
        let pixels = self
            .images
            .get(start..start + size)
            .ok_or_else(|| ItemError {
                item: format!("image {index}"),
                cause: "out of range".into(),
            })?;
        Ok(Sample {
            width: self.cols,
            height: self.rows,
            channels: 1,
            pixels: Arc::from(pixels),
            label: self
                .labels
                .as_ref()
                .and_then(|l| l.get(index as usize))
                .map(|&l| u32::from(l)),
        })
    }
}

fn build(cx: &BuildContext<'_>) -> Result<StageFactory, ParamError> {
    let config: IdxConfig = cx.parse()?;
    let options = config.source_options();
    check_options(&options).map_err(|(field, msg, help)| cx.invalid(field, msg, help))?;
    let (images, labels) = resolve(&config).map_err(|e| {
        cx.invalid("path", chain(&e), "install Fashion-MNIST with `apt-get install -y dataset-fashion-mnist` (files in /usr/share/datasets/fashion-mnist)")
    })?;
    // Read the header now so a wrong file is reported with its location in the definition.
    let n = open(&images)
        .and_then(|mut r| read_header(r.as_mut(), &images, 3))
        .map_err(|e| {
            cx.invalid(
                "path",
                chain(&e),
                "point `path` at an IDX images file or the folder holding one",
            )
        })?[0];
    let labelled = Arc::new(IdxSplits {
        config: config.clone(),
    });
    Ok(factory(cx, options, u64::from(n), 1, labelled, move || {
        IdxDataset::load(&images, labels.as_deref()).map(|d| Arc::new(d) as Arc<dyn Dataset>)
    }))
}

/// The labelled splits of an `idx` stage: its own files, or the test part of the same folder.
#[derive(Debug)]
struct IdxSplits {
    config: IdxConfig,
}

impl crate::common::LabelledData for IdxSplits {
    fn describe(&self) -> String {
        format!("idx ({})", self.config.path)
    }

    fn open(&self, split: Split, test_path: Option<&str>) -> Result<Arc<dyn Dataset>, DataError> {
        let mut c = self.config.clone();
        c.split = split;
        if let (Split::Test, Some(p)) = (split, test_path) {
            c.path = p.to_owned();
        }
        let (images, labels) = resolve(&c)?;
        Ok(Arc::new(IdxDataset::load(&images, labels.as_deref())?))
    }
}
