//! The ImageNet stem's 3×3 stride-2 max-pool with padding 1 (`nn.MaxPool2d(3, 2, 1)`) as one
//! pass forward and one backward. Composed from candle's operations (padding, two maxima per
//! axis, transposes) it cost a width-64 step on 28×28 images about 230 ms of 1 750.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Output size of one axis: `⌈n / 2⌉`.
fn out(n: usize) -> usize {
    n.div_ceil(2)
}

/// For output `(i, j)` of an `h×w` plane: the flat index of its window's maximum, the first in
/// row-major order among equal values (PyTorch's choice); a NaN wins and stays.
fn argmax(plane: &[f32], (h, w): (usize, usize), (i, j): (usize, usize)) -> usize {
    let (r0, c0) = ((2 * i).saturating_sub(1), (2 * j).saturating_sub(1));
    let (r1, c1) = ((2 * i + 2).min(h), (2 * j + 2).min(w));
    let mut best = r0 * w + c0;
    for r in r0..r1 {
        for c in c0..c1 {
            let at = r * w + c;
            let (v, b) = (plane[at], plane[best]);
            if v > b || (v.is_nan() && !b.is_nan()) {
                best = at;
            }
        }
    }
    best
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
        y.par_chunks_mut(ho * wo)
            .zip(x.par_chunks(h * w))
            .for_each(|(y, x)| {
                for i in 0..ho {
                    for j in 0..wo {
                        y[i * wo + j] = x[argmax(x, (h, w), (i, j))];
                    }
                }
            });
        let mut shape = l.dims().to_vec();
        shape[2] = ho;
        shape[3] = wo;
        Ok((CpuStorage::F32(y), Shape::from(shape)))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&dy.contiguous()?, &Backward)?))
    }
}

/// `dx`: each output's gradient added to its window's maximum.
#[derive(Clone, Copy, Debug)]
struct Backward;

impl CustomOp2 for Backward {
    fn name(&self) -> &'static str {
        "simclr-max-pool-3x3-s2-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _timer = super::OpTimer::new("max-pool bwd", l1.dims());
        let (planes, h, w) = dims(l1)?;
        let (ho, wo) = (out(h), out(w));
        if dims(l2)? != (planes, ho, wo) {
            candle_core::bail!(
                "max_pool_3x3_s2 backward: gradient {:?} for input {:?}",
                l2.dims(),
                l1.dims()
            );
        }
        let x = super::f32_slice("max_pool_3x3_s2", s1, l1, "input")?;
        let dy = super::f32_slice("max_pool_3x3_s2", s2, l2, "gradient")?;
        let mut dx = super::zeros(x.len());
        dx.par_chunks_mut(h * w)
            .zip(x.par_chunks(h * w).zip(dy.par_chunks(ho * wo)))
            .for_each(|(dx, (x, dy))| {
                for i in 0..ho {
                    for j in 0..wo {
                        dx[argmax(x, (h, w), (i, j))] += dy[i * wo + j];
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
