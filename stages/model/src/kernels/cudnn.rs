//! cuDNN convolutions for CUDA devices (cargo feature `cudnn`): the forward pass and both
//! gradients of [`super::conv::Conv2d`] run through `cudnnConvolutionForward`,
//! `cudnnConvolutionBackwardData` and `cudnnConvolutionBackwardFilter`, algorithms chosen by
//! cuDNN's heuristics. Without this, candle computes a convolution's input gradient on CUDA
//! with a direct transposed-convolution kernel and the weight gradient as a convolution with
//! a batch-sized kernel, most of a training step's time.
//!
//! Precision follows [`super::tf32`]: strict fp32 (`CUDNN_FMA_MATH`, no tensor cores, as
//! PyTorch with `allow_tf32 = False`) unless TF32 was asked for.
//!
//! Besides `gemm.rs`, the only `unsafe` of the model stages: the three cuDNN launches, on
//! contiguous f32 buffers whose shapes the descriptors state.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::sync::Arc;

use candle_core::backend::BackendDevice;
use candle_core::cuda_backend::cudarc::cudnn::{
    ConvBackwardData, ConvBackwardFilter, ConvDescriptor, ConvForward, Cudnn, sys,
};
use candle_core::cuda_backend::cudarc::driver::CudaSlice;
use candle_core::{CudaDevice, CudaStorage, Layout, Result};

thread_local! {
    // cuDNN handles are neither Send nor Sync: one per thread and device.
    static HANDLES: RefCell<Vec<(CudaDevice, Arc<Cudnn>)>> = const { RefCell::new(Vec::new()) };
}

/// This thread's cuDNN handle for `dev`, created on first use. A missing cuDNN library is an
/// error naming what to install, not a panic.
fn handle(dev: &CudaDevice) -> Result<Arc<Cudnn>> {
    HANDLES.with(|h| {
        if let Some((_, c)) = h.borrow().iter().find(|(d, _)| d.same_device(dev)) {
            return Ok(c.clone());
        }
        let stream = dev.cuda_stream();
        let created = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Cudnn::new(stream)))
            .map_err(|_| {
                candle_core::Error::Msg(
                    "cannot load cuDNN (libcudnn.so.9): install it (e.g. `pip install nvidia-cudnn-cu13` and add its lib folder to LD_LIBRARY_PATH), or build without the `cudnn` feature".into(),
                )
            })??;
        h.borrow_mut().push((dev.clone(), created.clone()));
        Ok(created)
    })
}

/// Shapes of one convolution, `[N, C, H, W]` input, `[Cout, C, kh, kw]` weight, `[N, Cout, Ho, Wo]`
/// output.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shapes {
    pub x: [usize; 4],
    pub w: [usize; 4],
    pub y: [usize; 4],
    pub stride: usize,
    pub padding: usize,
}

fn dims(d: [usize; 4]) -> [i32; 4] {
    d.map(|v| i32::try_from(v).unwrap_or(i32::MAX))
}

fn descriptor(cudnn: &Arc<Cudnn>, s: &Shapes) -> Result<ConvDescriptor<f32>> {
    let (p, st) = (s.padding as i32, s.stride as i32);
    let mut conv = cudnn.create_conv2d::<f32>(
        [p, p],
        [st, st],
        [1, 1],
        sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
    )?;
    conv.set_math_type(if super::tf32() {
        sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH
    } else {
        sys::cudnnMathType_t::CUDNN_FMA_MATH
    })?;
    Ok(conv)
}

/// The f32 data of a contiguous CUDA tensor, from its layout's offset on.
fn view<'a>(
    s: &'a CudaStorage,
    l: &Layout,
    what: &str,
) -> Result<candle_core::cuda_backend::cudarc::driver::CudaView<'a, f32>> {
    let slice = s.as_cuda_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(slice.slice(a..b)),
        None => candle_core::bail!("conv2d (cuDNN): {what} must be contiguous"),
    }
}

fn numel(d: [usize; 4]) -> usize {
    d.iter().product()
}

const NCHW: sys::cudnnTensorFormat_t = sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;

/// `y = conv(x, w)`.
pub(crate) fn forward(
    s: &Shapes,
    xs: &CudaStorage,
    xl: &Layout,
    ws: &CudaStorage,
    wl: &Layout,
) -> Result<CudaStorage> {
    let dev = &xs.device;
    let cudnn = handle(dev)?;
    let conv = descriptor(&cudnn, s)?;
    let x = cudnn.create_4d_tensor::<f32>(NCHW, dims(s.x))?;
    let w = cudnn.create_4d_filter::<f32>(NCHW, dims(s.w))?;
    let y = cudnn.create_4d_tensor::<f32>(NCHW, dims(s.y))?;
    let op = ConvForward {
        conv: &conv,
        x: &x,
        w: &w,
        y: &y,
    };
    let algo = op.pick_algorithm()?;
    let mut workspace = dev.alloc_zeros::<u8>(op.get_workspace_size(algo)?.max(1))?;
    let mut out: CudaSlice<f32> = dev.alloc_zeros::<f32>(numel(s.y))?;
    let (xv, wv) = (view(xs, xl, "input")?, view(ws, wl, "weight")?);
    // SAFETY: the descriptors above describe exactly these contiguous f32 buffers.
    unsafe { op.launch(algo, Some(&mut workspace), (1.0, 0.0), &xv, &wv, &mut out)? };
    Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
}

/// `dx` from `dy` and `w`.
pub(crate) fn backward_data(
    s: &Shapes,
    dys: &CudaStorage,
    dyl: &Layout,
    ws: &CudaStorage,
    wl: &Layout,
) -> Result<CudaStorage> {
    let dev = &dys.device;
    let cudnn = handle(dev)?;
    let conv = descriptor(&cudnn, s)?;
    let dx = cudnn.create_4d_tensor::<f32>(NCHW, dims(s.x))?;
    let w = cudnn.create_4d_filter::<f32>(NCHW, dims(s.w))?;
    let dy = cudnn.create_4d_tensor::<f32>(NCHW, dims(s.y))?;
    let op = ConvBackwardData {
        conv: &conv,
        dx: &dx,
        w: &w,
        dy: &dy,
    };
    let algo = op.pick_algorithm()?;
    let mut workspace = dev.alloc_zeros::<u8>(op.get_workspace_size(algo)?.max(1))?;
    let mut out: CudaSlice<f32> = dev.alloc_zeros::<f32>(numel(s.x))?;
    let (dyv, wv) = (view(dys, dyl, "gradient")?, view(ws, wl, "weight")?);
    // SAFETY: as in `forward`.
    unsafe { op.launch(algo, Some(&mut workspace), (1.0, 0.0), &mut out, &wv, &dyv)? };
    Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
}

/// `dW` from `x` and `dy`.
pub(crate) fn backward_filter(
    s: &Shapes,
    xs: &CudaStorage,
    xl: &Layout,
    dys: &CudaStorage,
    dyl: &Layout,
) -> Result<CudaStorage> {
    let dev = &xs.device;
    let cudnn = handle(dev)?;
    let conv = descriptor(&cudnn, s)?;
    let x = cudnn.create_4d_tensor::<f32>(NCHW, dims(s.x))?;
    let dw = cudnn.create_4d_filter::<f32>(NCHW, dims(s.w))?;
    let dy = cudnn.create_4d_tensor::<f32>(NCHW, dims(s.y))?;
    let op = ConvBackwardFilter {
        conv: &conv,
        x: &x,
        dw: &dw,
        dy: &dy,
    };
    let algo = op.pick_algorithm()?;
    let mut workspace = dev.alloc_zeros::<u8>(op.get_workspace_size(algo)?.max(1))?;
    let mut out: CudaSlice<f32> = dev.alloc_zeros::<f32>(numel(s.w))?;
    let (xv, dyv) = (view(xs, xl, "input")?, view(dys, dyl, "gradient")?);
    // SAFETY: as in `forward`.
    unsafe { op.launch(algo, Some(&mut workspace), (1.0, 0.0), &xv, &mut out, &dyv)? };
    Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
}
