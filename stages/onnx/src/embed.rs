//! Embeddings of images with an exported encoder (ONNX Runtime) or a checkpoint (candle):
//! what `simclr embed` runs, as a library a Rust program calls.
//!
//! ```no_run
//! use std::path::Path;
//! use simclr_stage_onnx::embed::{Embedder, Inputs};
//!
//! let registry = simclr_config::Registry::default();
//! let encoders = simclr_stage_model::Encoders::builtin();
//! let mut embedder = Embedder::open(Path::new("encoder.onnx"), &registry, &encoders, 0)?;
//! let inputs = Inputs::open(Path::new("images/"), embedder.preprocessing().channels)?;
//! let out = embedder.embed(&inputs, "features", 256, None, &mut |_done| {})?;
//! println!("{} rows of {} values", out.rows.len() / out.dim, out.dim);
//! # Ok::<(), simclr_stage_onnx::error::OnnxError>(())
//! ```
//!
//! Preprocessing comes from the model's metadata (an export) or the checkpoint's definition:
//! scale to cover the input size, crop the centre, /255, normalise — the evaluation transforms.
//! A model trained without a fixed size takes the images as they are, so they must share one.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;
use rayon::prelude::*;
use simclr_config::Registry;
use simclr_stage_augment::{Policy, Shape};
use simclr_stage_eval::data::prepare;
use simclr_stage_model::{Encoders, TrainedModel, Weights};
use simclr_stage_source::common::{Dataset, Sample};

use crate::error::OnnxError;
use crate::export::{FEATURES, PROJECTION};
use crate::exporter::{RunInputs, preprocessing};
use crate::meta::Preprocessing;
use crate::runtime::OnnxModel;

/// What runs the network.
enum Backend {
    Onnx {
        model: Box<OnnxModel>,
        path: PathBuf,
    },
    Candle(Box<TrainedModel>),
}

/// A model ready to embed images: its backend and the preprocessing its inputs need.
pub struct Embedder {
    backend: Backend,
    pre: Preprocessing,
}

/// What to embed.
pub enum Inputs {
    /// Images, decoded on demand and preprocessed; `ids` (paths relative to the folder) for
    /// folders.
    Images {
        /// The images.
        data: Arc<dyn Dataset>,
        /// One name per image, for folders.
        ids: Option<Vec<String>>,
        /// Where they came from.
        path: PathBuf,
    },
    /// Already preprocessed images `[n, c, h, w]`.
    Tensor {
        /// `[n, c, h, w]`.
        dims: Vec<usize>,
        /// The values.
        data: Vec<f32>,
        /// Where they came from.
        path: PathBuf,
    },
}

/// Embeddings in input order.
#[derive(Clone, Debug, PartialEq)]
pub struct Embeddings {
    /// `total × dim` values, row-major.
    pub rows: Vec<f32>,
    /// Rows.
    pub total: usize,
    /// Values per row.
    pub dim: usize,
}

impl Inputs {
    /// An image folder (searched recursively, sorted by path), a float32 `.npy` of
    /// preprocessed images `[n, C, H, W]`, or an IDX image file; images are decoded with
    /// `channels` channels.
    ///
    /// # Errors
    /// Nothing there, no images in a folder, or a file of none of those kinds.
    pub fn open(path: &Path, channels: usize) -> Result<Self, OnnxError> {
        if path.is_dir() {
            let (files, _) = simclr_stage_source::image_folder::scan(path, false)?;
            if files.is_empty() {
                return Err(OnnxError::file(
                    path,
                    "no images (png, jpeg, webp, bmp, gif) under it",
                ));
            }
            let ids = files
                .iter()
                .map(|(p, _)| {
                    p.strip_prefix(path)
                        .unwrap_or(p)
                        .to_string_lossy()
                        .into_owned()
                })
                .collect();
            let data = simclr_stage_source::image_folder::ImageFolder::new(files, channels as u8);
            return Ok(Inputs::Images {
                data: Arc::new(data),
                ids: Some(ids),
                path: path.to_owned(),
            });
        }
        if !path.is_file() {
            return Err(OnnxError::file(path, "no such file or folder"));
        }
        if path.extension().is_some_and(|e| e == "npy") {
            let (dims, data) = crate::npy::read_f32(path)?;
            if dims.len() != 4 {
                return Err(OnnxError::file(
                    path,
                    format!(
                        "shape {dims:?}; a .npy input holds preprocessed images [n, channels, height, width]"
                    ),
                ));
            }
            return Ok(Inputs::Tensor {
                dims,
                data,
                path: path.to_owned(),
            });
        }
        let data = simclr_stage_source::idx::IdxDataset::load(path, None).map_err(|e| {
            OnnxError::file(
                path,
                format!(
                    "not an image folder, .npy or IDX file: {}",
                    simclr_stage_model::error::chain(&e)
                ),
            )
        })?;
        Ok(Inputs::Images {
            data: Arc::new(data),
            ids: None,
            path: path.to_owned(),
        })
    }

    /// Inputs there are.
    pub fn len(&self) -> usize {
        match self {
            Inputs::Images { data, .. } => data.len() as usize,
            Inputs::Tensor { dims, .. } => dims[0],
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The names of the rows, for folders.
    pub fn ids(&self) -> Option<&[String]> {
        match self {
            Inputs::Images { ids, .. } => ids.as_deref(),
            Inputs::Tensor { .. } => None,
        }
    }

    fn path(&self) -> &Path {
        match self {
            Inputs::Images { path, .. } | Inputs::Tensor { path, .. } => path,
        }
    }
}

/// The deterministic preprocessing of an image of `height × width`: scale and crop the
/// centre to the model's size when it differs, then pixel/255 and normalisation.
fn policy(pre: &Preprocessing, height: usize, width: usize) -> Result<Policy, OnnxError> {
    Ok(simclr_stage_eval::data::deterministic_policy(
        pre.size,
        Some((pre.mean.as_slice(), pre.std.as_slice())),
        height,
        width,
    )?)
}

impl Embedder {
    /// An `.onnx` file (ONNX Runtime, `threads` intra-op threads, 0: one per core) or a run,
    /// checkpoints or checkpoint folder (candle on the CPU; its encoder kind from `encoders`,
    /// its definition built with `registry`).
    /// An `.onnx` model without this project's metadata embeds preprocessed `.npy` inputs only.
    ///
    /// # Errors
    /// The model cannot be loaded, or ONNX Runtime cannot be found.
    pub fn open(
        model: &Path,
        registry: &Registry,
        encoders: &Encoders,
        threads: usize,
    ) -> Result<Self, OnnxError> {
        Self::open_for(model, registry, encoders, threads, None)
    }

    /// [`Embedder::open`], for `input`: an ONNX model from elsewhere (no preprocessing in
    /// its metadata) can still embed a preprocessed `.npy` input.
    ///
    /// # Errors
    /// As [`Embedder::open`].
    pub fn open_for(
        model: &Path,
        registry: &Registry,
        encoders: &Encoders,
        threads: usize,
        input: Option<&Path>,
    ) -> Result<Self, OnnxError> {
        if model.is_file() {
            let m = OnnxModel::load(model, threads)?;
            let npy = input.filter(|p| p.extension().is_some_and(|e| e == "npy"));
            let pre = match (Preprocessing::from_metadata(m.metadata()), npy) {
                (Ok(pre), _) => pre,
                // A model from elsewhere: preprocessed .npy inputs need no metadata.
                (Err(_), Some(npy)) => {
                    let (dims, _) = crate::npy::read_f32(npy)?;
                    Preprocessing::identity(dims.get(1).copied().unwrap_or(0), None)
                }
                (Err(e), None) => {
                    return Err(OnnxError::file(
                        model,
                        format!("{e}; without it only preprocessed .npy inputs can be embedded"),
                    ));
                }
            };
            return Ok(Self {
                backend: Backend::Onnx {
                    model: Box::new(m),
                    path: model.to_owned(),
                },
                pre,
            });
        }
        let m = TrainedModel::from_checkpoint(model, encoders, Weights::Trained, &Device::Cpu)?;
        let inputs = RunInputs::of(&m, registry)?;
        let pre = preprocessing(&m, &inputs.preprocess, &inputs.train(), &mut Vec::new())?;
        Ok(Self {
            backend: Backend::Candle(Box::new(m)),
            pre,
        })
    }

    /// The preprocessing inputs get.
    pub fn preprocessing(&self) -> &Preprocessing {
        &self.pre
    }

    /// Whether the model is an ONNX file (else a checkpoint run by candle).
    pub fn is_onnx(&self) -> bool {
        matches!(self.backend, Backend::Onnx { .. })
    }

    /// `ONNX Runtime` or `candle`.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Onnx { .. } => "ONNX Runtime",
            Backend::Candle(_) => "candle",
        }
    }

    /// Rows of output `output` for a batch, and their width.
    fn run(
        &mut self,
        x: &[f32],
        dims: &[usize],
        output: &str,
    ) -> Result<(usize, Vec<f32>), OnnxError> {
        match &mut self.backend {
            Backend::Onnx { model, path } => {
                let outs = model.run(x, dims)?;
                // A model from elsewhere with one output: that one is the embedding.
                let only = outs.len() == 1 && output == FEATURES;
                let names = model.output_names().join(", ");
                let o = outs
                    .into_iter()
                    .find(|o| o.name == output || only)
                    .ok_or_else(|| {
                        OnnxError::file(
                            path,
                            format!("the model has no output `{output}` (it has {names})"),
                        )
                    })?;
                Ok((o.dims.get(1).copied().unwrap_or(1), o.data))
            }
            Backend::Candle(m) => {
                let (h, z) = m.forward(x, dims, output == PROJECTION)?;
                let rows = if output == PROJECTION {
                    z.ok_or_else(|| {
                        OnnxError::Message("the checkpoint has no projection head".into())
                    })?
                } else {
                    h
                };
                Ok((rows.len() / dims[0].max(1), rows))
            }
        }
    }

    /// Embed the first `limit` inputs (all by default) in batches of `batch`, taking output
    /// `output` (`features`, `projection`, or for an ONNX model from elsewhere any output
    /// name); `progress(done)` after every batch.
    ///
    /// # Errors
    /// A batch size of 0; nothing to embed; inputs of other channels or, for `.npy` inputs, another size than the
    /// model takes; images that reach different sizes for a model of any size; an unreadable
    /// image (named); the model failing.
    pub fn embed(
        &mut self,
        inputs: &Inputs,
        output: &str,
        batch: usize,
        limit: Option<usize>,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Embeddings, OnnxError> {
        let pre = self.pre.clone();
        let source = inputs.path();
        let total = inputs.len().min(limit.unwrap_or(usize::MAX));
        if total == 0 {
            return Err(OnnxError::file(source, "nothing to embed"));
        }
        if let Inputs::Tensor { dims, .. } = inputs {
            if dims[1] != pre.channels {
                return Err(OnnxError::file(
                    source,
                    format!("{} channel(s), the model takes {}", dims[1], pre.channels),
                ));
            }
            if let Some((h, w)) = pre.size
                && (dims[2], dims[3]) != (h, w)
            {
                return Err(OnnxError::file(
                    source,
                    format!(
                        "images of {}x{}, the model takes {h}x{w} (a .npy input is used as it is: preprocess it to that size)",
                        dims[2], dims[3]
                    ),
                ));
            }
        }
        if batch == 0 {
            return Err(OnnxError::Message(
                "the batch size must be at least 1".into(),
            ));
        }
        let mut rows: Vec<f32> = Vec::new();
        let mut dim = 0;
        let mut start = 0;
        // Every input must reach the model at one size (a model for any size gets the images
        // as they are): the first image's, checked across batches.
        let mut first_shape: Option<Shape> = None;
        let mut policies: HashMap<(usize, usize), Policy> = HashMap::new();
        while start < total {
            let n = batch.min(total - start);
            let (x, dims) = match inputs {
                Inputs::Tensor { dims, data, .. } => {
                    let per = dims[1] * dims[2] * dims[3];
                    (
                        data[start * per..(start + n) * per].to_vec(),
                        vec![n, dims[1], dims[2], dims[3]],
                    )
                }
                Inputs::Images { data, ids, .. } => {
                    let batch = ImageBatch {
                        data: data.as_ref(),
                        ids: ids.as_deref(),
                        source,
                        pre: &pre,
                    };
                    batch.load(start, n, &mut policies, &mut first_shape)?
                }
            };
            let (d, out) = self.run(&x, &dims, output)?;
            dim = d;
            rows.extend_from_slice(&out);
            start += n;
            progress(start);
        }
        Ok(Embeddings { rows, total, dim })
    }
}

/// One batch of images to decode and preprocess.
struct ImageBatch<'a> {
    data: &'a dyn Dataset,
    ids: Option<&'a [String]>,
    source: &'a Path,
    pre: &'a Preprocessing,
}

impl ImageBatch<'_> {
    fn name(&self, i: usize) -> String {
        self.ids
            .map_or_else(|| format!("item {i}"), |ids| ids[i].clone())
    }

    fn fail(&self, i: usize, message: impl std::fmt::Display) -> OnnxError {
        OnnxError::file(self.source, format!("{}: {message}", self.name(i)))
    }

    /// Images `start..start + n`, preprocessed, as one `[n, c, h, w]` batch.
    fn load(
        &self,
        start: usize,
        n: usize,
        policies: &mut HashMap<(usize, usize), Policy>,
        first_shape: &mut Option<Shape>,
    ) -> Result<(Vec<f32>, Vec<usize>), OnnxError> {
        let channels = self.pre.channels;
        let samples: Vec<Sample> = (start..start + n)
            .into_par_iter()
            .map(|i| {
                let s = self.data.get(i as u64).map_err(|e| {
                    OnnxError::file(self.source, format!("{}: {}", e.item, e.cause))
                })?;
                if usize::from(s.channels) != channels {
                    return Err(OnnxError::file(
                        self.source,
                        format!(
                            "{} has {} channel(s), the model takes {channels}",
                            self.name(i),
                            s.channels
                        ),
                    ));
                }
                Ok(s)
            })
            .collect::<Result<_, OnnxError>>()?;
        for s in &samples {
            let key = (s.height as usize, s.width as usize);
            if let Entry::Vacant(e) = policies.entry(key) {
                e.insert(policy(self.pre, key.0, key.1)?);
            }
        }
        let policies = &*policies;
        let images: Vec<(Vec<f32>, Shape)> = samples
            .into_par_iter()
            .enumerate()
            .map(|(k, s)| {
                let policy = &policies[&(s.height as usize, s.width as usize)];
                prepare(&s, policy).map_err(|e| self.fail(start + k, e.0))
            })
            .collect::<Result<_, OnnxError>>()?;
        let shape = *first_shape.get_or_insert(images[0].1);
        if let Some((k, (_, s))) = images.iter().enumerate().find(|(_, im)| im.1 != shape) {
            return Err(OnnxError::file(
                self.source,
                format!(
                    "{} is {}x{} after preprocessing, the first image {}x{}: the model takes \
                     any size, so images are not resized and must share one (export from a \
                     run whose policy fixes the size, or resize them)",
                    self.name(start + k),
                    s.height,
                    s.width,
                    shape.height,
                    shape.width
                ),
            ));
        }
        let mut x = Vec::with_capacity(n * shape.len());
        for (p, _) in images {
            x.extend_from_slice(&p);
        }
        Ok((x, vec![n, shape.channels, shape.height, shape.width]))
    }
}
