//! What a consumer needs to feed an exported encoder, as `metadata_props` of the ONNX model:
//! written by `export`, read back by `embed`.
//!
//! | key | value |
//! |---|---|
//! | `input_name` | `images` |
//! | `input_layout` | `NCHW` |
//! | `input_channels` | `1` or `3` |
//! | `channel_order` | `gray` or `RGB` |
//! | `input_height`, `input_width` | the training crop size (absent: any size) |
//! | `pixel_scale` | `1/255`: 8-bit pixels are divided by 255 before normalisation |
//! | `mean`, `std` | per channel, comma-separated: `x = (pixel/255 − mean) / std` |
//! | `resize` | how images of another size are brought to the input size |
//! | `embedding_output`, `embedding_size` | `features` and the size of h |
//! | `projection_output`, `projection_size` | `projection` and the size of z (with the head) |
//! | `encoder`, `encoder_spec` | the stage kind and its parameters (JSON) |
//! | `batch_norm` | `folded` or `BatchNormalization` |
//! | `definition_hash`, `training_step`, `epoch`, `seed` | where the weights come from |

use std::collections::BTreeMap;

use crate::error::OnnxError;

/// How images become the model's input.
#[derive(Clone, Debug, PartialEq)]
pub struct Preprocessing {
    /// Channels (1: gray, 3: RGB).
    pub channels: usize,
    /// Height and width the model was trained at, when fixed.
    pub size: Option<(usize, usize)>,
    /// Per-channel mean subtracted after scaling to [0, 1].
    pub mean: Vec<f64>,
    /// Per-channel divisor.
    pub std: Vec<f64>,
}

const RESIZE: &str = "when an image is not input_height x input_width: scale it (bilinear, keeping its aspect ratio) to the smallest size that covers input_height x input_width, then crop the centre";

fn list(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x}"))
        .collect::<Vec<_>>()
        .join(",")
}

impl Preprocessing {
    /// No normalisation (mean 0, std 1) for `channels` channels.
    pub fn identity(channels: usize, size: Option<(usize, usize)>) -> Self {
        Self {
            channels,
            size,
            mean: vec![0.0; channels],
            std: vec![1.0; channels],
        }
    }

    /// The metadata entries.
    pub fn to_metadata(&self) -> Vec<(String, String)> {
        let mut m = vec![
            ("input_name".to_owned(), crate::export::INPUT.to_owned()),
            ("input_layout".into(), "NCHW".into()),
            ("input_channels".into(), self.channels.to_string()),
            (
                "channel_order".into(),
                if self.channels == 1 { "gray" } else { "RGB" }.into(),
            ),
        ];
        if let Some((h, w)) = self.size {
            m.push(("input_height".into(), h.to_string()));
            m.push(("input_width".into(), w.to_string()));
            m.push(("resize".into(), RESIZE.into()));
        }
        m.push(("pixel_scale".into(), "1/255".into()));
        m.push(("mean".into(), list(&self.mean)));
        m.push(("std".into(), list(&self.std)));
        m
    }

    /// Read back from a model's metadata.
    ///
    /// # Errors
    /// Missing or malformed keys (named): a model not exported by this tool.
    pub fn from_metadata(m: &BTreeMap<String, String>) -> Result<Self, OnnxError> {
        let get = |k: &str| {
            m.get(k).ok_or_else(|| {
                OnnxError::Message(format!(
                    "the model's metadata has no `{k}` (was it exported by `simclr export`?)"
                ))
            })
        };
        let int = |k: &str| -> Result<usize, OnnxError> {
            get(k)?
                .trim()
                .parse()
                .map_err(|_| OnnxError::Message(format!("metadata `{k}` is not a size")))
        };
        let floats = |k: &str| -> Result<Vec<f64>, OnnxError> {
            get(k)?
                .split(',')
                .map(|s| {
                    s.trim().parse::<f64>().map_err(|_| {
                        OnnxError::Message(format!("metadata `{k}` is not a list of numbers"))
                    })
                })
                .collect()
        };
        let channels = int("input_channels")?;
        let size = match (
            m.contains_key("input_height"),
            m.contains_key("input_width"),
        ) {
            (true, true) => Some((int("input_height")?, int("input_width")?)),
            (false, false) => None,
            _ => {
                return Err(OnnxError::Message(
                    "the metadata has only one of input_height and input_width".into(),
                ));
            }
        };
        let (mean, std) = (floats("mean")?, floats("std")?);
        if mean.len() != channels || std.len() != channels {
            return Err(OnnxError::Message(format!(
                "metadata mean/std ({} and {} values) do not fit {channels} channel(s)",
                mean.len(),
                std.len()
            )));
        }
        if std.iter().any(|&s| s == 0.0 || !s.is_finite()) {
            return Err(OnnxError::Message(format!(
                "metadata std {std:?} has a zero or non-finite value"
            )));
        }
        Ok(Self {
            channels,
            size,
            mean,
            std,
        })
    }
}
