//! Serve an exported encoder with ONNX Runtime: the code a Rust consumer copies. It needs
//! only `ort` (features `std`, `load-dynamic`, `api-31`) and `image`, not this project.
//!
//! ```sh
//! simclr export runs/quickstart --out encoder.onnx
//! cargo run --release --example serve_onnx -- encoder.onnx a.png b.jpg c.png
//! ```
//!
//! Prints each image's embedding (h, the `features` output) size and norm, and the cosine
//! similarities between the images. ONNX Runtime is loaded at run time from `ORT_DYLIB_PATH`,
//! or from the `onnxruntime` Python package (`pip install onnxruntime==1.31.1`).
//!
//! Preprocessing comes from the model's metadata, as `simclr export` writes it:
//! `input_channels` (1 gray, 3 RGB), `input_height`/`input_width` (resize the shorter side,
//! crop the centre), then `(pixel / 255 − mean) / std` per channel, NCHW float32.

use std::error::Error;
use std::path::PathBuf;

use ort::session::Session;
use ort::value::Tensor;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// Where the ONNX Runtime library is: `ORT_DYLIB_PATH`, else Python's onnxruntime package.
fn onnxruntime_library() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH") {
        return Ok(PathBuf::from(path));
    }
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import importlib.util as u; print(u.find_spec('onnxruntime').submodule_search_locations[0])",
        ])
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    let capi = PathBuf::from(String::from_utf8(out.stdout)?.trim()).join("capi");
    std::fs::read_dir(&capi)
        .map_err(|_| "no ONNX Runtime: pip install onnxruntime==1.31.1, or set ORT_DYLIB_PATH")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libonnxruntime.so."))
        })
        .ok_or_else(|| format!("no libonnxruntime.so in {}", capi.display()).into())
}

/// What the model's metadata says about its input.
struct Preprocessing {
    channels: usize,
    height: u32,
    width: u32,
    mean: Vec<f32>,
    std: Vec<f32>,
}

impl Preprocessing {
    fn from_session(session: &Session) -> Result<Self> {
        let meta = session.metadata()?;
        let get = |key: &str| meta.custom(key).ok_or(format!("metadata has no `{key}`"));
        let floats = |key: &str| -> Result<Vec<f32>> {
            Ok(get(key)?
                .split(',')
                .map(|v| v.trim().parse::<f32>())
                .collect::<std::result::Result<_, _>>()?)
        };
        let channels: usize = get("input_channels")?.parse()?;
        let (mean, std) = (floats("mean")?, floats("std")?);
        if mean.len() != channels || std.len() != channels {
            return Err(format!("metadata: mean/std do not have {channels} values").into());
        }
        Ok(Self {
            channels,
            // A model exported for any size has no input_height: use 32 here (any works).
            height: get("input_height").map_or(Ok(32), |v| v.parse())?,
            width: get("input_width").map_or(Ok(32), |v| v.parse())?,
            mean,
            std,
        })
    }

    /// One image as `channels × height × width` floats.
    fn apply(&self, path: &str) -> Result<Vec<f32>> {
        let img = image::open(path).map_err(|e| format!("{path}: {e}"))?;
        // Scale to cover the input size, then crop the centre — the rule `simclr embed`
        // follows (torchvision's Resize(size) + CenterCrop(size) for square inputs).
        let (h0, w0) = (img.height(), img.width());
        let (h, w) = if (h0, w0) == (self.height, self.width) {
            (h0, w0)
        } else if self.height == self.width {
            // The shorter side to the size, the longer one scaled and truncated.
            let s = f64::from(self.height);
            if h0 <= w0 {
                (
                    self.height,
                    ((s * f64::from(w0) / f64::from(h0)) as u32).max(1),
                )
            } else {
                (
                    ((s * f64::from(h0) / f64::from(w0)) as u32).max(1),
                    self.width,
                )
            }
        } else {
            let s = f64::max(
                f64::from(self.height) / f64::from(h0),
                f64::from(self.width) / f64::from(w0),
            );
            (
                ((f64::from(h0) * s).ceil() as u32).max(self.height),
                ((f64::from(w0) * s).ceil() as u32).max(self.width),
            )
        };
        let img = if (h, w) == (h0, w0) {
            img
        } else {
            img.resize_exact(w, h, image::imageops::FilterType::Triangle)
        };
        let top = ((f64::from(h) - f64::from(self.height)) / 2.0).round() as u32;
        let left = ((f64::from(w) - f64::from(self.width)) / 2.0).round() as u32;
        let img = img.crop_imm(left, top, self.width, self.height);
        let pixels: Vec<u8> = match self.channels {
            1 => img.into_luma8().into_raw(),
            _ => img.into_rgb8().into_raw(),
        };
        let plane = (self.height * self.width) as usize;
        let mut chw = vec![0.0; self.channels * plane];
        for (i, v) in pixels.iter().enumerate() {
            let (pixel, c) = (i / self.channels, i % self.channels);
            chw[c * plane + pixel] = (f32::from(*v) / 255.0 - self.mean[c]) / self.std[c];
        }
        Ok(chw)
    }
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let model = args
        .next()
        .ok_or("usage: serve_onnx MODEL.onnx IMAGE [IMAGE...]")?;
    let images: Vec<String> = args.collect();
    if images.is_empty() {
        return Err("usage: serve_onnx MODEL.onnx IMAGE [IMAGE...]".into());
    }

    let environment = ort::init_from(onnxruntime_library()?)?
        .with_name("serve_onnx")
        .build()?;
    let mut session = Session::builder(&environment)?
        .with_intra_threads(2)
        .map_err(|e| e.to_string())?
        .commit_from_file(&model)?;
    let pre = Preprocessing::from_session(&session)?;

    // One batch of every image: [n, C, H, W].
    let mut batch = Vec::new();
    for path in &images {
        batch.extend(pre.apply(path)?);
    }
    let shape = [
        images.len() as i64,
        pre.channels as i64,
        i64::from(pre.height),
        i64::from(pre.width),
    ];
    let input = Tensor::from_array((shape, batch))?;
    let outputs = session.run(ort::inputs!["images" => input])?;
    let (out_shape, features) = outputs["features"].try_extract_tensor::<f32>()?;
    let d = (out_shape[1] as usize).max(1);

    let rows: Vec<&[f32]> = features.chunks(d).collect();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    for (path, row) in images.iter().zip(&rows) {
        println!("{path}: {d} features, norm {:.4}", norm(row));
    }
    println!("cosine similarities:");
    for a in &rows {
        let line: Vec<String> = rows
            .iter()
            .map(|b| {
                let dot: f32 = a.iter().zip(*b).map(|(x, y)| x * y).sum();
                format!("{:+.3}", dot / (norm(a) * norm(b)).max(1e-12))
            })
            .collect();
        println!("  {}", line.join(" "));
    }
    Ok(())
}
