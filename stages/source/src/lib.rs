//! `simclr-stage-source`: the stages that produce images, the first link of the pipeline.
//!
//! - [`idx`]: MNIST / Fashion-MNIST IDX files, gzipped or raw, with optional labels.
//! - [`cifar`]: CIFAR-10 / CIFAR-100 binary batches.
//! - [`image_folder`]: a folder tree of JPEG/PNG/WebP/BMP/GIF files (class = sub-folder),
//!   decoded in parallel workers.
//! - [`synthetic`]: a built-in, deterministic, labelled RGB dataset of shapes and textures.
//!
//! All of them share [`common::SourceOptions`] (epochs, per-epoch shuffle from the seed,
//! `limit`, `on_error: skip | fail`) and the [`common::DatasetSource`] driver, which turns
//! a random-access [`common::Dataset`] into a stream of `images` messages whose order depends
//! only on the seed and the epoch.
#![deny(missing_docs)]

pub mod cifar;
pub mod common;
pub mod idx;
pub mod image_folder;
pub mod synthetic;

/// The kinds of this crate, in the order `simclr stages` lists them.
pub const KINDS: &[&simclr_core::StageKind] = &[
    &synthetic::KIND,
    &idx::KIND,
    &cifar::KIND,
    &image_folder::KIND,
];

/// Open the labelled dataset a source stage of `kind` with `params` reads, for evaluation:
/// `split` picks the train or test part (for `synthetic`, the test part is a disjoint set of
/// images drawn from another seed; for `image_folder`, `test_path` in place of `path`). The
/// stage's `limit`, `epochs` and shuffling are ignored: evaluation reads items in order.
///
/// # Errors
/// A kind that is not a source, parameters it would refuse, or data that cannot be read.
pub fn open_split(
    kind: &str,
    params: &simclr_core::Value,
    seed: u64,
    split: common::Split,
    test_path: Option<&str>,
) -> Result<std::sync::Arc<dyn common::Dataset>, String> {
    use std::sync::Arc;
    let parse_err = |e: simclr_core::ValueError| format!("`{kind}` parameters: {e}");
    match kind {
        "idx" => {
            let mut c: idx::IdxConfig =
                simclr_core::value::from_value(params, "").map_err(parse_err)?;
            c.split = split;
            if let (common::Split::Test, Some(p)) = (split, test_path) {
                c.path = p.to_owned();
            }
            let (images, labels) = idx::resolve(&c)?;
            Ok(Arc::new(idx::IdxDataset::load(&images, labels.as_deref())?))
        }
        "cifar" => {
            let mut c: cifar::CifarConfig =
                simclr_core::value::from_value(params, "").map_err(parse_err)?;
            c.split = split;
            if let (common::Split::Test, Some(p)) = (split, test_path) {
                c.path = p.to_owned();
            }
            let files = cifar::resolve(&c)?;
            Ok(Arc::new(cifar::CifarDataset::load(c.variant, &files)?))
        }
        "image_folder" => {
            let mut c: image_folder::ImageFolderConfig =
                simclr_core::value::from_value(params, "").map_err(parse_err)?;
            if split == common::Split::Test {
                c.path = test_path
                    .ok_or("an `image_folder` source has no test split: name a folder of held-out images (one sub-folder per class, the same class names)")?
                    .to_owned();
            }
            let (files, _) = image_folder::scan(std::path::Path::new(&c.path), true)?;
            if files.is_empty() {
                return Err(format!("no images under {}", c.path));
            }
            Ok(Arc::new(image_folder::ImageFolder::new(files, c.channels)))
        }
        "synthetic" => {
            let c: synthetic::SyntheticConfig =
                simclr_core::value::from_value(params, "").map_err(parse_err)?;
            Ok(Arc::new(synthetic::Synthetic {
                // A different seed draws different images of the same classes.
                seed: match split {
                    common::Split::Train => seed,
                    common::Split::Test => seed ^ 0x7e57_5e7d_0000_0001,
                },
                count: c.count,
                size: c.size,
                classes: c.classes,
                channels: c.channels,
            }))
        }
        other => Err(format!(
            "`{other}` is not a source kind with labels (idx, cifar, image_folder, synthetic)"
        )),
    }
}
