//! BatchNorm in training mode (optionally followed by ReLU) as one candle custom op with its
//! own backward pass, for f32 NCHW tensors on the CPU; and in evaluation mode (running
//! statistics), one pass.
//!
//! candle-nn's training-mode BatchNorm transposes the input to channel-major, copies it, and
//! runs a dozen element-wise passes forward and more backward. Here the forward pass is two
//! reads (statistics; recomputed in float64 for accuracy) and one write; the backward pass two
//! reductions and one write, with ReLU's mask folded in:
//!
//! ```text
//! x̂ = (x − μ) / √(σ² + ε),  y = γ·x̂ + β  (then max(0, ·))
//! dβ = Σ dy',  dγ = Σ dy'·x̂,  dx = γ/√(σ² + ε) · (dy' − dβ/M − x̂·dγ/M),  dy' = dy·[y > 0]
//! ```
//!
//! M = N·H·W; σ² is the biased batch variance (the running variance takes the unbiased one).
//!
//! **Global BatchNorm across ranks** ([`set_sync`]): the per-channel sums are summed over the
//! ranks — `[Σx, M]`, then `Σ(x − μ)²` forward; `[Σdy', Σdy'·(x − μ), M]` backward — so μ, σ²
//! and dx are those of the global batch; dγ and dβ stay each rank's own (the gradient
//! all-reduce adds them up).

use std::sync::RwLock;

use simclr_dist::{Comm, Purpose};

static SYNC: RwLock<Option<Comm>> = RwLock::new(None);

/// Compute training-mode batch statistics over every rank of `comm` (global BatchNorm), or
/// per process (`None`, the default). Process-wide: BatchNorm layers run afterwards, in any
/// thread, use it.
pub fn set_sync(comm: Option<Comm>) {
    if let Ok(mut s) = SYNC.write() {
        *s = comm.filter(|c| !c.is_solo());
    }
}

static GROUPS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);

/// Normalise training batches in `groups` interleaved groups of samples with statistics of
/// their own ("ghost" batches; 1, the default: the whole batch). Sample k (views 2k, 2k+1) is
/// in group k mod `groups` — the samples rank k mod W holds on W ranks, so `groups: W` on one
/// process is per-rank BatchNorm on W ranks. Process-wide, as [`set_sync`].
pub fn set_groups(groups: usize) {
    GROUPS.store(groups.max(1), std::sync::atomic::Ordering::SeqCst);
}

/// The communicator global BatchNorm uses, if any.
pub fn sync() -> Option<Comm> {
    SYNC.read().ok().and_then(|s| s.clone())
}

/// Sum `v` over the ranks of `sync` (nothing without it).
fn reduce(sync: Option<&Comm>, what: &str, v: &mut [f64]) -> Result<()> {
    match sync {
        Some(c) => c
            .all_reduce_sum(Purpose::BatchNorm, what, v)
            .map_err(|e| candle_core::Error::Msg(e.to_string())),
        None => Ok(()),
    }
}

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::encoder::plan::{Plan, Value};

/// `(N, C, S)` of an `[N, C, ...]` tensor (S: the product of the spatial dimensions).
fn ncs(dims: &[usize]) -> Result<(usize, usize, usize)> {
    if dims.len() < 2 {
        candle_core::bail!("batch_norm: expected [N, C, ...], got {dims:?}");
    }
    Ok((dims[0], dims[1], dims[2..].iter().product()))
}

/// Σ over `a` (and `b`) of `f`, in eight f32 lanes per block (vectorisable) added up in f64.
fn lanes(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f64 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (xa, xb) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += f(xa[l], xb[l]);
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(&u, &v)| f(u, v)).sum();
    acc.iter().map(|&v| f64::from(v)).sum::<f64>() + f64::from(tail)
}

/// Images per parallel chunk of [`channel_sums`].
const IMAGES_PER_CHUNK: usize = 8;

/// Per channel, `Σ_i f(i, ch, scratch)` over the images `i` (`scratch`: `s` floats). Fixed
/// chunks of images run in parallel, each sweeping its images' memory in order (a per-channel
/// split would read blocks `C·s` floats apart: one cache line each at 4×4, and slow); the
/// chunks' totals are added in chunk order, so the result does not depend on the number of
/// threads.
fn channel_sums<const K: usize>(
    (n, c, s): (usize, usize, usize),
    f: impl Fn(usize, usize, &mut [f32]) -> [f64; K] + Sync,
) -> Vec<[f64; K]> {
    let parts: Vec<Vec<[f64; K]>> = (0..n.div_ceil(IMAGES_PER_CHUNK))
        .into_par_iter()
        .map(|chunk| {
            let mut scratch = vec![0.0f32; s];
            let mut acc = vec![[0.0f64; K]; c];
            for i in chunk * IMAGES_PER_CHUNK..((chunk + 1) * IMAGES_PER_CHUNK).min(n) {
                for (ch, a) in acc.iter_mut().enumerate() {
                    for (a, v) in a.iter_mut().zip(f(i, ch, &mut scratch)) {
                        *a += v;
                    }
                }
            }
            acc
        })
        .collect();
    let mut total = vec![[0.0f64; K]; c];
    for part in parts {
        for (t, p) in total.iter_mut().zip(part) {
            for (t, p) in t.iter_mut().zip(p) {
                *t += p;
            }
        }
    }
    total
}

/// Per-channel mean and biased variance: two passes (the second around the mean), f32 lanes
/// within an image's block, f64 across blocks; with `sync`, over every rank's batch.
fn stats(
    x: &[f32],
    (n, c, s): (usize, usize, usize),
    sync: Option<&Comm>,
) -> Result<Vec<(f64, f64)>> {
    let block = |i: usize, ch: usize| &x[(i * c + ch) * s..][..s];
    let mut sums: Vec<f64> = channel_sums((n, c, s), |i, ch, _| {
        [lanes(block(i, ch), block(i, ch), |v, _| v)]
    })
    .iter()
    .map(|v| v[0])
    .collect();
    sums.push((n * s) as f64);
    reduce(sync, "BatchNorm statistics (sums)", &mut sums)?;
    let m = sums.pop().unwrap_or(0.0).max(1.0);
    let means: Vec<f32> = sums.iter().map(|v| (v / m) as f32).collect();
    let mut squares: Vec<f64> = channel_sums((n, c, s), |i, ch, _| {
        let mf = means[ch];
        [lanes(block(i, ch), block(i, ch), |v, _| {
            (v - mf) * (v - mf)
        })]
    })
    .iter()
    .map(|v| v[0])
    .collect();
    reduce(sync, "BatchNorm statistics (squares)", &mut squares)?;
    Ok(sums
        .iter()
        .zip(&squares)
        .map(|(sum, sq)| (sum / m, sq / m))
        .collect())
}

/// Batch statistics `[2, C]`: row 0 the means, row 1 the biased variances (no gradient); over
/// every rank of `sync` when given.
#[derive(Clone, Debug, Default)]
pub struct ChannelStats {
    /// The ranks whose batches the statistics cover (global BatchNorm).
    pub sync: Option<Comm>,
}

impl CustomOp1 for ChannelStats {
    fn name(&self) -> &'static str {
        "simclr-channel-stats"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let _timer = super::OpTimer::new("bn statistics", l.dims());
        let dims = ncs(l.dims())?;
        let st = stats(
            super::f32_slice("batch_norm", s, l, "input")?,
            dims,
            self.sync.as_ref(),
        )?;
        let mut out: Vec<f32> = st.iter().map(|p| p.0 as f32).collect();
        out.extend(st.iter().map(|p| p.1 as f32));
        Ok((CpuStorage::F32(out), Shape::from((2, dims.1))))
    }
}

/// Per channel `(a, β, μ)` of training-mode BatchNorm, `y = a·(x − μ) + β` with
/// `a = γ/√(σ² + ε)` (in f64, then f32), from γ, β (`gb`, `[2, C]`) and μ, σ² (`st`, `[2, C]`).
/// Shared by the forward pass and the backward pass, which recomputes ReLU's mask from `x`
/// with exactly the forward's f32 operations.
fn affine(gb: &[f32], st: &[f32], eps: f64) -> Vec<(f32, f32, f32)> {
    let c = gb.len() / 2;
    (0..c)
        .map(|ch| {
            let inv = 1.0 / (f64::from(st[c + ch]) + eps).sqrt();
            let a = f64::from(gb[ch]) * inv;
            (a as f32, gb[c + ch], st[ch])
        })
        .collect()
}

/// `a·(v − μ) + β` (before ReLU). Centring first keeps the digits that `a·v − a·μ` would cancel
/// where |μ| ≫ σ.
#[inline]
fn normalised((a, b, mean): (f32, f32, f32), v: f32) -> f32 {
    a * (v - mean) + b
}

/// `out = dy`, zeroed where ReLU cut the output: `y ≤ 0` when `y` is given (evaluation mode),
/// else where [`normalised`] `(x) ≤ 0` (training mode: the same f32 operations as the forward
/// pass, so the same mask, without reading `y`). No mask without ReLU.
fn masked_gradient(
    relu: bool,
    y: Option<&[f32]>,
    x: &[f32],
    dy: &[f32],
    coef: (f32, f32, f32),
    out: &mut [f32],
) {
    match (relu, y) {
        (false, _) => out.copy_from_slice(dy),
        (true, Some(y)) => {
            for ((o, &yv), &g) in out.iter_mut().zip(y).zip(dy) {
                *o = if yv <= 0.0 { 0.0 } else { g };
            }
        }
        (true, None) => {
            for ((o, &xv), &g) in out.iter_mut().zip(x).zip(dy) {
                *o = if normalised(coef, xv) <= 0.0 { 0.0 } else { g };
            }
        }
    }
}

/// `y = BN(x)` with γ and β stacked as `[2, C]`, optionally followed by ReLU.
#[derive(Clone, Debug)]
pub struct BatchNormTrain {
    /// ε.
    pub eps: f64,
    /// Apply ReLU after normalising.
    pub relu: bool,
    /// The ranks the statistics were computed over (global BatchNorm): the backward pass sums
    /// its per-channel terms over them too.
    pub sync: Option<Comm>,
}

impl CustomOp3 for BatchNormTrain {
    fn name(&self) -> &'static str {
        "simclr-batch-norm-train"
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
        let _timer = super::OpTimer::new(if self.relu { "bn + relu" } else { "bn" }, l1.dims());
        let (_, c, s) = ncs(l1.dims())?;
        let x = super::f32_slice("batch_norm", s1, l1, "input")?;
        let gb = super::f32_slice("batch_norm", s2, l2, "weight and bias")?;
        let st = super::f32_slice("batch_norm", s3, l3, "statistics")?;
        if gb.len() != 2 * c || st.len() != 2 * c {
            candle_core::bail!(
                "batch_norm: {c} channels, but parameters for {}",
                gb.len() / 2
            );
        }
        let ab = affine(gb, st, self.eps);
        let mut y = super::zeros(x.len());
        y.par_chunks_mut((c * s).max(1))
            .zip(x.par_chunks((c * s).max(1)))
            .for_each(|(yi, xi)| {
                for (ch, &(a, b, mean)) in ab.iter().enumerate() {
                    let (yb, xb) = (&mut yi[ch * s..][..s], &xi[ch * s..][..s]);
                    if self.relu {
                        for (o, &v) in yb.iter_mut().zip(xb) {
                            *o = normalised((a, b, mean), v).max(0.0);
                        }
                    } else {
                        for (o, &v) in yb.iter_mut().zip(xb) {
                            *o = normalised((a, b, mean), v);
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(y), Shape::from(l1.dims())))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gb: &Tensor,
        st: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        backward(
            x,
            gb,
            st,
            y,
            dy,
            self.eps,
            self.relu,
            false,
            self.sync.clone(),
        )
    }
}

/// Evaluation-mode BatchNorm (optionally followed by ReLU): `y = γ·(x − μ)/√(σ² + ε) + β`
/// with the running statistics `[2, C]` as constants, one pass over the input (candle-nn's
/// takes four element-wise passes and four allocations, plus one for the ReLU). Its backward
/// pass treats the statistics as constants: dx = γ/√(σ² + ε)·dy', dγ = Σ dy'·x̂, dβ = Σ dy'.
#[derive(Clone, Copy, Debug)]
pub struct BatchNormEval {
    /// ε.
    pub eps: f64,
    /// Apply ReLU after normalising.
    pub relu: bool,
}

impl CustomOp3 for BatchNormEval {
    fn name(&self) -> &'static str {
        "simclr-batch-norm-eval"
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
        // The same normalisation as training mode, with the given statistics.
        BatchNormTrain {
            eps: self.eps,
            relu: self.relu,
            sync: None,
        }
        .cpu_fwd(s1, l1, s2, l2, s3, l3)
    }

    fn bwd(
        &self,
        x: &Tensor,
        gb: &Tensor,
        st: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        backward(x, gb, st, y, dy, self.eps, self.relu, true, None)
    }
}

/// Evaluation-mode BatchNorm (and ReLU with `relu`) of `x` `[N, C, ...]` with per-channel
/// `gamma`, `beta` and running `mean` and `var`, through [`BatchNormEval`].
///
/// # Errors
/// Shapes that do not match, or a tensor our kernel does not take (see [`supported`]).
pub fn batch_norm_eval(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<Tensor> {
    let x = x.contiguous()?;
    let gb = Tensor::stack(&[gamma, beta], 0)?;
    let stats = Tensor::stack(&[mean, var], 0)?.detach();
    x.apply_op3(&gb, &stats, BatchNormEval { eps, relu })
}

/// dx and `[dγ; dβ]` of either op, through [`Backward`] (statistics get no gradient).
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn backward(
    x: &Tensor,
    gb: &Tensor,
    st: &Tensor,
    y: &Tensor,
    dy: &Tensor,
    eps: f64,
    relu: bool,
    eval: bool,
    sync: Option<Comm>,
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let dy = dy.contiguous()?;
    let c = x.dim(1)?;
    let len = x.elem_count();
    // γ, β, μ, σ²: 4·C floats, read to the host once.
    let params: Vec<f32> = Tensor::cat(&[gb.flatten_all()?, st.flatten_all()?], 0)?.to_vec1()?;
    let packed = x.apply_op3_no_bwd(
        y,
        &dy,
        &Backward {
            eps,
            relu,
            eval,
            params,
            sync,
        },
    )?;
    let dx = packed.narrow(0, 0, len)?.reshape(x.shape())?;
    // Its own small storage: a view would keep the whole activation-sized buffer alive for as
    // long as the gradients of γ and β live (to the end of the backward pass).
    let dgb: Vec<f32> = packed.narrow(0, len, 2 * c)?.to_vec1()?;
    let dgb = Tensor::from_vec(dgb, (2, c), x.device())?;
    Ok((Some(dx), Some(dgb), None))
}

/// The backward pass: inputs `x`, `y`, `dy`; output `[dx | dγ | dβ]` flattened.
#[derive(Clone, Debug)]
struct Backward {
    eps: f64,
    relu: bool,
    /// Statistics were constants (evaluation mode): dx = γ/√(σ² + ε) · dy'.
    eval: bool,
    /// γ, β, μ, σ², C each.
    params: Vec<f32>,
    /// Global BatchNorm's ranks: dx uses the per-channel sums over all of them.
    sync: Option<Comm>,
}

impl CustomOp3 for Backward {
    fn name(&self) -> &'static str {
        "simclr-batch-norm-train-backward"
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
        let _timer = super::OpTimer::new("bn backward", l1.dims());
        let (n, c, s) = ncs(l1.dims())?;
        let len = n * c * s;
        let x = super::f32_slice("batch_norm", s1, l1, "input")?;
        let y = super::f32_slice("batch_norm", s2, l2, "output")?;
        let dy = super::f32_slice("batch_norm", s3, l3, "gradient")?;
        if self.params.len() != 4 * c {
            candle_core::bail!(
                "batch_norm backward: parameters for {} channels, input has {c}",
                self.params.len() / 4
            );
        }
        let (gb, st) = self.params.split_at(2 * c);
        let ab = affine(gb, st, self.eps);
        // The mask dy' = dy·[y > 0]: recomputed from x in training mode (one array fewer to
        // read in both passes); evaluation mode's forward has its own formula, so read y.
        let y = self.eval.then_some(y);
        let block = |i: usize, ch: usize, masked: &mut [f32]| {
            let o = (i * c + ch) * s;
            let (xs, dys) = (&x[o..o + s], &dy[o..o + s]);
            masked_gradient(self.relu, y.map(|y| &y[o..o + s]), xs, dys, ab[ch], masked);
        };
        // Per channel: Σ dy' and Σ dy'·(x − μ) (then ·1/σ for Σ dy'·x̂), float64.
        let raw = channel_sums((n, c, s), |i, ch, masked| {
            block(i, ch, masked);
            let (o, mean) = ((i * c + ch) * s, st[ch]);
            [
                lanes(masked, masked, |g, _| g),
                lanes(masked, &x[o..o + s], |g, xv| g * (xv - mean)),
            ]
        });
        let scaled = |raw: &[[f64; 2]]| -> Vec<(f64, f64)> {
            raw.iter()
                .enumerate()
                .map(|(ch, &[sd, sdx])| {
                    let inv = 1.0 / (f64::from(st[c + ch]) + self.eps).sqrt();
                    (sd, sdx * inv)
                })
                .collect()
        };
        let own = scaled(&raw);
        let mut out = super::zeros(len + 2 * c);
        let (dx, dgb) = out.split_at_mut(len);
        // dγ and dβ: this rank's own terms (the gradient all-reduce adds the ranks').
        for (ch, &(sd, sdx)) in own.iter().enumerate() {
            dgb[ch] = sdx as f32;
            dgb[c + ch] = sd as f32;
        }
        // dx: the batch's sums and size M, over every rank with global BatchNorm.
        let (sums, m) = match self.sync.as_ref().filter(|_| !self.eval) {
            None => (own, (n * s).max(1) as f64),
            Some(comm) => {
                let mut flat: Vec<f64> = raw.iter().flatten().copied().collect();
                flat.push((n * s) as f64);
                reduce(Some(comm), "BatchNorm backward sums", &mut flat)?;
                let m = flat.pop().unwrap_or(0.0).max(1.0);
                let global: Vec<[f64; 2]> = flat.chunks(2).map(|p| [p[0], p[1]]).collect();
                (scaled(&global), m)
            }
        };
        // dx = k·(dy' − Σdy'/M − x̂·Σdy'x̂/M) = k·dy' + b0 + b1·(x − μ), coefficients in f64.
        // (x − μ) is formed first: folding −b1·μ into b0 would leave b0 + b1·x to cancel in
        // f32 wherever |μ| ≫ σ, losing digits in exactly the channels whose mean is large.
        let coef: Vec<(f32, f32, f32, f32)> = sums
            .iter()
            .enumerate()
            .map(|(ch, &(sd, sdx))| {
                let inv = 1.0 / (f64::from(st[c + ch]) + self.eps).sqrt();
                let k = f64::from(gb[ch]) * inv;
                if self.eval {
                    return (k as f32, 0.0, 0.0, st[ch]);
                }
                let (md, mdx) = (sd / m, sdx / m);
                let b1 = -k * inv * mdx;
                (k as f32, (-k * md) as f32, b1 as f32, st[ch])
            })
            .collect();
        dx.par_chunks_mut((c * s).max(1)).enumerate().for_each_init(
            || vec![0.0f32; s],
            |masked, (i, dxi)| {
                for (ch, &(k, b0, b1, mean)) in coef.iter().enumerate() {
                    let o = (i * c + ch) * s;
                    block(i, ch, masked);
                    for ((d, &g), &xv) in dxi[ch * s..][..s]
                        .iter_mut()
                        .zip(masked.iter())
                        .zip(&x[o..o + s])
                    {
                        *d = k * g + b0 + b1 * (xv - mean);
                    }
                }
            },
        );
        Ok((CpuStorage::F32(out), Shape::from(len + 2 * c)))
    }
}

/// Whether [`batch_norm_train`] can run our kernel on `x` (f32 on the CPU, kernels enabled).
pub fn supported(x: &Tensor) -> bool {
    super::enabled() && x.device().is_cpu() && x.dtype() == candle_core::DType::F32
}

/// Training-mode BatchNorm (and ReLU with `relu`) of `x` `[N, C, ...]` with per-channel `gamma`
/// and `beta`; returns `y` and the batch statistics `[2, C]` (mean, biased variance) for the
/// running averages.
///
/// # Errors
/// Shapes that do not match, or a tensor our kernel does not take (see [`supported`]).
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, Tensor)> {
    batch_norm_train_synced(x, gamma, beta, eps, relu, None)
}

/// [`batch_norm_train`] with the statistics (and the backward pass's sums) over every rank of
/// `sync` (global BatchNorm).
///
/// # Errors
/// As [`batch_norm_train`], or a collective that failed.
pub fn batch_norm_train_synced(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
    sync: Option<Comm>,
) -> Result<(Tensor, Tensor)> {
    let x = x.contiguous()?;
    let stats = x.apply_op1_no_bwd(&ChannelStats { sync: sync.clone() })?;
    let gb = Tensor::stack(&[gamma, beta], 0)?;
    let y = x.apply_op3(&gb, &stats, BatchNormTrain { eps, relu, sync })?;
    Ok((y, stats))
}

/// A BatchNorm2d layer (`weight`, `bias`, `running_mean`, `running_var`, as torchvision's):
/// training mode normalises with batch statistics and updates the running averages (momentum
/// 0.1, unbiased variance, as PyTorch), through our kernel when [`supported`]; evaluation mode
/// uses the running averages. `forward(x, train, relu)` fuses a following ReLU.
#[derive(Clone, Debug)]
pub struct BatchNorm2d {
    inner: candle_nn::BatchNorm,
    gamma: Tensor,
    beta: Tensor,
    running_mean: candle_core::Var,
    running_var: candle_core::Var,
    eps: f64,
    momentum: f64,
    /// The variables' prefix (`layer1.0.bn1`).
    name: String,
}

impl BatchNorm2d {
    /// A layer over `c` channels; `zero_gamma` starts γ at 0 (zero-init residual).
    ///
    /// # Errors
    /// Variables of other shapes under the same names in `vb`.
    pub fn new(vb: candle_nn::VarBuilder<'_>, c: usize, zero_gamma: bool) -> Result<Self> {
        use candle_nn::Init::Const;
        let gamma = vb.get_with_hints(c, "weight", Const(if zero_gamma { 0.0 } else { 1.0 }))?;
        let beta = vb.get_with_hints(c, "bias", Const(0.0))?;
        let mean = vb.get_with_hints(c, "running_mean", Const(0.0))?;
        let var = vb.get_with_hints(c, "running_var", Const(1.0))?;
        let eps = 1e-5;
        Ok(Self {
            inner: candle_nn::BatchNorm::new(
                c,
                mean.clone(),
                var.clone(),
                gamma.clone(),
                beta.clone(),
                eps,
            )?,
            running_mean: candle_core::Var::from_tensor(&mean)?,
            running_var: candle_core::Var::from_tensor(&var)?,
            gamma,
            beta,
            eps,
            momentum: 0.1,
            name: vb.prefix(),
        })
    }

    /// Training mode over `groups` interleaved groups of samples (see [`set_groups`]); the
    /// running averages follow group 0's statistics (rank 0's, on `groups` ranks).
    fn forward_groups(&self, x: &Tensor, relu: bool, groups: usize) -> Result<Tensor> {
        let rows = x.dim(0)?;
        let mut order: Vec<u32> = Vec::with_capacity(rows);
        let mut parts = Vec::with_capacity(groups);
        for g in 0..groups {
            let idx: Vec<u32> = (0..rows as u32)
                .filter(|&i| (i as usize / 2) % groups == g)
                .collect();
            order.extend(&idx);
            let idx = Tensor::from_vec(idx.clone(), idx.len(), x.device())?;
            let xg = x.index_select(&idx, 0)?;
            let (y, stats) = batch_norm_train(&xg, &self.gamma, &self.beta, self.eps, relu)?;
            if g == 0 {
                self.update_running(&stats, xg.elem_count() / xg.dim(1)?)?;
            }
            parts.push(y);
        }
        let mut inverse = vec![0u32; rows];
        for (pos, &i) in order.iter().enumerate() {
            inverse[i as usize] = pos as u32;
        }
        let inverse = Tensor::from_vec(inverse, rows, x.device())?;
        Tensor::cat(&parts, 0)?.index_select(&inverse, 0)
    }

    /// Move the running averages towards batch statistics `stats` (`[2, C]`) of `m` values per
    /// channel (unbiased variance, momentum 0.1, as PyTorch).
    fn update_running(&self, stats: &Tensor, m: usize) -> Result<()> {
        let m = m as f64;
        let unbias = if m > 1.0 { m / (m - 1.0) } else { 1.0 };
        let k = self.momentum;
        self.running_mean
            .set(&((self.running_mean.as_tensor() * (1.0 - k))? + (stats.get(0)? * k)?)?)?;
        self.running_var
            .set(&((self.running_var.as_tensor() * (1.0 - k))? + (stats.get(1)? * (k * unbias))?)?)
    }

    /// Append the layer (inference mode) to `plan`, reading `x`.
    pub fn plan(&self, plan: &mut Plan, x: Value) -> Value {
        plan.batch_norm(&self.name, x, self.gamma.elem_count(), self.eps)
    }

    /// Normalise `x` `[N, C, H, W]`, then ReLU if `relu`.
    ///
    /// # Errors
    /// A shape that does not match the layer.
    pub fn forward(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        let groups = GROUPS.load(std::sync::atomic::Ordering::Relaxed);
        if train && supported(x) && groups > 1 && x.dim(0)? >= 2 * groups {
            return self.forward_groups(x, relu, groups);
        }
        if train && supported(x) {
            let sync = sync();
            let ranks = sync.as_ref().map_or(1, Comm::size);
            let (y, stats) =
                batch_norm_train_synced(x, &self.gamma, &self.beta, self.eps, relu, sync)?;
            // The global batch's size (every rank's local batch is the same size).
            self.update_running(&stats, x.elem_count() / x.dim(1)? * ranks)?;
            return Ok(y);
        }
        if !train && supported(x) {
            return batch_norm_eval(
                x,
                &self.gamma,
                &self.beta,
                self.running_mean.as_tensor(),
                self.running_var.as_tensor(),
                self.eps,
                relu,
            );
        }
        let y = candle_core::ModuleT::forward_t(&self.inner, x, train)?;
        if relu { y.relu() } else { Ok(y) }
    }
}
