//! The built-in transforms, with torchvision's names, parameters and semantics
//! (`torchvision.transforms` v1/v2 on float tensors in [0, 1]), by family:
//!
//! - [`params`] — sizes and ranges as definitions write them, and the checks they share;
//! - [`geometry`] — `random_resized_crop`, `resize`, `center_crop`, the flips;
//! - [`color`] — `color_jitter`, `random_grayscale`, `solarize`, `equalize`;
//! - [`blur`] — `gaussian_blur`;
//! - [`occlusion`] — `random_erasing` (cutout), `gaussian_noise`;
//! - [`rotate`] — `random_rotation`;
//! - [`compose`] — `random_apply`, `normalize`.
//!
//! [`BUILTINS`] lists them in the order `simclr stages views` documents them. A new built-in
//! goes into its family's file and gets a line there.

pub mod blur;
pub mod color;
pub mod compose;
pub mod geometry;
pub mod occlusion;
pub mod params;
pub mod rotate;

pub use blur::*;
pub use color::*;
pub use compose::*;
pub use geometry::*;
pub use occlusion::*;
pub use params::{Size, Spread};
pub use rotate::*;

use crate::transform::TransformKind;

/// ITU-R 601-2 luma weights, as torchvision's `rgb_to_grayscale` and PIL's `convert("L")`.
pub const LUMA: [f32; 3] = [0.299, 0.587, 0.114];

/// Every built-in transform.
pub const BUILTINS: &[TransformKind] = &[
    TransformKind {
        name: "random_resized_crop",
        summary: "crop a random area and aspect ratio, resize to `size`",
        build: build_rrc,
    },
    TransformKind {
        name: "resize",
        summary: "resize (shorter side to `size`, or to [h, w])",
        build: build_resize,
    },
    TransformKind {
        name: "center_crop",
        summary: "crop the centre `size` (zero-padded if larger)",
        build: build_center_crop,
    },
    TransformKind {
        name: "horizontal_flip",
        summary: "mirror left-right with probability `p`",
        build: build_hflip,
    },
    TransformKind {
        name: "vertical_flip",
        summary: "mirror top-bottom with probability `p`",
        build: build_vflip,
    },
    TransformKind {
        name: "color_jitter",
        summary: "brightness, contrast, saturation, hue in random order",
        build: build_jitter,
    },
    TransformKind {
        name: "random_grayscale",
        summary: "convert to gray (kept 3-channel) with probability `p`",
        build: build_grayscale,
    },
    TransformKind {
        name: "gaussian_blur",
        summary: "Gaussian blur with sigma drawn from a range",
        build: build_blur,
    },
    TransformKind {
        name: "solarize",
        summary: "invert pixels above `threshold` with probability `p`",
        build: build_solarize,
    },
    TransformKind {
        name: "equalize",
        summary: "histogram equalisation with probability `p`",
        build: build_equalize,
    },
    TransformKind {
        name: "random_rotation",
        summary: "rotate by an angle drawn from `degrees` about the centre, corners filled",
        build: build_rotation,
    },
    TransformKind {
        name: "random_erasing",
        summary: "erase a random box (cutout) with probability `p`",
        build: build_erasing,
    },
    TransformKind {
        name: "gaussian_noise",
        summary: "add Gaussian noise (`mean`, `sigma`), clipped to [0, 1]",
        build: build_noise,
    },
    TransformKind {
        name: "random_apply",
        summary: "apply a list of transforms with probability `p`",
        build: build_random_apply,
    },
    TransformKind {
        name: "normalize",
        summary: "(x - mean) / std per channel",
        build: build_normalize,
    },
];
