//! `relu(a + b)`, the end of every residual block, as one pass forward and one backward
//! (candle: an add and a ReLU forward, a comparison, a cast and a product backward).

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// The forward op.
#[derive(Clone, Copy, Debug)]
pub struct AddRelu;

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "simclr-add-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _timer = super::OpTimer::new("residual + relu", l1.dims());
        if l1.dims() != l2.dims() {
            candle_core::bail!(
                "add_relu: shapes {:?} and {:?} differ",
                l1.dims(),
                l2.dims()
            );
        }
        let a = super::f32_slice("add_relu", s1, l1, "lhs")?;
        let b = super::f32_slice("add_relu", s2, l2, "rhs")?;
        let mut y = super::zeros(a.len());
        y.par_chunks_mut(CHUNK)
            .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
            .for_each(|(y, (a, b))| {
                for ((o, &u), &v) in y.iter_mut().zip(a).zip(b) {
                    *o = (u + v).max(0.0);
                }
            });
        Ok((CpuStorage::F32(y), Shape::from(l1.dims())))
    }

    fn bwd(
        &self,
        _a: &Tensor,
        _b: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = dy.contiguous()?.apply_op2_no_bwd(y, &MaskByPositive)?;
        Ok((Some(g.clone()), Some(g)))
    }
}

/// `dy · [y > 0]`.
#[derive(Clone, Copy, Debug)]
struct MaskByPositive;

impl CustomOp2 for MaskByPositive {
    fn name(&self) -> &'static str {
        "simclr-add-relu-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let _timer = super::OpTimer::new("residual bwd", l1.dims());
        let dy = super::f32_slice("add_relu", s1, l1, "gradient")?;
        let y = super::f32_slice("add_relu", s2, l2, "output")?;
        let mut g = super::zeros(dy.len());
        g.par_chunks_mut(CHUNK)
            .zip(dy.par_chunks(CHUNK).zip(y.par_chunks(CHUNK)))
            .for_each(|(g, (dy, y))| {
                for ((o, &d), &v) in g.iter_mut().zip(dy).zip(y) {
                    *o = if v > 0.0 { d } else { 0.0 };
                }
            });
        Ok((CpuStorage::F32(g), Shape::from(l1.dims())))
    }
}

/// `relu(a + b)`: our kernel for f32 on the CPU (when enabled), candle's ops elsewhere.
///
/// # Errors
/// Shapes that differ.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let ours = super::enabled()
        && a.device().is_cpu()
        && a.dtype() == candle_core::DType::F32
        && b.dtype() == candle_core::DType::F32;
    if ours {
        a.contiguous()?.apply_op2(&b.contiguous()?, AddRelu)
    } else {
        (a + b)?.relu()
    }
}
