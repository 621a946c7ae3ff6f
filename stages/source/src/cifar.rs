//! `cifar`: CIFAR-10 / CIFAR-100 binary batches.
//!
//! Format (<https://www.cs.toronto.edu/~kriz/cifar.html>): fixed-size records, each a label
//! byte (CIFAR-100: coarse then fine label bytes) followed by 3072 bytes: the 32×32 red plane,
//! then green, then blue.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use simclr_core::{
    BuildContext, InputPorts, OutputPort, Parallelism, ParamError, PortType, StageFactory,
    StageKind,
};

use simclr_core::DataError;
use simclr_core::error::chain;

use crate::common::{Dataset, ItemError, Sample, Split, check_options, factory};

/// Which CIFAR.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    /// 10 classes, `data_batch_{1..5}.bin` and `test_batch.bin`.
    #[default]
    Cifar10,
    /// 100 classes (the fine label), `train.bin` and `test.bin`.
    Cifar100,
}

impl Variant {
    /// Bytes per record.
    pub fn record_len(self) -> usize {
        match self {
            Variant::Cifar10 => 1 + PIXELS,
            Variant::Cifar100 => 2 + PIXELS,
        }
    }

    fn files(self, split: Split) -> Vec<&'static str> {
        match (self, split) {
            (Variant::Cifar10, Split::Train) => {
                vec![
                    "data_batch_1.bin",
                    "data_batch_2.bin",
                    "data_batch_3.bin",
                    "data_batch_4.bin",
                    "data_batch_5.bin",
                ]
            }
            (Variant::Cifar10, Split::Test) => vec!["test_batch.bin"],
            (Variant::Cifar100, Split::Train) => vec!["train.bin"],
            (Variant::Cifar100, Split::Test) => vec!["test.bin"],
        }
    }
}

const SIDE: usize = 32;
const PIXELS: usize = 3 * SIDE * SIDE;

crate::source_config! {
    /// Parameters of `cifar`.
    pub struct CifarConfig {
        /// The folder of binary batches (`cifar-10-batches-bin`, `cifar-100-binary`) or one
        /// `.bin` file.
        pub path: String,
        /// `cifar10` or `cifar100` (which uses the fine label).
        #[serde(default)]
        pub variant: Variant,
        /// `train` or `test`, when `path` is a folder.
        #[serde(default)]
        pub split: Split,
    }
}

/// The `cifar` kind.
pub static KIND: StageKind = StageKind {
    name: "cifar",
    summary: "CIFAR-10/100 binary batches, 32x32 RGB images with labels",
    input: InputPorts::None,
    output: OutputPort::Emits(PortType::Images),
    parallelism: Parallelism::Single,
    example: "\
name: cifar-example
stages:
  images:
    kind: cifar
    params: { path: data/cifar-10-batches-bin, split: train }
  drain: { kind: sink, inputs: [images] }
",
    params: || schemars::schema_for!(CifarConfig),
    build,
};

/// The files a configuration names, with their record counts, checked for whole records.
pub(crate) fn resolve(config: &CifarConfig) -> Result<Vec<(PathBuf, u64)>, DataError> {
    let path = Path::new(&config.path);
    let files: Vec<PathBuf> = if path.is_dir() {
        config
            .variant
            .files(config.split)
            .iter()
            .map(|f| path.join(f))
            .collect()
    } else if path.is_file() {
        vec![path.to_owned()]
    } else {
        return Err(DataError::Unavailable(format!(
            "{} does not exist",
            path.display()
        )));
    };
    let record = config.variant.record_len() as u64;
    files
        .into_iter()
        .map(|f| {
            let len = std::fs::metadata(&f).map_err(DataError::io(&f))?.len();
            if len == 0 || len % record != 0 {
                return Err(DataError::file(
                    &f,
                    format!(
                        "{len} bytes is not a whole number of {record}-byte {} records (truncated, or the wrong `variant`?)",
                        match config.variant {
                            Variant::Cifar10 => "CIFAR-10",
                            Variant::Cifar100 => "CIFAR-100",
                        }
                    ),
                ));
            }
            Ok((f, len / record))
        })
        .collect()
}

/// CIFAR records held in memory.
#[derive(Debug)]
pub struct CifarDataset {
    variant: Variant,
    records: Vec<u8>,
}

impl CifarDataset {
    /// Load the given batch files.
    ///
    /// # Errors
    /// An unreadable or truncated file, named.
    pub fn load(variant: Variant, files: &[(PathBuf, u64)]) -> Result<Self, DataError> {
        let mut records = Vec::new();
        for (path, n) in files {
            let bytes = std::fs::read(path).map_err(DataError::io(path))?;
            if bytes.len() as u64 != n * variant.record_len() as u64 {
                return Err(DataError::file(path, "changed size while being read"));
            }
            records.extend_from_slice(&bytes);
        }
        Ok(Self { variant, records })
    }
}

impl Dataset for CifarDataset {
    fn len(&self) -> u64 {
        (self.records.len() / self.variant.record_len()) as u64
    }

    fn get(&self, index: u64) -> Result<Sample, ItemError> {
        let len = self.variant.record_len();
        let start = index as usize * len;
        let record = self
            .records
            .get(start..start + len)
            .ok_or_else(|| ItemError {
                item: format!("record {index}"),
                cause: "out of range".into(),
            })?;
        let (label, planes) = match self.variant {
            Variant::Cifar10 => (record[0], &record[1..]),
            Variant::Cifar100 => (record[1], &record[2..]),
        };
        let plane = SIDE * SIDE;
        let mut hwc = vec![0u8; PIXELS];
        for i in 0..plane {
            hwc[3 * i] = planes[i];
            hwc[3 * i + 1] = planes[plane + i];
            hwc[3 * i + 2] = planes[2 * plane + i];
        }
        Ok(Sample {
            width: SIDE as u32,
            height: SIDE as u32,
            channels: 3,
            pixels: Arc::from(hwc),
            label: Some(u32::from(label)),
        })
    }
}

fn build(cx: &BuildContext<'_>) -> Result<StageFactory, ParamError> {
    let config: CifarConfig = cx.parse()?;
    let options = config.source_options();
    check_options(&options).map_err(|(field, msg, help)| cx.invalid(field, msg, help))?;
    let files = resolve(&config).map_err(|e| {
        cx.invalid("path", chain(&e), "download and extract the binary version from https://www.cs.toronto.edu/~kriz/cifar.html and point `path` at its folder")
    })?;
    let n: u64 = files.iter().map(|(_, n)| n).sum();
    let variant = config.variant;
    let labelled = Arc::new(CifarSplits {
        config: config.clone(),
    });
    Ok(factory(cx, options, n, 3, labelled, move || {
        CifarDataset::load(variant, &files).map(|d| Arc::new(d) as Arc<dyn Dataset>)
    }))
}

/// The labelled splits of a `cifar` stage: the variant's train or test batches.
#[derive(Debug)]
struct CifarSplits {
    config: CifarConfig,
}

impl crate::common::LabelledData for CifarSplits {
    fn describe(&self) -> String {
        format!("cifar ({})", self.config.path)
    }

    fn open(&self, split: Split, test_path: Option<&str>) -> Result<Arc<dyn Dataset>, DataError> {
        let mut c = self.config.clone();
        c.split = split;
        if let (Split::Test, Some(p)) = (split, test_path) {
            c.path = p.to_owned();
        }
        let files = resolve(&c)?;
        Ok(Arc::new(CifarDataset::load(c.variant, &files)?))
    }
}
