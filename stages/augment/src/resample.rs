//! Cropping and resampling through fast_image_resize (SIMD, antialiased convolution like
//! PIL's, which torchvision's `antialias=True` matches).

use std::cell::RefCell;

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::img::{Img, Pixels, Shape};
use crate::transform::TransformError;

/// Resampling filter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Interpolation {
    /// Nearest neighbour.
    Nearest,
    /// Bilinear (antialiased when downscaling), torchvision's default.
    #[default]
    Bilinear,
    /// Bicubic (Catmull-Rom).
    Bicubic,
    /// Lanczos3.
    Lanczos,
}

impl Interpolation {
    fn alg(self) -> ResizeAlg {
        match self {
            Interpolation::Nearest => ResizeAlg::Nearest,
            Interpolation::Bilinear => ResizeAlg::Convolution(FilterType::Bilinear),
            Interpolation::Bicubic => ResizeAlg::Convolution(FilterType::CatmullRom),
            Interpolation::Lanczos => ResizeAlg::Convolution(FilterType::Lanczos3),
        }
    }
}

thread_local! {
    static RESIZER: RefCell<Resizer> = RefCell::new(Resizer::new());
}

/// Crop `(left, top, width, height)` out of `img` and resample it to `out_h × out_w`.
///
/// # Errors
/// A crop box outside the image, or an empty output.
pub fn crop_resize(
    img: &Img,
    crop: [u32; 4],
    out_h: usize,
    out_w: usize,
    interp: Interpolation,
) -> Result<Img, TransformError> {
    let [left, top, cw, ch] = crop;
    let Shape {
        channels,
        height,
        width,
    } = img.shape;
    if cw == 0 || ch == 0 || (left + cw) as usize > width || (top + ch) as usize > height {
        return Err(TransformError(format!(
            "crop {cw}x{ch} at ({left}, {top}) does not fit a {width}x{height} image"
        )));
    }
    if out_h == 0 || out_w == 0 {
        return Err(TransformError("output size must be at least 1x1".into()));
    }
    let options = ResizeOptions::new().resize_alg(interp.alg()).crop(
        f64::from(left),
        f64::from(top),
        f64::from(cw),
        f64::from(ch),
    );
    let err = |e: &dyn std::fmt::Display| TransformError(format!("resize failed: {e}"));
    let out_shape = Shape {
        channels,
        height: out_h,
        width: out_w,
    };
    match &img.pixels {
        Pixels::U8(hwc) => {
            let pixel_type = match channels {
                1 => PixelType::U8,
                3 => PixelType::U8x3,
                c => {
                    return Err(TransformError(format!(
                        "{c}-channel images are not supported"
                    )));
                }
            };
            let src =
                ImageRef::new(width as u32, height as u32, hwc, pixel_type).map_err(|e| err(&e))?;
            let out = simclr_core::filled_pixels(out_shape.len(), |out| {
                let mut dst = Image::from_slice_u8(out_w as u32, out_h as u32, out, pixel_type)
                    .map_err(|e| err(&e))?;
                RESIZER
                    .with(|r| r.borrow_mut().resize(&src, &mut dst, &options))
                    .map_err(|e| err(&e))
            })?;
            Ok(Img {
                shape: out_shape,
                pixels: Pixels::U8(out),
            })
        }
        Pixels::F32(chw) => {
            let plane_in = height * width;
            let plane_out = out_h * out_w;
            let mut out = vec![0f32; channels * plane_out];
            for c in 0..channels {
                let src_plane: &[u8] = bytemuck::cast_slice(&chw[c * plane_in..(c + 1) * plane_in]);
                let src = ImageRef::new(width as u32, height as u32, src_plane, PixelType::F32)
                    .map_err(|e| err(&e))?;
                let dst_plane: &mut [u8] =
                    bytemuck::cast_slice_mut(&mut out[c * plane_out..(c + 1) * plane_out]);
                let mut dst =
                    Image::from_slice_u8(out_w as u32, out_h as u32, dst_plane, PixelType::F32)
                        .map_err(|e| err(&e))?;
                RESIZER
                    .with(|r| r.borrow_mut().resize(&src, &mut dst, &options))
                    .map_err(|e| err(&e))?;
            }
            Ok(Img::from_f32(out_shape, out))
        }
    }
}
