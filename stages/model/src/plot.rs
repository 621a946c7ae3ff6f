//! `loss.png` and `knn.png`: a series against the training step, drawn with `plotters` (title,
//! axis names, tick labels, legend) in DejaVu Sans, embedded (assets/DejaVuSans.ttf, its
//! licence beside it), so the pictures look the same on every machine.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::FontStyle;
use plotters::style::text_anchor::{HPos, VPos};

/// Picture size, pixels.
pub const W: u32 = 900;
/// Picture height.
pub const H: u32 = 480;

/// The colour of the main series (the moving average, or the points).
pub const STRONG: RGBColor = RGBColor(20, 70, 160);
/// The colour of the raw per-step series behind a moving average.
pub const RAW: RGBColor = RGBColor(160, 190, 230);

const FONT: &str = "sans-serif";
static DEJAVU: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// A picture that could not be drawn or written.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PlotError(String);

fn err(e: impl std::fmt::Display) -> PlotError {
    PlotError(e.to_string())
}

/// Register the embedded font once per process.
fn font() -> Result<(), PlotError> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font(FONT, FontStyle::Normal, DEJAVU)
                .map_err(|_| "the embedded DejaVu Sans font does not load".to_owned())
        })
        .clone()
        .map_err(PlotError)
}

/// Draw `(step, loss)` points to a PNG at `path`: raw values and a moving average.
///
/// # Errors
/// The file cannot be written.
pub fn loss_curve(points: &[(u64, f64)], path: &Path) -> Result<(), PlotError> {
    curve(points, path, "loss", true)
}

/// Draw `(step, value)` points to a PNG at `path`, the y axis named `y_label`; with `smooth`,
/// a moving average over the raw line, otherwise the points joined and marked.
///
/// # Errors
/// The file cannot be written, or the font does not load.
pub fn curve(
    points: &[(u64, f64)],
    path: &Path,
    y_label: &str,
    smooth: bool,
) -> Result<(), PlotError> {
    font()?;
    let finite: Vec<(f64, f64)> = points
        .iter()
        .filter(|p| p.1.is_finite())
        .map(|&(s, v)| (s as f64, v))
        .collect();
    let mut buf = vec![255u8; (W * H * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let (smin, smax) = match (finite.first(), finite.last()) {
            (Some(a), Some(b)) => (a.0, b.0.max(a.0 + 1.0)),
            _ => (0.0, 1.0),
        };
        let mut lo = finite.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        let mut hi = finite.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
        if !(lo.is_finite() && hi.is_finite()) {
            (lo, hi) = (0.0, 1.0);
        }
        let nonnegative = lo >= 0.0;
        if hi - lo < 1e-9 {
            let d = (0.05 * lo.abs()).max(0.01);
            (lo, hi) = (lo - d, hi + d);
        }
        let pad = 0.05 * (hi - lo);
        // A non-negative series (a loss, an accuracy) keeps a non-negative axis.
        let bottom = if nonnegative {
            (lo - pad).max(0.0)
        } else {
            lo - pad
        };
        let title = if smooth {
            format!("Training {y_label}, steps {}–{}", smin, smax)
        } else {
            format!("{y_label} during training")
        };
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 24))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d(smin..smax, bottom..(hi + pad))
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .x_labels(((smax - smin) as usize + 1).min(10))
            .x_label_formatter(&|x| format!("{}", x.round() as i64))
            .y_desc(y_label)
            .label_style((FONT, 15))
            .axis_desc_style((FONT, 17))
            .light_line_style(RGBColor(238, 238, 238))
            .bold_line_style(RGBColor(215, 215, 215))
            .draw()
            .map_err(err)?;
        if finite.is_empty() {
            root.draw(&Text::new(
                "no finite values to draw",
                (W as i32 / 2 - 110, H as i32 / 2),
                (FONT, 20),
            ))
            .map_err(err)?;
        } else if smooth {
            // Moving average over a window of about 2% of the steps on each side.
            let k = (finite.len() / 50).max(1);
            let averaged: Vec<(f64, f64)> = (0..finite.len())
                .map(|i| {
                    let (from, to) = (i.saturating_sub(k), (i + k + 1).min(finite.len()));
                    let mean =
                        finite[from..to].iter().map(|p| p.1).sum::<f64>() / (to - from) as f64;
                    (finite[i].0, mean)
                })
                .collect();
            chart
                .draw_series(LineSeries::new(finite.iter().copied(), RAW.stroke_width(1)))
                .map_err(err)?
                .label("per step")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], RAW.stroke_width(2)));
            chart
                .draw_series(LineSeries::new(averaged, STRONG.stroke_width(3)))
                .map_err(err)?
                .label(format!("moving average ({} steps)", 2 * k + 1))
                .legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], STRONG.stroke_width(3))
                });
        } else {
            chart
                .draw_series(LineSeries::new(
                    finite.iter().copied(),
                    STRONG.stroke_width(2),
                ))
                .map_err(err)?
                .label(y_label.to_owned())
                .legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], STRONG.stroke_width(2))
                });
            chart
                .draw_series(finite.iter().map(|&p| Circle::new(p, 4, STRONG.filled())))
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .label_font((FONT, 15))
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    save(buf, (W, H), path)
}

/// Write an RGB buffer of `w`×`h` pixels as a PNG.
fn save(buf: Vec<u8>, (w, h): (u32, u32), path: &Path) -> Result<(), PlotError> {
    let img = image::RgbImage::from_raw(w, h, buf)
        .ok_or_else(|| PlotError("the picture's buffer has the wrong size".into()))?;
    img.save(path)
        .map_err(|e| PlotError(format!("cannot write {}: {e}", path.display())))
}

/// A grid of values to draw as a heatmap: `values[r][c]` for row `rows[r]`, column `cols[c]`
/// (`None`: not measured). The SimCLR paper's Figure 5 layout is rows = first transformation,
/// columns = second, the diagonal one transformation alone.
#[derive(Clone, Debug)]
pub struct Grid<'a> {
    /// Picture title.
    pub title: &'a str,
    /// What the rows are (the vertical axis's name).
    pub row_axis: &'a str,
    /// What the columns are.
    pub col_axis: &'a str,
    /// Row names, top to bottom.
    pub rows: &'a [String],
    /// Column names, left to right.
    pub cols: &'a [String],
    /// The values, row-major.
    pub values: &'a [Vec<Option<f64>>],
    /// What a value is (the colour bar's name), e.g. `knn top-1`.
    pub metric: &'a str,
}

/// Blues from light (low) to dark (high), `t` in [0, 1].
fn blues(t: f64) -> RGBColor {
    let t = t.clamp(0.0, 1.0);
    let lerp = |a: f64, b: f64| (a + (b - a) * t).round() as u8;
    RGBColor(lerp(239.0, 8.0), lerp(243.0, 48.0), lerp(255.0, 107.0))
}

/// Draw `grid` as a heatmap PNG at `path`: one coloured cell per value with the value written
/// in it (three decimals), row and column names, axis names, a colour bar.
///
/// # Errors
/// Rows of the wrong length, the font, or the file.
pub fn heatmap(grid: &Grid<'_>, path: &Path) -> Result<(), PlotError> {
    font()?;
    let (nr, nc) = (grid.rows.len(), grid.cols.len());
    if nr == 0 || nc == 0 || grid.values.len() != nr || grid.values.iter().any(|r| r.len() != nc) {
        return Err(PlotError(format!(
            "a heatmap of {nr} rows and {nc} columns needs {nr} rows of {nc} values"
        )));
    }
    let cell = 90u32;
    let (left, top, right, bottom) = (190u32, 110u32, 150u32, 30u32);
    let (w, h) = (
        left + nc as u32 * cell + right,
        top + nr as u32 * cell + bottom,
    );
    let present: Vec<f64> = grid.values.iter().flatten().flatten().copied().collect();
    let lo = present.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = present.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let span = if hi > lo { hi - lo } else { 1.0 };
    let scale = |v: f64| if hi > lo { (v - lo) / span } else { 0.5 };
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let centred = |size: u32| {
            TextStyle::from((FONT, size).into_font()).pos(plotters::style::text_anchor::Pos::new(
                HPos::Center,
                VPos::Center,
            ))
        };
        root.draw(&Text::new(grid.title, ((w / 2) as i32, 24), centred(24)))
            .map_err(err)?;
        root.draw(&Text::new(
            grid.col_axis,
            ((left + nc as u32 * cell / 2) as i32, 58),
            centred(17),
        ))
        .map_err(err)?;
        for (c, name) in grid.cols.iter().enumerate() {
            let x = (left + c as u32 * cell + cell / 2) as i32;
            root.draw(&Text::new(
                name.as_str(),
                (x, (top - 18) as i32),
                centred(15),
            ))
            .map_err(err)?;
        }
        let right_aligned = TextStyle::from((FONT, 15).into_font()).pos(
            plotters::style::text_anchor::Pos::new(HPos::Right, VPos::Center),
        );
        for (r, name) in grid.rows.iter().enumerate() {
            let y = (top + r as u32 * cell + cell / 2) as i32;
            root.draw(&Text::new(
                name.as_str(),
                ((left - 12) as i32, y),
                right_aligned.clone(),
            ))
            .map_err(err)?;
        }
        root.draw(&Text::new(
            grid.row_axis,
            (20, (top - 18) as i32),
            TextStyle::from((FONT, 17).into_font()),
        ))
        .map_err(err)?;
        for (r, row) in grid.values.iter().enumerate() {
            for (c, v) in row.iter().enumerate() {
                let (x0, y0) = (
                    (left + c as u32 * cell) as i32,
                    (top + r as u32 * cell) as i32,
                );
                let (x1, y1) = (x0 + cell as i32 - 2, y0 + cell as i32 - 2);
                let (fill, label, ink) = match v {
                    Some(v) => {
                        let t = scale(*v);
                        let ink = if t > 0.55 { WHITE } else { BLACK };
                        (blues(t), format!("{v:.3}"), ink)
                    }
                    None => (
                        RGBColor(225, 225, 225),
                        "–".to_owned(),
                        RGBColor(90, 90, 90),
                    ),
                };
                root.draw(&Rectangle::new([(x0, y0), (x1, y1)], fill.filled()))
                    .map_err(err)?;
                root.draw(&Text::new(
                    label,
                    ((x0 + x1) / 2, (y0 + y1) / 2),
                    centred(18).color(&ink),
                ))
                .map_err(err)?;
            }
        }
        // Colour bar: low at the bottom, high at the top.
        let (bx, by0, by1) = (
            (left + nc as u32 * cell + 30) as i32,
            top as i32,
            (top + nr as u32 * cell) as i32 - 2,
        );
        for y in by0..=by1 {
            let t = f64::from(by1 - y) / f64::from((by1 - by0).max(1));
            root.draw(&Rectangle::new(
                [(bx, y), (bx + 18, y + 1)],
                blues(t).filled(),
            ))
            .map_err(err)?;
        }
        let small = TextStyle::from((FONT, 14).into_font()).pos(
            plotters::style::text_anchor::Pos::new(HPos::Left, VPos::Center),
        );
        for (y, v) in [(by0, hi), (by1, lo)] {
            let text = if v.is_finite() {
                format!("{v:.3}")
            } else {
                "–".into()
            };
            root.draw(&Text::new(text, (bx + 24, y), small.clone()))
                .map_err(err)?;
        }
        root.draw(&Text::new(
            grid.metric,
            (bx - 4, by0 - 22),
            TextStyle::from((FONT, 15).into_font()),
        ))
        .map_err(err)?;
        root.present().map_err(err)?;
    }
    save(buf, (w, h), path)
}

/// Values to draw as horizontal bars, one per name (`None`: not measured), in the given order.
#[derive(Clone, Debug)]
pub struct Bars<'a> {
    /// The picture's title.
    pub title: &'a str,
    /// What the names are (the axis of the names).
    pub axis: &'a str,
    /// One name per bar, top to bottom.
    pub names: &'a [String],
    /// One value per bar.
    pub values: &'a [Option<f64>],
    /// What the values are (the value axis).
    pub metric: &'a str,
}

/// Draw `bars` to a PNG at `path`: one bar per name from 0 to its value, the value written at
/// its end, the best (highest) bar dark and the others light, unmeasured ones marked.
///
/// # Errors
/// Names and values of different lengths, the font, or the file.
pub fn bars(bars: &Bars<'_>, path: &Path) -> Result<(), PlotError> {
    font()?;
    let n = bars.names.len();
    if n == 0 || bars.values.len() != n {
        return Err(PlotError(format!(
            "{} names and {} values: a bar chart needs one value per name",
            n,
            bars.values.len()
        )));
    }
    let row = 34u32;
    let longest = bars
        .names
        .iter()
        .map(|s| s.chars().count())
        .max()
        .unwrap_or(0) as u32;
    let left = (longest * 9 + 24).clamp(120, 520);
    let (top, bottom, width) = (84u32, 56u32, 560u32);
    let (w, h) = (left + width + 90, top + n as u32 * row + bottom);
    let hi = bars
        .values
        .iter()
        .flatten()
        .copied()
        .filter(|v| v.is_finite())
        .fold(f64::NEG_INFINITY, f64::max);
    let axis_max = if hi.is_finite() && hi > 0.0 {
        nice_ceiling(hi)
    } else {
        1.0
    };
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let at = |hp: HPos, size: u32| {
            TextStyle::from((FONT, size).into_font())
                .pos(plotters::style::text_anchor::Pos::new(hp, VPos::Center))
        };
        root.draw(&Text::new(
            bars.title,
            ((w / 2) as i32, 24),
            at(HPos::Center, 22),
        ))
        .map_err(err)?;
        root.draw(&Text::new(bars.axis, (12, 60), at(HPos::Left, 16)))
            .map_err(err)?;
        let x_of =
            |v: f64| (left as f64 + (v / axis_max).clamp(0.0, 1.0) * f64::from(width)) as i32;
        // Grid lines and ticks at fifths of the axis.
        let base_y = (top + n as u32 * row) as i32;
        for i in 0..=5 {
            let v = axis_max * f64::from(i) / 5.0;
            let x = x_of(v);
            root.draw(&PathElement::new(
                vec![(x, top as i32 - 6), (x, base_y)],
                RGBColor(225, 225, 225),
            ))
            .map_err(err)?;
            root.draw(&Text::new(
                format!("{v:.2}"),
                (x, base_y + 14),
                at(HPos::Center, 14),
            ))
            .map_err(err)?;
        }
        root.draw(&Text::new(
            bars.metric,
            ((left + width / 2) as i32, base_y + 38),
            at(HPos::Center, 16),
        ))
        .map_err(err)?;
        for (i, (name, v)) in bars.names.iter().zip(bars.values).enumerate() {
            let y0 = (top + i as u32 * row) as i32 + 4;
            let y1 = y0 + row as i32 - 8;
            root.draw(&Text::new(
                name.as_str(),
                (left as i32 - 10, (y0 + y1) / 2),
                at(HPos::Right, 15),
            ))
            .map_err(err)?;
            match v.filter(|v| v.is_finite()) {
                Some(v) => {
                    let best = (v - hi).abs() < 1e-12;
                    let fill = if best { STRONG } else { RAW };
                    root.draw(&Rectangle::new(
                        [(left as i32, y0), (x_of(v), y1)],
                        fill.filled(),
                    ))
                    .map_err(err)?;
                    root.draw(&Text::new(
                        format!("{v:.3}"),
                        (x_of(v) + 6, (y0 + y1) / 2),
                        at(HPos::Left, 15),
                    ))
                    .map_err(err)?;
                }
                None => {
                    root.draw(&Text::new(
                        "not measured",
                        (left as i32 + 6, (y0 + y1) / 2),
                        at(HPos::Left, 15).color(&RGBColor(120, 120, 120)),
                    ))
                    .map_err(err)?;
                }
            }
        }
        root.draw(&PathElement::new(
            vec![(left as i32, top as i32 - 6), (left as i32, base_y)],
            BLACK,
        ))
        .map_err(err)?;
        root.present().map_err(err)?;
    }
    save(buf, (w, h), path)
}

/// The smallest of 1, 2, 2.5, 5 times a power of ten at or above `v` (`v` > 0).
/// The colour of a second series (orange), beside [`STRONG`].
pub const SECOND: RGBColor = RGBColor(215, 110, 20);

/// One named series of a [`Lines`] chart.
#[derive(Clone, Debug)]
pub struct Series {
    /// The legend's name.
    pub label: String,
    /// `(x, y)` points in x order; non-finite values are left out.
    pub points: Vec<(f64, f64)>,
}

/// Several series against one x axis (e.g. accuracy against training minutes).
#[derive(Clone, Debug)]
pub struct Lines<'a> {
    /// Picture title.
    pub title: &'a str,
    /// The x axis's name.
    pub x_label: &'a str,
    /// The y axis's name.
    pub y_label: &'a str,
    /// The series, drawn in [`STRONG`], [`SECOND`], then grays.
    pub series: &'a [Series],
}

/// Draw `lines` to a PNG at `path`: every series joined and marked, a legend, both axes named.
///
/// # Errors
/// No series, the font, or the file.
pub fn lines(lines: &Lines<'_>, path: &Path) -> Result<(), PlotError> {
    font()?;
    if lines.series.is_empty() {
        return Err(PlotError("a line chart needs at least one series".into()));
    }
    let finite: Vec<Vec<(f64, f64)>> = lines
        .series
        .iter()
        .map(|s| {
            s.points
                .iter()
                .copied()
                .filter(|p| p.0.is_finite() && p.1.is_finite())
                .collect()
        })
        .collect();
    let all = || finite.iter().flatten();
    let range = |f: fn(&(f64, f64)) -> f64| {
        let lo = all().map(f).fold(f64::INFINITY, f64::min);
        let hi = all().map(f).fold(f64::NEG_INFINITY, f64::max);
        if lo.is_finite() && hi.is_finite() {
            (lo, hi)
        } else {
            (0.0, 1.0)
        }
    };
    let (x0, x1) = range(|p| p.0);
    let (x0, x1) = if x1 - x0 < 1e-9 {
        (x0 - 0.5, x1 + 0.5)
    } else {
        (x0, x1)
    };
    let (mut lo, mut hi) = range(|p| p.1);
    if hi - lo < 1e-9 {
        let d = (0.05 * lo.abs()).max(0.01);
        (lo, hi) = (lo - d, hi + d);
    }
    let pad = 0.08 * (hi - lo);
    let xpad = 0.03 * (x1 - x0);
    let colours = [
        STRONG,
        SECOND,
        RGBColor(90, 90, 90),
        RGBColor(150, 150, 150),
    ];
    let mut buf = vec![255u8; (W * H * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(lines.title, (FONT, 24))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d((x0 - xpad)..(x1 + xpad), (lo - pad)..(hi + pad))
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc(lines.x_label)
            .y_desc(lines.y_label)
            .y_label_formatter(&|y| format!("{y:.3}"))
            .label_style((FONT, 15))
            .axis_desc_style((FONT, 17))
            .light_line_style(RGBColor(238, 238, 238))
            .bold_line_style(RGBColor(215, 215, 215))
            .draw()
            .map_err(err)?;
        for (i, (s, pts)) in lines.series.iter().zip(&finite).enumerate() {
            let c = colours[i.min(colours.len() - 1)];
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
                .map_err(err)?
                .label(s.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(3))
                });
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled())))
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .label_font((FONT, 15))
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    save(buf, (W, H), path)
}

fn nice_ceiling(v: f64) -> f64 {
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|&c| c >= v * (1.0 - 1e-12))
        .unwrap_or(10.0 * p)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rows of column `x` in colour `c`.
    fn rows(img: &image::RgbImage, x: u32, c: RGBColor) -> Vec<u32> {
        (0..img.height())
            .filter(|&y| *img.get_pixel(x, y) == image::Rgb([c.0, c.1, c.2]))
            .collect()
    }

    #[test]
    fn heatmap_cells_are_coloured_by_value_and_labelled() {
        let dir = std::env::temp_dir().join(format!("simclr-heatmap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("heatmap.png");
        let names: Vec<String> = ["crop", "color", "blur"].map(String::from).to_vec();
        let values = vec![
            vec![Some(0.30), Some(0.62), Some(0.41)],
            vec![Some(0.58), Some(0.35), None],
            vec![Some(0.40), Some(0.20), Some(0.25)],
        ];
        let grid = Grid {
            title: "kNN top-1 by transformation pair",
            row_axis: "1st transformation",
            col_axis: "2nd transformation",
            rows: &names,
            cols: &names,
            values: &values,
            metric: "knn top-1",
        };
        heatmap(&grid, &path).expect("drawn");
        let img = image::open(&path).expect("png").to_rgb8();
        // Cell (r, c)'s top-left corner region, clear of its centred text.
        let corner = |r: u32, c: u32| *img.get_pixel(190 + c * 90 + 4, 110 + r * 90 + 4);
        let darkness =
            |p: image::Rgb<u8>| 765 - (u32::from(p[0]) + u32::from(p[1]) + u32::from(p[2]));
        assert!(
            darkness(corner(0, 1)) > darkness(corner(0, 2)),
            "0.62 darker than 0.41"
        );
        assert!(
            darkness(corner(0, 2)) > darkness(corner(2, 1)),
            "0.41 darker than 0.20"
        );
        assert_eq!(
            corner(1, 2),
            image::Rgb([225, 225, 225]),
            "a missing cell is gray"
        );
        // The lowest value is the lightest colour, the highest the darkest.
        assert_eq!(corner(2, 1), image::Rgb([239, 243, 255]));
        assert_eq!(corner(0, 1), image::Rgb([8, 48, 107]));
        let ragged = Grid {
            values: &values[..2],
            ..grid
        };
        assert!(heatmap(&ragged, &path).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn bars_are_as_long_as_their_values_and_the_best_is_dark() {
        let dir = std::env::temp_dir().join(format!("simclr-bars-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("bars.png");
        let names: Vec<String> = ["t=0.1", "t=0.2", "t=0.5"].map(String::from).to_vec();
        let values = [Some(0.40), Some(0.80), None];
        let chart = Bars {
            title: "kNN top-1 by temperature",
            axis: "temperature",
            names: &names,
            values: &values,
            metric: "knn top-1",
        };
        bars(&chart, &path).expect("drawn");
        let img = image::open(&path).expect("png").to_rgb8();
        let length = |c: RGBColor| {
            (0..img.height())
                .map(|y| {
                    (0..img.width())
                        .filter(|&x| *img.get_pixel(x, y) == image::Rgb([c.0, c.1, c.2]))
                        .count()
                })
                .max()
                .unwrap_or(0)
        };
        let (dark, light) = (length(STRONG), length(RAW));
        // 0.8 on an axis to 1.0 is twice as long as 0.4 (a pixel of rounding either way).
        assert!(dark > 400, "the best bar is dark and long: {dark}");
        assert!(
            (dark as i64 - 2 * light as i64).abs() <= 3,
            "dark {dark}, light {light}"
        );
        assert_eq!(nice_ceiling(0.83), 1.0);
        assert_eq!(nice_ceiling(0.183), 0.2);
        assert_eq!(nice_ceiling(3.0), 5.0);
        assert!(
            bars(
                &Bars {
                    values: &values[..2],
                    ..chart
                },
                &path
            )
            .is_err()
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn draws_two_rising_series_in_their_colours() {
        let dir = std::env::temp_dir().join(format!("simclr-lines-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("curve.png");
        let up = |a: f64| Series {
            label: format!("from {a}"),
            points: (0..6)
                .map(|i| (10.0 * f64::from(i), a + 0.02 * f64::from(i)))
                .collect(),
        };
        let series = [up(0.7), up(0.8)];
        let chart = Lines {
            title: "top-1 against training minutes",
            x_label: "minutes",
            y_label: "top-1",
            series: &series,
        };
        lines(&chart, &path).expect("drawn");
        let img = image::open(&path).expect("png").to_rgb8();
        assert_eq!((img.width(), img.height()), (W, H));
        // Each colour rises from left to right, and the second series lies above the first.
        let ends = |c: RGBColor| {
            let xs: Vec<(u32, u32)> = (100..W - 200)
                .filter_map(|x| rows(&img, x, c).first().map(|&y| (x, y)))
                .collect();
            (xs[0], xs[xs.len() - 1])
        };
        let (a0, a1) = ends(STRONG);
        let (b0, b1) = ends(SECOND);
        assert!(
            a1.0 > a0.0 + 400 && a0.1 > a1.1 + 50,
            "first rises: {a0:?} {a1:?}"
        );
        assert!(
            b1.0 > b0.0 + 400 && b0.1 > b1.1 + 50,
            "second rises: {b0:?} {b1:?}"
        );
        assert!(b0.1 + 50 < a0.1, "second above first: {a0:?} {b0:?}");
        assert!(
            lines(
                &Lines {
                    series: &[],
                    ..chart
                },
                &path
            )
            .is_err()
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn draws_a_falling_curve_with_text() {
        let dir = std::env::temp_dir().join(format!("simclr-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("loss.png");
        let points: Vec<(u64, f64)> = (0..100).map(|s| (s, 5.0 - 0.03 * s as f64)).collect();
        loss_curve(&points, &path).expect("drawn");
        let img = image::open(&path).expect("png").to_rgb8();
        assert_eq!((img.width(), img.height()), (W, H));
        // The average starts high on the left of the plot and ends low on the right.
        let strong: Vec<(u32, u32)> = (0..W)
            .filter_map(|x| rows(&img, x, STRONG).first().map(|&y| (x, y)))
            .collect();
        let (first, last) = (strong[0], strong[strong.len() - 1]);
        assert!(last.0 > first.0 + 500, "spans the plot: {first:?} {last:?}");
        assert!(first.1 + 250 < last.1, "falling: {first:?} {last:?}");
        // Text is drawn: dark, anti-aliased pixels (gray levels) in the title band.
        let title_band = (0..40)
            .flat_map(|y| (0..W).map(move |x| (x, y)))
            .filter(|&(x, y)| {
                let p = img.get_pixel(x, y);
                p[0] < 200 && p[0] == p[1] && p[1] == p[2]
            })
            .count();
        assert!(title_band > 200, "title pixels: {title_band}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
