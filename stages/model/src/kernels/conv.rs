//! 2-D convolution (no bias, dilation 1, groups 1) as a candle custom op with our own CPU
//! kernels for the forward pass and both gradients:
//!
//! - forward, per image: `cols = im2col(x)` (`[C·kh·kw, Ho·Wo]`), `y = W · cols`;
//! - input gradient, per image: `dcols = Wᵀ · dy`, `dx = col2im(dcols)`;
//! - weight gradient: `dW = Σ_n dy_n · cols_nᵀ`, summed over fixed chunks of the batch in a fixed
//!   order (bit-for-bit reproducible whatever the thread scheduling).
//!
//! Images are spread over the rayon pool; the products run on the `gemm` crate's packed kernels.
//! candle's own CPU convolution computes the input gradient with a direct transposed
//! convolution (no GEMM), which is most of a ResNet training step. Other devices and dtypes
//! use candle's convolution.

use std::ops::Range;

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::gemm::{View, matmul, matmul_col_major, matmul_ld};
use crate::encoder::plan::{ConvShape, Plan, Value};

/// Geometry of one convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Geometry {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    cout: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    padding: usize,
    ho: usize,
    wo: usize,
}

impl Geometry {
    fn new(x: &[usize], w: &[usize], stride: usize, padding: usize) -> Result<Self> {
        let (&[n, c, h, wi], &[cout, cin, kh, kw]) = (x, w) else {
            candle_core::bail!("conv2d: expected 4-D input and weight, got {x:?} and {w:?}");
        };
        if cin != c {
            candle_core::bail!("conv2d: input has {c} channels, the weight expects {cin}");
        }
        if stride == 0 || h + 2 * padding < kh || wi + 2 * padding < kw {
            candle_core::bail!(
                "conv2d: kernel {kh}×{kw} does not fit {h}×{wi} with padding {padding}"
            );
        }
        Ok(Self {
            n,
            c,
            h,
            w: wi,
            cout,
            kh,
            kw,
            stride,
            padding,
            ho: (h + 2 * padding - kh) / stride + 1,
            wo: (wi + 2 * padding - kw) / stride + 1,
        })
    }

    /// Multiply-adds ×2 of the forward pass (each gradient costs the same).
    fn flops(&self) -> u64 {
        2 * (self.n * self.cout * self.p() * self.k()) as u64
    }

    /// Images per matrix product: late layers have few positions per image (16-64), and
    /// products that thin run far below the CPU's peak, so images are put side by side until a
    /// product has about 256 columns — while leaving at least one group per thread.
    fn group(&self) -> usize {
        let wide = 256usize.div_ceil(self.p().max(1));
        let per_thread = self.n.div_ceil(threads());
        wide.min(per_thread).clamp(1, self.n.max(1))
    }

    /// `what` and the layer's shape, for the per-layer profile: `forward 16→32 3×3/2 32×32`
    /// (channels in → out, kernel / stride, input size).
    fn label(&self, what: &str) -> String {
        format!(
            "{what:<15} {:>4}→{:<4} {}×{}/{} {:>3}×{:<3}",
            self.c, self.cout, self.kh, self.kw, self.stride, self.h, self.w
        )
    }

    /// Output rows per block of the forward pass: as many as keep the block's column matrix
    /// within [`COLUMN_BLOCK_BYTES`] (at least one). A whole 32×32 image's column matrix at 16
    /// channels (590 KB) overflows the core's 512 KB L2 cache between im2col writing it and
    /// the product reading it, which halved the product's rate.
    fn rows_per_block(&self) -> usize {
        let row_bytes = self.k() * self.wo * std::mem::size_of::<f32>();
        (COLUMN_BLOCK_BYTES / row_bytes.max(1)).clamp(1, self.ho.max(1))
    }

    /// Rows of the column matrix: C·kh·kw.
    fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// Output positions per image: Ho·Wo.
    fn p(&self) -> usize {
        self.ho * self.wo
    }

    fn image(&self) -> usize {
        self.c * self.h * self.w
    }

    /// A 1×1, stride-1, unpadded convolution: the image is its own column matrix.
    #[cfg(feature = "cudnn")]
    fn shapes(&self) -> super::cudnn::Shapes {
        super::cudnn::Shapes {
            x: [self.n, self.c, self.h, self.w],
            w: [self.cout, self.c, self.kh, self.kw],
            y: [self.n, self.cout, self.ho, self.wo],
            stride: self.stride,
            padding: self.padding,
        }
    }

    /// For a stride-1 convolution with a square kernel and padding below the kernel size, the
    /// geometry of its input gradient computed as a forward convolution: `dy` (`Cout` channels,
    /// `Ho×Wo`) convolved with [`Self::flipped`] filters, padding `k − 1 − pad`, gives `dx`
    /// (`C` channels, `H×W`). `None` for other convolutions and for 1×1 kernels (for which it
    /// is the same product as `Wᵀ·dy`).
    fn transposed(&self) -> Option<Self> {
        let k = self.kh;
        if self.stride != 1 || self.kw != k || k == 1 || self.padding >= k {
            return None;
        }
        let padding = k - 1 - self.padding;
        Some(Self {
            n: self.n,
            c: self.cout,
            h: self.ho,
            w: self.wo,
            cout: self.c,
            kh: k,
            kw: k,
            stride: 1,
            padding,
            ho: self.h,
            wo: self.w,
        })
    }

    /// The filters of [`Self::transposed`]: `w'[c][o][i][j] = w[o][c][kh−1−i][kw−1−j]`.
    fn flipped(&self, w: &[f32]) -> Vec<f32> {
        let (kh, kw) = (self.kh, self.kw);
        let mut out = vec![0.0f32; w.len()];
        for o in 0..self.cout {
            for c in 0..self.c {
                let src = &w[(o * self.c + c) * kh * kw..][..kh * kw];
                let dst = &mut out[(c * self.cout + o) * kh * kw..][..kh * kw];
                for i in 0..kh {
                    for j in 0..kw {
                        dst[i * kw + j] = src[(kh - 1 - i) * kw + (kw - 1 - j)];
                    }
                }
            }
        }
        out
    }

    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.padding == 0
    }

    /// Output columns `lo..hi` whose input column `ow·s + j − pad` lies inside `0..size`.
    fn valid(&self, j: usize, size: usize, out: usize) -> (usize, usize) {
        let s = self.stride as isize;
        let off = j as isize - self.padding as isize;
        let lo = if off >= 0 {
            0
        } else {
            ((-off + s - 1) / s) as usize
        };
        let last = size as isize - 1 - off;
        let hi = if last < 0 { 0 } else { (last / s + 1) as usize };
        let lo = lo.min(out);
        (lo, hi.clamp(lo, out))
    }

    /// `cols[(c·kh + i)·kw + j][oh·Wo + ow] = x[c][oh·s − pad + i][ow·s − pad + j]` (0 outside),
    /// row r starting at `r·ld` (ld ≥ Ho·Wo: several images side by side).
    fn im2col(&self, x: &[f32], cols: &mut [f32], ld: usize) {
        self.im2col_rows(x, cols, ld, 0..self.ho);
    }

    /// [`Self::im2col`] for the output rows `rows` only: column `(oh − rows.start)·Wo + ow`.
    fn im2col_rows(&self, x: &[f32], cols: &mut [f32], ld: usize, rows: Range<usize>) {
        if self.same() {
            self.im2col_same(x, cols, ld, rows);
            return;
        }
        let len = rows.len() * self.wo;
        let pad = self.padding as isize;
        for c in 0..self.c {
            let plane = &x[c * self.h * self.w..][..self.h * self.w];
            for i in 0..self.kh {
                for j in 0..self.kw {
                    let row = &mut cols[((c * self.kh + i) * self.kw + j) * ld..][..len];
                    let (lo, hi) = self.valid(j, self.w, self.wo);
                    for (out, oh) in row.chunks_exact_mut(self.wo).zip(rows.clone()) {
                        let ih = (oh * self.stride + i) as isize - pad;
                        if ih < 0 || ih as usize >= self.h {
                            out.fill(0.0);
                            continue;
                        }
                        let src = &plane[ih as usize * self.w..][..self.w];
                        out[..lo].fill(0.0);
                        out[hi..].fill(0.0);
                        let first = (lo * self.stride + j) as isize - pad;
                        if hi > lo {
                            let first = first as usize;
                            if self.stride == 1 {
                                out[lo..hi].copy_from_slice(&src[first..first + hi - lo]);
                            } else if self.stride == 2 && src.len() >= first + 2 * (hi - lo) {
                                // Pairs: the compiler turns this into vector shuffles, where a
                                // `step_by` gather stays scalar.
                                for (o, pair) in
                                    out[lo..hi].iter_mut().zip(src[first..].chunks_exact(2))
                                {
                                    *o = pair[0];
                                }
                            } else {
                                for (o, v) in out[lo..hi]
                                    .iter_mut()
                                    .zip(src[first..].iter().step_by(self.stride))
                                {
                                    *o = *v;
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Stride 1 and an output the size of the input ("same" padding): a column row is then the
    /// input plane shifted by a constant `(i − pad)·W + (j − pad)`, so it is one contiguous
    /// copy (not one per output row) followed by zeroing the positions whose source lies in
    /// the padding.
    fn same(&self) -> bool {
        self.stride == 1 && self.ho == self.h && self.wo == self.w
    }

    /// [`Self::im2col_rows`] for [`Self::same`] geometries.
    fn im2col_same(&self, x: &[f32], cols: &mut [f32], ld: usize, rows: Range<usize>) {
        let (h, w) = (self.h, self.w);
        let plane_len = h * w;
        let base = rows.start * w;
        let len = rows.len() * w;
        let pad = self.padding as isize;
        for c in 0..self.c {
            let plane = &x[c * plane_len..][..plane_len];
            for i in 0..self.kh {
                // Output rows (of `rows`) whose input row lies inside the image, likewise
                // columns.
                let (rlo, rhi) = self.valid(i, h, h);
                let (rlo, rhi) = (rlo.max(rows.start), rhi.min(rows.end));
                for j in 0..self.kw {
                    let row = &mut cols[((c * self.kh + i) * self.kw + j) * ld..][..len];
                    let (lo, hi) = self.valid(j, w, w);
                    if rhi <= rlo || hi <= lo {
                        row.fill(0.0);
                        continue;
                    }
                    let shift = (i as isize - pad) * w as isize + (j as isize - pad);
                    // Copy the valid rows' span, clipped to the plane; what the clipping
                    // leaves out lies in the padding and is zeroed with the rest below.
                    let (q0, q1) = (rlo * w, rhi * w);
                    let a = (q0 as isize).max(-shift) as usize;
                    let b = (q1 as isize).min(plane_len as isize - shift) as usize;
                    let from = (a as isize + shift) as usize;
                    row[..a - base].fill(0.0);
                    row[a - base..b - base].copy_from_slice(&plane[from..from + (b - a)]);
                    row[b - base..].fill(0.0);
                    // Columns whose source lies in the left or right padding: a strided
                    // store per padded column (a `fill` per row would be a `memset` call
                    // for one or two elements).
                    let span = &mut row[q0 - base..q1 - base];
                    for t in (0..lo).chain(hi..w) {
                        for v in span[t..].iter_mut().step_by(w) {
                            *v = 0.0;
                        }
                    }
                }
            }
        }
    }

    /// The adjoint of `im2col` (rows `ld` apart): `dx[c][ih][iw] += dcols[...]` for every
    /// position it fed.
    fn col2im(&self, dcols: &[f32], ld: usize, dx: &mut [f32]) {
        dx.fill(0.0);
        let p = self.p();
        let pad = self.padding as isize;
        for c in 0..self.c {
            let plane = &mut dx[c * self.h * self.w..][..self.h * self.w];
            for i in 0..self.kh {
                for j in 0..self.kw {
                    let row = &dcols[((c * self.kh + i) * self.kw + j) * ld..][..p];
                    let (lo, hi) = self.valid(j, self.w, self.wo);
                    if hi <= lo {
                        continue;
                    }
                    let first = ((lo * self.stride + j) as isize - pad) as usize;
                    for oh in 0..self.ho {
                        let ih = (oh * self.stride + i) as isize - pad;
                        if ih < 0 || ih as usize >= self.h {
                            continue;
                        }
                        let dst = &mut plane[ih as usize * self.w..][..self.w];
                        let src = &row[oh * self.wo + lo..oh * self.wo + hi];
                        if self.stride == 1 {
                            for (d, v) in dst[first..first + (hi - lo)].iter_mut().zip(src) {
                                *d += v;
                            }
                        } else {
                            for (d, v) in dst[first..].iter_mut().step_by(self.stride).zip(src) {
                                *d += v;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Size of the column-matrix blocks of the forward pass (see `Geometry::rows_per_block`):
/// half the L2 cache of the Zen 3 core this was tuned on (64, 128, 192, 256 KB and unblocked
/// measured with `simclr bench train --layers`: 256 KB best, unblocked worst at 32×32).
const COLUMN_BLOCK_BYTES: usize = 256 * 1024;

thread_local! {
    /// Per-thread scratch for column matrices, reused across calls (fresh allocations of this
    /// size cost page faults on every step).
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Run `f` with a scratch buffer of at least `len` floats (contents unspecified).
fn with_scratch<T>(len: usize, f: impl FnOnce(&mut [f32]) -> T) -> T {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        // Re-entered on this thread (nested parallelism): use a fresh buffer.
        Err(_) => f(&mut vec![0.0; len]),
    })
}

fn threads() -> usize {
    rayon::current_num_threads().max(1)
}

/// Run `f(group, out_chunk, threads)` over groups of images on the rayon pool; with fewer
/// groups than threads, the products inside use the threads instead.
fn per_group(n: usize, out: &mut [f32], chunk: usize, f: impl Fn(usize, &mut [f32], usize) + Sync) {
    if n >= threads() {
        out.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, o)| f(i, o, 1));
    } else {
        for (i, o) in out.chunks_mut(chunk).enumerate() {
            f(i, o, threads());
        }
    }
}

/// `y = conv(x, w)` for geometry `g`: `x` `[N, C, H, W]`, `w` `[Cout, C, kh, kw]`, `y`
/// `[N, Cout, Ho, Wo]`, all contiguous.
fn forward(g: &Geometry, x: &[f32], w: &[f32]) -> Vec<f32> {
    let (k, p) = (g.k(), g.p());
    let mut y = super::zeros(g.n * g.cout * p);
    let wv = View::row_major(w, g.cout, k);
    let b = g.group();
    per_group(g.n.div_ceil(b), &mut y, b * g.cout * p, |gi, out, t| {
        let (first, nb) = (gi * b, out.len() / (g.cout * p));
        if nb == 1 {
            let xi = &x[first * g.image()..][..g.image()];
            if g.pointwise() {
                matmul(out, wv, View::row_major(xi, k, p), false, t);
            } else {
                // Blocks of output rows whose column matrix stays in the core's cache.
                let rows = g.rows_per_block();
                with_scratch(k * rows * g.wo, |cols| {
                    for r0 in (0..g.ho).step_by(rows) {
                        let r1 = (r0 + rows).min(g.ho);
                        let width = (r1 - r0) * g.wo;
                        g.im2col_rows(xi, cols, width, r0..r1);
                        matmul_ld(
                            &mut out[r0 * g.wo..],
                            p,
                            wv,
                            View::row_major(&cols[..k * width], k, width),
                            false,
                            t,
                        );
                    }
                });
            }
            return;
        }
        // Several images side by side: cols [K, nb·P], tmp [Cout, nb·P], then scatter.
        let ld = nb * p;
        with_scratch(k * ld + g.cout * ld, |buf| {
            let (cols, tmp) = buf.split_at_mut(k * ld);
            for j in 0..nb {
                let xi = &x[(first + j) * g.image()..][..g.image()];
                g.im2col(xi, &mut cols[j * p..], ld);
            }
            matmul(tmp, wv, View::row_major(cols, k, ld), false, t);
            for j in 0..nb {
                for o in 0..g.cout {
                    out[(j * g.cout + o) * p..][..p].copy_from_slice(&tmp[o * ld + j * p..][..p]);
                }
            }
        });
    });
    y
}

/// The forward op; its backward pass uses [`BackwardData`] and [`BackwardFilter`].
#[derive(Clone, Copy, Debug)]
pub struct Conv2d {
    /// Stride (both axes).
    pub stride: usize,
    /// Zero padding (both axes).
    pub padding: usize,
}

impl CustomOp2 for Conv2d {
    fn name(&self) -> &'static str {
        "simclr-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let t0 = std::time::Instant::now();
        let g = Geometry::new(l1.dims(), l2.dims(), self.stride, self.padding)?;
        let (x, w) = (
            super::f32_slice("conv2d", s1, l1, "input")?,
            super::f32_slice("conv2d", s2, l2, "weight")?,
        );
        let y = forward(&g, x, w);
        super::record_conv(g.flops(), t0.elapsed(), || g.label("forward"));
        Ok((CpuStorage::F32(y), Shape::from((g.n, g.cout, g.ho, g.wo))))
    }

    #[cfg(feature = "cudnn")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let g = Geometry::new(l1.dims(), l2.dims(), self.stride, self.padding)?;
        let y = super::cudnn::forward(&g.shapes(), s1, l1, s2, l2)?;
        Ok((y, Shape::from((g.n, g.cout, g.ho, g.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        // No input gradient for an input outside the graph (the images into the first layer).
        let dx = if x.track_op() {
            Some(dy.apply_op2_no_bwd(
                w,
                &BackwardData {
                    conv: *self,
                    input: x.dims().to_vec(),
                },
            )?)
        } else {
            None
        };
        let dw = x.apply_op2_no_bwd(
            &dy,
            &BackwardFilter {
                conv: *self,
                weight: w.dims().to_vec(),
            },
        )?;
        Ok((dx, Some(dw)))
    }
}

/// `dx` from `(dy, w)`.
#[derive(Clone, Debug)]
pub struct BackwardData {
    conv: Conv2d,
    input: Vec<usize>,
}

impl CustomOp2 for BackwardData {
    fn name(&self) -> &'static str {
        "simclr-conv2d-backward-data"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let t0 = std::time::Instant::now();
        let g = Geometry::new(&self.input, l2.dims(), self.conv.stride, self.conv.padding)?;
        let (dy, w) = (
            super::f32_slice("conv2d", s1, l1, "gradient")?,
            super::f32_slice("conv2d", s2, l2, "weight")?,
        );
        if let Some(t) = g.transposed() {
            // dx = dy convolved with the flipped, transposed filters: a forward convolution
            // whose products have Cout·kh·kw inner terms (Wᵀ·dy has only Cout) and that writes
            // dx once instead of scatter-adding kh·kw column rows into it.
            let dx = forward(&t, dy, &g.flipped(w));
            super::record_conv(g.flops(), t0.elapsed(), || g.label("input gradient"));
            return Ok((CpuStorage::F32(dx), Shape::from(self.input.clone())));
        }
        let (k, p) = (g.k(), g.p());
        let wt = View::row_major(w, g.cout, k).t();
        let mut dx = super::zeros(g.n * g.image());
        let b = g.group();
        per_group(g.n.div_ceil(b), &mut dx, b * g.image(), |gi, out, t| {
            let (first, nb) = (gi * b, out.len() / g.image());
            if nb == 1 {
                let dyi = View::row_major(&dy[first * g.cout * p..][..g.cout * p], g.cout, p);
                if g.pointwise() {
                    matmul(out, wt, dyi, false, t);
                } else {
                    with_scratch(k * p, |dcols| {
                        matmul(dcols, wt, dyi, false, t);
                        g.col2im(dcols, p, out);
                    });
                }
                return;
            }
            // Several images side by side: gather dy [Cout, nb·P], dcols = Wᵀ·dy, col2im each.
            let ld = nb * p;
            with_scratch(g.cout * ld + k * ld, |buf| {
                let (dyg, dcols) = buf.split_at_mut(g.cout * ld);
                for j in 0..nb {
                    for o in 0..g.cout {
                        dyg[o * ld + j * p..][..p]
                            .copy_from_slice(&dy[((first + j) * g.cout + o) * p..][..p]);
                    }
                }
                matmul(dcols, wt, View::row_major(dyg, g.cout, ld), false, t);
                for j in 0..nb {
                    g.col2im(&dcols[j * p..], ld, &mut out[j * g.image()..][..g.image()]);
                }
            });
        });
        super::record_conv(g.flops(), t0.elapsed(), || g.label("input gradient"));
        Ok((CpuStorage::F32(dx), Shape::from(self.input.clone())))
    }

    #[cfg(feature = "cudnn")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let g = Geometry::new(&self.input, l2.dims(), self.conv.stride, self.conv.padding)?;
        let dx = super::cudnn::backward_data(&g.shapes(), s1, l1, s2, l2)?;
        Ok((dx, Shape::from(self.input.clone())))
    }
}

/// `dW` from `(x, dy)`.
#[derive(Clone, Debug)]
pub struct BackwardFilter {
    conv: Conv2d,
    weight: Vec<usize>,
}

impl CustomOp2 for BackwardFilter {
    fn name(&self) -> &'static str {
        "simclr-conv2d-backward-filter"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let t0 = std::time::Instant::now();
        let g = Geometry::new(l1.dims(), &self.weight, self.conv.stride, self.conv.padding)?;
        let (x, dy) = (
            super::f32_slice("conv2d", s1, l1, "input")?,
            super::f32_slice("conv2d", s2, l2, "gradient")?,
        );
        let (k, p) = (g.k(), g.p());
        let size = g.cout * k;
        // Groups of images side by side (see `Geometry::group`), fixed chunks of groups, each
        // chunk summed into its own buffer, the buffers added in order: the same result
        // whatever the scheduling.
        let b = g.group();
        let groups = g.n.div_ceil(b);
        let chunks = threads().min(groups).max(1);
        let per = groups.div_ceil(chunks);
        let mut partial = vec![0.0f32; chunks * size];
        let inner = if groups >= threads() { 1 } else { threads() };
        partial
            .par_chunks_mut(size)
            .enumerate()
            .for_each(|(chunk, acc)| {
                let ld_max = b * p;
                let mut cols = vec![
                    0.0f32;
                    if g.pointwise() && b == 1 {
                        0
                    } else {
                        k * ld_max
                    }
                ];
                let mut dyg = vec![0.0f32; if b == 1 { 0 } else { g.cout * ld_max }];
                for (step, gi) in (chunk * per..((chunk + 1) * per).min(groups)).enumerate() {
                    let first = gi * b;
                    let nb = b.min(g.n - first);
                    if nb == 1 {
                        let xi = &x[first * g.image()..][..g.image()];
                        let dyi =
                            View::row_major(&dy[first * g.cout * p..][..g.cout * p], g.cout, p);
                        let colsi = if g.pointwise() {
                            View::row_major(xi, k, p)
                        } else {
                            g.im2col(xi, &mut cols, p);
                            View::row_major(&cols, k, p)
                        };
                        matmul_col_major(acc, dyi, colsi.t(), step > 0, inner);
                        continue;
                    }
                    let ld = nb * p;
                    for j in 0..nb {
                        let xi = &x[(first + j) * g.image()..][..g.image()];
                        g.im2col(xi, &mut cols[j * p..], ld);
                        for o in 0..g.cout {
                            dyg[o * ld + j * p..][..p]
                                .copy_from_slice(&dy[((first + j) * g.cout + o) * p..][..p]);
                        }
                    }
                    matmul_col_major(
                        acc,
                        View::row_major(&dyg[..g.cout * ld], g.cout, ld),
                        View::row_major(&cols[..k * ld], k, ld).t(),
                        step > 0,
                        inner,
                    );
                }
            });
        // The partial sums hold dWᵀ (`[K, Cout]`, see `matmul_col_major`): add them in order,
        // then transpose.
        let (sum, rest) = partial.split_at_mut(size);
        for part in rest.chunks(size) {
            for (a, b) in sum.iter_mut().zip(part) {
                *a += b;
            }
        }
        let mut dw = vec![0.0f32; size];
        for (kk, row) in sum.chunks_exact(g.cout).enumerate() {
            for (o, v) in row.iter().enumerate() {
                dw[o * k + kk] = *v;
            }
        }
        super::record_conv(g.flops(), t0.elapsed(), || g.label("weight gradient"));
        Ok((CpuStorage::F32(dw), Shape::from(self.weight.clone())))
    }

    #[cfg(feature = "cudnn")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let g = Geometry::new(l1.dims(), &self.weight, self.conv.stride, self.conv.padding)?;
        let dw = super::cudnn::backward_filter(&g.shapes(), s1, l1, s2, l2)?;
        Ok((dw, Shape::from(self.weight.clone())))
    }
}

/// Convolution of `x` `[N, C, H, W]` with `w` `[Cout, C, kh, kw]`: our kernels for f32 on the
/// CPU, cuDNN for f32 on CUDA (feature `cudnn`), candle's elsewhere.
///
/// # Errors
/// Mismatched shapes.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    let ours = super::enabled()
        && (x.device().is_cpu() || (cfg!(feature = "cudnn") && x.device().is_cuda()))
        && x.dtype() == candle_core::DType::F32
        && w.dtype() == candle_core::DType::F32;
    if ours && x.device().is_cpu() {
        // Late ResNet layers on small images (ImageNet stem, 28×28: 2×2 and 1×1 maps): a map
        // smaller than the kernel makes im2col multiply mostly padding.
        if let Some(y) = small_map(x, w, stride, padding)? {
            return Ok(y);
        }
    }
    if ours {
        x.contiguous()?
            .apply_op2(&w.contiguous()?, Conv2d { stride, padding })
    } else {
        x.conv2d(w, padding, stride, 1, 1)
    }
}

/// A convolution of a map with fewer positions than the kernel has taps (`H·W < k²`), as one
/// dense matrix product: every output position reads every input position through exactly one
/// tap or none, so the layer is `y[N, Cout·P] = x[N, C·Q] · Mᵀ` with `M[(o, p), (c, q)] =
/// w[o, c, tap(p, q)]` (0 where `q` is outside `p`'s window), `P`, `Q` the output and input
/// positions. It does `P·Q` multiply-adds per channel pair against im2col's `P·k²`, in one
/// product over the whole batch instead of products a few columns wide; candle differentiates
/// it (the gradient of `M` folds back onto the taps). `None` for larger maps.
fn small_map(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Option<Tensor>> {
    // A geometry `Conv2d` rejects is left to it to report.
    let Ok(g) = Geometry::new(x.dims(), w.dims(), stride, padding) else {
        return Ok(None);
    };
    let Geometry {
        n,
        c,
        h,
        w: wi,
        cout,
        kh,
        kw,
        ho,
        wo,
        ..
    } = g;
    if h * wi >= kh * kw {
        return Ok(None);
    }
    let taps = kh * kw;
    // For each (output p, input q): its tap, or `taps` (a zero appended to the taps).
    let mut index = Vec::with_capacity(ho * wo * h * wi);
    for (oy, ox) in (0..ho).flat_map(|oy| (0..wo).map(move |ox| (oy, ox))) {
        for (iy, ix) in (0..h).flat_map(|iy| (0..wi).map(move |ix| (iy, ix))) {
            let (ky, kx) = (
                (iy + padding).checked_sub(oy * stride),
                (ix + padding).checked_sub(ox * stride),
            );
            index.push(match (ky, kx) {
                (Some(ky), Some(kx)) if ky < kh && kx < kw => (ky * kw + kx) as u32,
                _ => taps as u32,
            });
        }
    }
    let index = Tensor::from_vec(index, ho * wo * h * wi, x.device())?;
    let with_zero = Tensor::cat(
        &[
            &w.reshape((cout, c, taps))?,
            &Tensor::zeros((cout, c, 1), w.dtype(), w.device())?,
        ],
        2,
    )?;
    let m = with_zero
        .index_select(&index, 2)? // [Cout, C, P·Q]
        .reshape((cout, c, ho * wo, h * wi))?
        .permute((0, 2, 1, 3))? // [Cout, P, C, Q]
        .contiguous()?
        .reshape((cout * ho * wo, c * h * wi))?;
    let y = x.contiguous()?.reshape((n, c * h * wi))?.matmul(&m.t()?)?;
    Ok(Some(y.reshape((n, cout, ho, wo))?))
}

/// A convolution layer without bias (ResNets follow every convolution with BatchNorm), running
/// through [`conv2d`]. Its weight is `<prefix>.weight`, `[Cout, C, k, k]`, as torchvision's.
#[derive(Clone, Debug)]
pub struct Conv {
    weight: Tensor,
    stride: usize,
    padding: usize,
    /// The variables' prefix (`layer1.0.conv1`).
    name: String,
}

impl Conv {
    /// A `k×k` convolution from `cin` to `cout` channels.
    ///
    /// # Errors
    /// A variable of another shape under the same name in `vb`.
    pub fn new(
        vb: candle_nn::VarBuilder<'_>,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let weight = vb.get_with_hints(
            (cout, cin, k, k),
            "weight",
            candle_nn::init::DEFAULT_KAIMING_NORMAL,
        )?;
        Ok(Self {
            weight,
            stride,
            padding,
            name: vb.prefix(),
        })
    }

    /// Its geometry.
    pub fn shape(&self) -> ConvShape {
        let (cout, cin, kernel, _) = self.weight.dims4().unwrap_or_default();
        ConvShape {
            cin,
            cout,
            kernel,
            stride: self.stride,
            padding: self.padding,
        }
    }

    /// Append the layer to `plan`, reading `x`.
    pub fn plan(&self, plan: &mut Plan, x: Value) -> Value {
        plan.conv(&self.name, x, self.shape())
    }
}

impl candle_core::Module for Conv {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        conv2d(xs, &self.weight, self.stride, self.padding)
    }
}
