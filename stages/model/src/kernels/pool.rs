//! The ImageNet stem's 3×3 stride-2 max-pool with padding 1 (`nn.MaxPool2d(3, 2, 1)`) as one
//! pass forward and one backward. Composed from candle's operations (padding, two maxima per
//! axis, transposes) it cost a width-64 step on 28×28 images about 230 ms of 1 750.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Output size of one axis: `⌈n / 2⌉`.
fn out(n: usize) -> usize {
    n.div_ceil(2)
}

/// The input rows (or columns) of output row (column) `i` on an axis of `n`: `2i-1 ..= 2i+1`,
/// clipped to the plane (the padding never wins).
fn span(i: usize, n: usize) -> std::ops::Range<usize> {
    (2 * i).saturating_sub(1)..(2 * i + 2).min(n)
}

/// For output `(i, j)` of an `h×w` plane: the flat index of its window's maximum, the first in
/// row-major order among equal values (PyTorch's choice); a NaN wins and stays.
fn argmax(plane: &[f32], (h, w): (usize, usize), (i, j): (usize, usize)) -> usize {
    let (rows, cols) = (span(i, h), span(j, w));
    let mut best = rows.start * w + cols.start;
    for r in rows {
        for c in cols.clone() {
            let at = r * w + c;
            let (v, b) = (plane[at], plane[best]);
            if v > b || (v.is_nan() && !b.is_nan()) {
                best = at;
            }
        }
    }
    best
}

/// The larger of two values, NaN if either is (a select the compiler vectorises).
#[inline(always)]
fn max_nan(a: f32, b: f32) -> f32 {
    if a > b || a.is_nan() { a } else { b }
}

/// Pool one `h×w` plane into `y` (`⌈h/2⌉×⌈w/2⌉`): per output row, the maximum over its (up to)
/// three input rows column by column into `rows`, then over each window's (up to) three columns.
fn pool_plane(x: &[f32], (h, w): (usize, usize), y: &mut [f32], rows: &mut [f32]) {
    let wo = out(w);
    for (i, y) in y.chunks_exact_mut(wo).enumerate() {
        let rs = span(i, h);
        rows.copy_from_slice(&x[rs.start * w..(rs.start + 1) * w]);
        for r in rs.start + 1..rs.end {
            for (m, &v) in rows.iter_mut().zip(&x[r * w..(r + 1) * w]) {
                *m = max_nan(*m, v);
            }
        }
        y[0] = if w > 1 {
            max_nan(rows[0], rows[1])
        } else {
            rows[0]
        };
        for (j, y) in y.iter_mut().enumerate().skip(1) {
            let c = 2 * j - 1;
            let mut m = max_nan(rows[c], rows[c + 1]);
            if c + 2 < w {
                m = max_nan(m, rows[c + 2]);
            }
            *y = m;
        }
    }
}

/// The flat index of output `(i, j)`'s maximum given its value `v`: the first window element
/// equal to it in row-major order (a NaN: the first NaN) — `argmax`'s answer, found with one
/// comparison per element and an early exit.
fn find_max(plane: &[f32], (h, w): (usize, usize), (i, j): (usize, usize), v: f32) -> usize {
    for r in span(i, h) {
        for c in span(j, w) {
            let x = plane[r * w + c];
            if x == v || (x.is_nan() && v.is_nan()) {
                return r * w + c;
            }
        }
    }
    // `v` did not come from this window (not our forward's output): search it.
    argmax(plane, (h, w), (i, j))
}

/// Planes per parallel task: about 16 K input values.
fn planes_per_task(h: usize, w: usize) -> usize {
    (16_384 / (h * w)).max(1)
}

fn dims(l: &Layout) -> Result<(usize, usize, usize)> {
    match *l.dims() {
        [n, c, h, w] if h > 0 && w > 0 => Ok((n * c, h, w)),
        ref d => candle_core::bail!("max_pool_3x3_s2: expected [N, C, H, W], got {d:?}"),
    }
}

/// The forward op.
#[derive(Clone, Copy, Debug)]
pub struct MaxPool3x3S2;

impl CustomOp1 for MaxPool3x3S2 {
    fn name(&self) -> &'static str {
        "simclr-max-pool-3x3-s2"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let _timer = super::OpTimer::new("max-pool", l.dims());
        let (planes, h, w) = dims(l)?;
        let x = super::f32_slice("max_pool_3x3_s2", s, l, "input")?;
        let (ho, wo) = (out(h), out(w));
        let mut y = super::zeros(planes * ho * wo);
        let k = planes_per_task(h, w);
        y.par_chunks_mut(k * ho * wo)
            .zip(x.par_chunks(k * h * w))
            .for_each(|(y, x)| {
                let mut rows = vec![0.0; w];
                for (y, x) in y.chunks_exact_mut(ho * wo).zip(x.chunks_exact(h * w)) {
                    pool_plane(x, (h, w), y, &mut rows);
                }
            });
        let mut shape = l.dims().to_vec();
        shape[2] = ho;
        shape[3] = wo;
        Ok((CpuStorage::F32(y), Shape::from(shape)))
    }

    fn bwd(&self, x: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op3_no_bwd(
            &y.contiguous()?,
            &dy.contiguous()?,
            &Backward,
        )?))
    }
}

/// `dx` from the input, the forward's output and its gradient: each output's gradient added to
/// its window's first maximum.
#[derive(Clone, Copy, Debug)]
struct Backward;

impl CustomOp3 for Backward {
    fn name(&self) -> &'static str {
        "simclr-max-pool-3x3-s2-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _timer = super::OpTimer::new("max-pool bwd", l1.dims());
        let (planes, h, w) = dims(l1)?;
        let (ho, wo) = (out(h), out(w));
        for (l, what) in [(l2, "output"), (l3, "gradient")] {
            if dims(l)? != (planes, ho, wo) {
                candle_core::bail!(
                    "max_pool_3x3_s2 backward: {what} {:?} for input {:?}",
                    l.dims(),
                    l1.dims()
                );
            }
        }
        let x = super::f32_slice("max_pool_3x3_s2", s1, l1, "input")?;
        let y = super::f32_slice("max_pool_3x3_s2", s2, l2, "output")?;
        let dy = super::f32_slice("max_pool_3x3_s2", s3, l3, "gradient")?;
        let mut dx = super::zeros(x.len());
        let (k, m) = (planes_per_task(h, w), ho * wo);
        dx.par_chunks_mut(k * h * w)
            .zip(x.par_chunks(k * h * w))
            .zip(y.par_chunks(k * m).zip(dy.par_chunks(k * m)))
            .for_each(|((dx, x), (y, dy))| {
                let planes = dx.chunks_exact_mut(h * w).zip(x.chunks_exact(h * w));
                for ((dx, x), (y, dy)) in planes.zip(y.chunks_exact(m).zip(dy.chunks_exact(m))) {
                    for i in 0..ho {
                        for j in 0..wo {
                            let o = i * wo + j;
                            dx[find_max(x, (h, w), (i, j), y[o])] += dy[o];
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(dx), Shape::from(l1.dims())))
    }
}

/// Our kernel applies: f32 on the CPU, kernels enabled.
pub(crate) fn applies(x: &Tensor) -> bool {
    super::enabled() && x.device().is_cpu() && x.dtype() == candle_core::DType::F32
}
