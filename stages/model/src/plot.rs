//! `loss.png`: the training loss against the step, drawn without a plotting library (a
//! polyline of the raw loss, a moving average over it, axes, and tick labels in a built-in
//! 3×5 pixel font).

use std::path::Path;

use image::{Rgb, RgbImage};

const W: u32 = 800;
const H: u32 = 420;
const LEFT: i64 = 70;
const RIGHT: i64 = 20;
const TOP: i64 = 30;
const BOTTOM: i64 = 50;
const SCALE: i64 = 2;

/// Glyphs of the 3×5 font, rows top to bottom, 3 bits each (MSB left).
fn glyph(c: char) -> Option<[u8; 5]> {
    Some(match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        'e' => [7, 5, 7, 4, 7],
        'l' => [4, 4, 4, 4, 7],
        'o' => [0, 7, 5, 5, 7],
        's' => [7, 4, 7, 1, 7],
        't' => [4, 7, 4, 4, 7],
        'p' => [7, 5, 7, 4, 4],
        'k' => [5, 5, 6, 5, 5],
        'n' => [0, 6, 5, 5, 5],
        ' ' => [0, 0, 0, 0, 0],
        _ => return None,
    })
}

fn put(img: &mut RgbImage, x: i64, y: i64, color: Rgb<u8>) {
    if x >= 0 && y >= 0 && (x as u32) < img.width() && (y as u32) < img.height() {
        img.put_pixel(x as u32, y as u32, color);
    }
}

fn text(img: &mut RgbImage, x: i64, y: i64, s: &str, color: Rgb<u8>) {
    let mut cx = x;
    for c in s.chars() {
        if let Some(rows) = glyph(c) {
            for (r, bits) in rows.iter().enumerate() {
                for col in 0..3 {
                    if bits & (4 >> col) != 0 {
                        for dy in 0..SCALE {
                            for dx in 0..SCALE {
                                put(img, cx + col * SCALE + dx, y + r as i64 * SCALE + dy, color);
                            }
                        }
                    }
                }
            }
        }
        cx += 4 * SCALE;
    }
}

fn text_width(s: &str) -> i64 {
    s.chars().count() as i64 * 4 * SCALE
}

fn line(img: &mut RgbImage, (x0, y0): (i64, i64), (x1, y1): (i64, i64), color: Rgb<u8>) {
    let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
    let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
    let (mut x, mut y, mut err) = (x0, y0, dx + dy);
    loop {
        put(img, x, y, color);
        if x == x1 && y == y1 {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x += sx;
        }
        if e2 <= dx {
            err += dx;
            y += sy;
        }
    }
}

/// Three significant figures, short.
fn label(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let digits = (2 - v.abs().log10().floor() as i32).clamp(0, 6) as usize;
    format!("{v:.digits$}")
}

/// Draw `(step, loss)` points to a PNG at `path`: raw values and a moving average.
///
/// # Errors
/// The file cannot be written.
pub fn loss_curve(points: &[(u64, f64)], path: &Path) -> Result<(), image::ImageError> {
    curve(points, path, "loss", true)
}

/// Draw `(step, value)` points to a PNG at `path`, the y axis named `y_label` (digits, `.`,
/// `-`, space and the letters of "loss", "step", "knn top"); with `smooth`, a moving average
/// over the raw line, otherwise the points joined and marked.
///
/// # Errors
/// The file cannot be written.
pub fn curve(
    points: &[(u64, f64)],
    path: &Path,
    y_label: &str,
    smooth: bool,
) -> Result<(), image::ImageError> {
    let mut img = RgbImage::from_pixel(W, H, Rgb([255, 255, 255]));
    let (x0, x1) = (LEFT, i64::from(W) - RIGHT);
    let (y0, y1) = (TOP, i64::from(H) - BOTTOM);
    let finite: Vec<(u64, f64)> = points.iter().copied().filter(|p| p.1.is_finite()).collect();
    let axis = Rgb([60, 60, 60]);
    let grid = Rgb([225, 225, 225]);
    if let (Some(first), Some(last)) = (finite.first(), finite.last()) {
        let (smin, smax) = (first.0 as f64, (last.0 as f64).max(first.0 as f64 + 1.0));
        let mut lo = finite.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        let mut hi = finite.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
        if hi - lo < 1e-9 {
            lo -= 0.5;
            hi += 0.5;
        }
        let pad = 0.05 * (hi - lo);
        let (lo, hi) = (lo - pad, hi + pad);
        let px = |s: f64| x0 + ((s - smin) / (smax - smin) * (x1 - x0) as f64).round() as i64;
        let py = |v: f64| y1 - ((v - lo) / (hi - lo) * (y1 - y0) as f64).round() as i64;
        for i in 0..=4 {
            let v = lo + (hi - lo) * f64::from(i) / 4.0;
            let y = py(v);
            line(&mut img, (x0, y), (x1, y), grid);
            let l = label(v);
            text(&mut img, x0 - 8 - text_width(&l), y - 5, &l, axis);
        }
        for i in 0..=4 {
            let s = smin + (smax - smin) * f64::from(i) / 4.0;
            let x = px(s);
            line(&mut img, (x, y0), (x, y1), grid);
            let l = format!("{}", s.round() as u64);
            text(&mut img, x - text_width(&l) / 2, y1 + 8, &l, axis);
        }
        let raw = Rgb([160, 190, 230]);
        if !smooth {
            let strong = Rgb([20, 70, 160]);
            for w in finite.windows(2) {
                let (a, b) = (
                    (px(w[0].0 as f64), py(w[0].1)),
                    (px(w[1].0 as f64), py(w[1].1)),
                );
                line(&mut img, a, b, strong);
                line(&mut img, (a.0, a.1 + 1), (b.0, b.1 + 1), strong);
            }
            for p in &finite {
                let (x, y) = (px(p.0 as f64), py(p.1));
                for dx in -2..=2 {
                    for dy in -2..=2 {
                        put(&mut img, x + dx, y + dy, strong);
                    }
                }
            }
        }
        for w in finite.windows(2).filter(|_| smooth) {
            line(
                &mut img,
                (px(w[0].0 as f64), py(w[0].1)),
                (px(w[1].0 as f64), py(w[1].1)),
                raw,
            );
        }
        // Moving average over a window of ~2% of the steps.
        let k = (finite.len() / 50).max(1);
        let averaged: Vec<(f64, f64)> = (0..finite.len())
            .filter(|_| smooth)
            .map(|i| {
                let from = i.saturating_sub(k);
                let to = (i + k + 1).min(finite.len());
                let mean = finite[from..to].iter().map(|p| p.1).sum::<f64>() / (to - from) as f64;
                (finite[i].0 as f64, mean)
            })
            .collect();
        let strong = Rgb([20, 70, 160]);
        for w in averaged.windows(2) {
            let (a, b) = ((px(w[0].0), py(w[0].1)), (px(w[1].0), py(w[1].1)));
            line(&mut img, a, b, strong);
            line(&mut img, (a.0, a.1 + 1), (b.0, b.1 + 1), strong);
        }
    }
    line(&mut img, (x0, y0), (x0, y1), axis);
    line(&mut img, (x0, y1), (x1, y1), axis);
    text(
        &mut img,
        (x0 + x1) / 2 - text_width("step") / 2,
        y1 + 28,
        "step",
        axis,
    );
    text(&mut img, 8, TOP - 22, y_label, axis);
    img.save(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_falling_curve() {
        let dir = std::env::temp_dir().join(format!("simclr-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("loss.png");
        let points: Vec<(u64, f64)> = (0..100).map(|s| (s, 5.0 - 0.03 * s as f64)).collect();
        loss_curve(&points, &path).expect("drawn");
        let img = image::open(&path).expect("png").to_rgb8();
        assert_eq!((img.width(), img.height()), (W, H));
        // The curve starts high on the left and ends low on the right: find the dark-blue
        // pixels in the first and last columns of the plot area.
        let blue_rows = |x: u32| -> Vec<u32> {
            (0..H)
                .filter(|&y| *img.get_pixel(x, y) == Rgb([20, 70, 160]))
                .collect()
        };
        let (left, right) = (blue_rows(LEFT as u32 + 2), blue_rows(W - RIGHT as u32 - 2));
        assert!(!left.is_empty() && !right.is_empty());
        assert!(left[0] + 200 < right[0], "falling: {left:?} vs {right:?}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
