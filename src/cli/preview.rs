//! `simclr preview`: a PNG grid, one row per sample: original, t(x), t'(x).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use simclr::augment::{BUILTIN_TRANSFORMS, Img, Shape, Transforms};
use simclr::config::graph::LoadOptions;
use simclr::config::{Graph, Registry};
use simclr::core::rng::{Rng, stream};
use simclr::core::stage::Signals;
use simclr::core::{Instance, Message, StageContext};

/// Cells are upscaled (nearest) to at least this many pixels so small views stay visible.
const MIN_CELL: usize = 96;
const GAP: usize = 4;

/// Arguments of `simclr preview`.
#[derive(clap::Args)]
pub struct PreviewArgs {
    /// Definition file (with a `views` stage fed by a source).
    file: PathBuf,
    /// Output PNG.
    #[arg(long, default_value = "grid.png")]
    out: PathBuf,
    /// Samples (rows).
    #[arg(long, default_value_t = 16)]
    n: usize,
}

impl PreviewArgs {
    /// Validate the definition and draw its views.
    pub fn run(&self, registry: &Registry) -> Result<ExitCode> {
        let graph = match simclr::config::load_file(&self.file, registry, &LoadOptions::default()) {
            Ok(graph) => graph,
            Err(diagnostics) => {
                eprintln!("{diagnostics}");
                return Ok(ExitCode::from(super::EXIT_INVALID));
            }
        };
        let (w, h) = preview(&graph, registry, &self.out, self.n.max(1))?;
        println!(
            "wrote {} ({w}x{h} px): one row per sample, columns original, t, t'",
            self.out.display()
        );
        Ok(ExitCode::SUCCESS)
    }
}

/// Draw the grid for the first `n` samples of `graph`'s `views` stage and write it to `out`.
fn preview(graph: &Graph, registry: &Registry, out: &Path, n: usize) -> Result<(usize, usize)> {
    let Some(views) = graph.nodes.iter().find(|node| node.kind.name == "views") else {
        bail!(
            "{}: the definition has no `views` stage to preview",
            graph.file.display()
        );
    };
    let source = views
        .inputs
        .first()
        .map(|&e| &graph.nodes[graph.edges[e].from])
        .filter(|node| node.inputs.is_empty())
        .with_context(|| {
            format!(
                "stage `{}`: preview needs a source feeding the views stage directly",
                views.id
            )
        })?;
    let path = format!("stages.{}.params", views.id);
    let transforms = registry
        .extensions()
        .get::<Transforms>()
        .unwrap_or(&BUILTIN_TRANSFORMS);
    let (t, t_prime) = simclr::augment::views::policies(&views.params, &path, transforms)
        .map_err(|e| anyhow::anyhow!("{}: {}", path, e.message))?;
    let Instance::Source(mut src) = source.factory.instance(0) else {
        bail!("stage `{}` is not a source", source.id);
    };
    let mut cx = StageContext::new(
        source.id.as_str(),
        0,
        1,
        graph.seed,
        Vec::new().into(),
        Signals::default(),
    );
    src.on_start(&mut cx)
        .map_err(|e| anyhow::anyhow!("stage `{}`: {e}", source.id))?;
    let mut rows: Vec<[Img; 3]> = Vec::new();
    while rows.len() < n {
        let Some(msg) = src
            .next(&mut cx)
            .map_err(|e| anyhow::anyhow!("stage `{}`: {e}", source.id))?
        else {
            break;
        };
        let Message::Image(image) = msg else {
            bail!("stage `{}` emitted no images", source.id)
        };
        let view = |policy: &simclr::augment::Policy, which: u64| -> Result<Img> {
            let mut img = Img::from_image(&image);
            let mut rng = Rng::for_sample(graph.seed, image.id.epoch, image.id.index, which);
            policy
                .run_for_display(&mut img, &mut rng)
                .map_err(|e| anyhow::anyhow!("sample {}: {e}", image.id.index))?;
            Ok(img)
        };
        rows.push([
            Img::from_image(&image),
            view(&t, stream::VIEW_T)?,
            view(&t_prime, stream::VIEW_T_PRIME)?,
        ]);
    }
    if rows.is_empty() {
        bail!("stage `{}` produced no images", source.id);
    }
    let cell = rows
        .iter()
        .flat_map(|r| r.iter())
        .map(|i| i.shape.height.max(i.shape.width))
        .max()
        .unwrap_or(1);
    let scale = MIN_CELL.div_ceil(cell).max(1);
    let side = cell * scale;
    let (width, height) = (3 * side + 4 * GAP, rows.len() * (side + GAP) + GAP);
    let mut canvas =
        image::RgbImage::from_pixel(width as u32, height as u32, image::Rgb([236, 236, 236]));
    for (r, row) in rows.iter().enumerate() {
        for (c, img) in row.iter().enumerate() {
            draw(
                &mut canvas,
                img,
                GAP + c * (side + GAP),
                GAP + r * (side + GAP),
                side,
                cell,
            );
        }
    }
    canvas
        .save(out)
        .with_context(|| format!("cannot write {}", out.display()))?;
    Ok((width, height))
}

/// Paint `img` into a `side`-pixel cell at (x0, y0), scaled to fit `cell` source pixels.
fn draw(canvas: &mut image::RgbImage, img: &Img, x0: usize, y0: usize, side: usize, cell: usize) {
    let Shape {
        channels,
        height,
        width,
    } = img.shape;
    let hwc = img.to_u8_hwc();
    let scale = side / cell;
    let (ox, oy) = ((side - width * scale) / 2, (side - height * scale) / 2);
    for y in 0..height * scale {
        for x in 0..width * scale {
            let at = ((y / scale) * width + x / scale) * channels;
            let rgb = if channels == 3 {
                [hwc[at], hwc[at + 1], hwc[at + 2]]
            } else {
                [hwc[at]; 3]
            };
            canvas.put_pixel((x0 + ox + x) as u32, (y0 + oy + y) as u32, image::Rgb(rgb));
        }
    }
}
