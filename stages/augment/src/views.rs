//! `views`: the heart of SimCLR's data side. Each image x becomes a pair (t(x), t'(x)) of
//! independently augmented views, computed on a rayon pool of `workers` threads.
//!
//! > "we randomly sample a minibatch of N examples and define the contrastive prediction
//! > task on pairs of augmented examples derived from the minibatch, resulting in 2N data
//! > points" — \[0\] SimCLR, Chen et al. 2020, arXiv:2002.05709, §2.1.
//!
//! Every draw of view v of sample (epoch, index) comes from `Rng::for_sample(seed, epoch,
//! index, v)`, so the pairs are identical whatever the number of workers or the chunking.

use std::borrow::Cow;
use std::sync::Arc;

use rayon::prelude::*;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use simclr_core::rng::{Rng, stream};
use simclr_core::{
    BuildContext, Image, InputPorts, Message, OutputPort, Outputs, Parallelism, ParamError,
    PortType, Stage, StageContext, StageError, StageFactory, StageKind, ViewPair,
};

use crate::img::Img;
use crate::ops::{
    ColorJitter, Flip, GaussianBlur, RandomApply, RandomGrayscale, RandomResizedCrop,
};
use crate::resample::Interpolation;
use crate::transform::Transforms;
use crate::transform::{Policy, Transform, TransformError};

/// A policy in a definition: a list of transforms (parsed from the located tree, so the
/// struct only marks the key as known).
#[derive(Clone, Debug, Default, Serialize)]
pub struct PolicySpec;

impl<'de> Deserialize<'de> for PolicySpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d).map(|_| PolicySpec)
    }
}

impl JsonSchema for PolicySpec {
    fn schema_name() -> Cow<'static, str> {
        "Policy".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "array", "description": "a list of transforms: `name` or `{ name: { params } }`" })
    }
}

/// Parameters of `views`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ViewsConfig {
    /// Side of the views made by the default (SimCLR) policy.
    #[serde(default = "default_size")]
    pub size: u32,
    /// Colour-jitter strength s of the default policy (brightness, contrast and saturation
    /// 0.8·s, hue 0.2·s, applied with p 0.8).
    #[serde(default = "default_strength")]
    pub jitter_strength: f64,
    /// Gaussian blur in the default policy (kernel 10% of the side, sigma 0.1-2, p 0.5);
    /// unset means on for views of 64 pixels or more, as in the paper.
    #[serde(default)]
    pub blur: Option<bool>,
    /// Policy t: a list of transforms. Absent: SimCLR's default policy.
    #[serde(default)]
    pub t: Option<PolicySpec>,
    /// Policy t' (asymmetric augmentation). Absent: the same as `t`.
    #[serde(default)]
    pub t_prime: Option<PolicySpec>,
    /// Images augmented per parallel chunk (more keeps the pool busier, adds latency).
    #[serde(default = "default_chunk")]
    pub chunk: usize,
}

fn default_size() -> u32 {
    32
}
fn default_strength() -> f64 {
    1.0
}
fn default_chunk() -> usize {
    64
}

/// The `views` kind.
pub static KIND: StageKind = StageKind {
    name: "views",
    summary: "two augmented views t(x), t'(x) of every image, on a pool of `workers` threads (SimCLR defaults)",
    input: InputPorts::Accepts(&[PortType::Images]),
    output: OutputPort::Emits(PortType::ViewPairs),
    parallelism: Parallelism::Internal,
    example: "\
name: views-example
stages:
  images: { kind: synthetic, params: { count: 256 } }
  views:
    kind: views
    inputs: [images]
    workers: 2
    params:
      t:
        - random_resized_crop: { size: 32, scale: [0.08, 1.0] }
        - horizontal_flip
        - random_apply:
            p: 0.8
            transforms: [{ color_jitter: { brightness: 0.4, contrast: 0.4, saturation: 0.4, hue: 0.1 } }]
        - random_grayscale: { p: 0.2 }
  drain: { kind: sink, inputs: [views] }
",
    params: || schemars::schema_for!(ViewsConfig),
    build,
};

/// SimCLR's default augmentation for `size`-pixel views with jitter strength `s`.
pub fn simclr_policy(size: u32, s: f64, blur: Option<bool>) -> Policy {
    let mut ops: Vec<Box<dyn Transform>> = vec![
        Box::new(RandomResizedCrop {
            size: (size, size),
            scale: (0.08, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            interpolation: Interpolation::Bilinear,
        }),
        Box::new(Flip {
            p: 0.5,
            vertical: false,
        }),
        Box::new(RandomApply {
            p: 0.8,
            inner: Policy::new(vec![Box::new(ColorJitter {
                ranges: [
                    Some(((1.0 - 0.8 * s).max(0.0), 1.0 + 0.8 * s)),
                    Some(((1.0 - 0.8 * s).max(0.0), 1.0 + 0.8 * s)),
                    Some(((1.0 - 0.8 * s).max(0.0), 1.0 + 0.8 * s)),
                    Some((-(0.2 * s).min(0.5), (0.2 * s).min(0.5))),
                ],
            })]),
        }),
        Box::new(RandomGrayscale { p: 0.2 }),
    ];
    if blur.unwrap_or(size >= 64) {
        ops.push(Box::new(RandomApply {
            p: 0.5,
            inner: Policy::new(vec![Box::new(GaussianBlur {
                kernel_size: None,
                kernel_fraction: Some(0.1),
                sigma: (0.1, 2.0),
            })]),
        }));
    }
    Policy::new(ops)
}

/// The two policies a `views` stage's parameters describe.
///
/// # Errors
/// Bad parameters, located.
pub fn policies(
    params: &simclr_core::Value,
    path: &str,
    transforms: &Transforms,
) -> Result<(Policy, Policy), ParamError> {
    let config: ViewsConfig = crate::transform::parse_config(params, path)?;
    let parse = |key: &str| -> Result<Policy, ParamError> {
        match params.get(key) {
            Some(node) => {
                Policy::parse_with(node, &simclr_core::value::join_path(path, key), transforms)
            }
            None => Ok(simclr_policy(
                config.size,
                config.jitter_strength,
                config.blur,
            )),
        }
    };
    let t = parse("t")?;
    let t_prime = if params.get("t_prime").is_some() {
        parse("t_prime")?
    } else {
        parse("t")?
    };
    Ok((t, t_prime))
}

/// Make the pair of sample `image`.
///
/// # Errors
/// A transform failure, or views of different shapes.
pub fn make_pair(
    image: &Image,
    t: &Policy,
    t_prime: &Policy,
    seed: u64,
) -> Result<ViewPair, TransformError> {
    let view = |policy: &Policy, which: u64| -> Result<Img, TransformError> {
        let mut img = Img::from_image(image);
        let mut rng = Rng::for_sample(seed, image.id.epoch, image.id.index, which);
        policy.run_timed(&mut img, &mut rng, None)?;
        Ok(img)
    };
    let a = view(t, stream::VIEW_T)?;
    let b = view(t_prime, stream::VIEW_T_PRIME)?;
    if a.shape != b.shape {
        return Err(TransformError(format!(
            "t makes {}x{}x{} views but t' makes {}x{}x{}; both views must have one shape",
            a.shape.channels,
            a.shape.height,
            a.shape.width,
            b.shape.channels,
            b.shape.height,
            b.shape.width
        )));
    }
    let shape = [a.shape.channels, a.shape.height, a.shape.width];
    Ok(ViewPair {
        id: image.id,
        label: image.label,
        shape,
        first: Arc::new(a.into_f32()),
        second: Arc::new(b.into_f32()),
    })
}

fn build(cx: &BuildContext<'_>) -> Result<StageFactory, ParamError> {
    let config: ViewsConfig = cx.parse()?;
    if config.chunk == 0 {
        return Err(cx.invalid(
            "chunk",
            "`chunk` must be at least 1",
            "64 keeps a pool of a few threads busy",
        ));
    }
    if !(config.jitter_strength.is_finite() && config.jitter_strength >= 0.0) {
        return Err(cx.invalid(
            "jitter_strength",
            "`jitter_strength` must be a non-negative number",
            "the paper uses 1.0 (0.5 for CIFAR-10)",
        ));
    }
    if config.size > crate::ops::params::MAX_SIDE {
        return Err(cx.invalid(
            "size",
            format!(
                "`size` {} is larger than the largest supported side, {}",
                config.size,
                crate::ops::params::MAX_SIDE
            ),
            "32 for CIFAR-sized views, 224 for ImageNet",
        ));
    }
    if config.size == 0 {
        return Err(cx.invalid(
            "size",
            "`size` must be at least 1",
            "32 for CIFAR-sized views",
        ));
    }
    let transforms = cx
        .extension::<Transforms>()
        .unwrap_or(&crate::transform::BUILTIN_TRANSFORMS);
    let (t, t_prime) = policies(cx.params, &cx.params_path, transforms)?;
    // Evaluation sees images as t's deterministic counterpart makes them (its crop size and
    // normalisation); t' must give views of the same shape anyway.
    cx.publish(simclr_core::StreamFacts {
        preprocessing: Some(t.preprocess()),
        ..cx.upstream.clone()
    });
    let (t, t_prime) = (Arc::new(t), Arc::new(t_prime));
    let (seed, workers, chunk) = (cx.seed, cx.workers, config.chunk);
    Ok(StageFactory::stage(move |_| Views {
        t: t.clone(),
        t_prime: t_prime.clone(),
        seed,
        workers,
        chunk,
        pool: None,
        pending: Vec::new(),
    }))
}

struct Views {
    t: Arc<Policy>,
    t_prime: Arc<Policy>,
    seed: u64,
    workers: usize,
    chunk: usize,
    pool: Option<rayon::ThreadPool>,
    pending: Vec<Image>,
}

impl Views {
    fn flush(&mut self, out: &mut Outputs<'_>) -> Result<(), StageError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let (t, t_prime, seed) = (&self.t, &self.t_prime, self.seed);
        let images = std::mem::take(&mut self.pending);
        let work = || {
            images
                .par_iter()
                .map(|img| make_pair(img, t, t_prime, seed))
                .collect::<Vec<_>>()
        };
        let pairs = match &self.pool {
            Some(pool) => pool.install(work),
            None => work(),
        };
        for (pair, image) in pairs.into_iter().zip(&images) {
            let pair = pair.map_err(|e| {
                StageError::caused(
                    format!("sample {} (epoch {})", image.id.index, image.id.epoch),
                    e,
                )
            })?;
            out.push(Message::ViewPair(pair))?;
        }
        Ok(())
    }
}

impl Stage for Views {
    fn on_start(&mut self, cx: &mut StageContext) -> Result<(), StageError> {
        let id = cx.stage_id().to_owned();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(self.workers)
            .thread_name(move |i| format!("{id}-pool-{i}"))
            .build()
            .map_err(|e| {
                StageError::caused(
                    format!("cannot start a pool of {} threads", self.workers),
                    e,
                )
            })?;
        self.pool = Some(pool);
        Ok(())
    }

    fn process(
        &mut self,
        msg: Message,
        out: &mut Outputs<'_>,
        _cx: &mut StageContext,
    ) -> Result<(), StageError> {
        match msg {
            Message::Image(image) => {
                self.pending.push(image);
                if self.pending.len() >= self.chunk {
                    self.flush(out)?;
                }
                Ok(())
            }
            other => Err(StageError::UnexpectedMessage {
                expected: "images",
                got: other.port_type().name(),
            }),
        }
    }

    fn on_finish(
        &mut self,
        out: &mut Outputs<'_>,
        _cx: &mut StageContext,
    ) -> Result<(), StageError> {
        self.flush(out)
    }
}
