//! NT-Xent, the normalized temperature-scaled cross-entropy loss of SimCLR.
//!
//! > "ℓ(i,j) = −log exp(sim(z_i, z_j)/τ) / Σ_{k≠i} exp(sim(z_i, z_k)/τ) ... The final loss is
//! > computed across all positive pairs, both (i, j) and (j, i), in a mini-batch."
//! > — \[0\] SimCLR, Chen et al. 2020, arXiv:2002.05709, eq. (1).

use candle_core::{D, Result, Tensor};

/// Added to the similarity of a view with itself so it drops out of the softmax.
const SELF_MASK: f64 = -1e9;

/// NT-Xent over `2N` projections where rows `2k` and `2k + 1` are the two views of sample
/// `k` (the `batch` stage's layout). Returns the mean over all `2N` views.
///
/// # Shapes
/// `z`: `[2N, d]` → scalar.
///
/// # Errors
/// A `z` that is not 2-D with an even, non-zero number of rows, or a non-positive
/// temperature.
pub fn nt_xent(z: &Tensor, temperature: f64) -> Result<Tensor> {
    let (rows, _d) = z.dims2()?;
    if rows == 0 || rows % 2 != 0 {
        candle_core::bail!("nt_xent: expected an even, non-zero number of views, got {rows}");
    }
    if temperature.is_nan() || temperature <= 0.0 {
        candle_core::bail!("nt_xent: temperature must be positive, got {temperature}");
    }
    // Cosine similarity: normalise rows (as F.normalize, with the norm floored at 1e-12).
    let norm = z
        .sqr()?
        .sum_keepdim(1)?
        .sqrt()?
        .clamp(1e-12, f64::INFINITY)?;
    let zn = z.broadcast_div(&norm)?;
    // sim: [2N, 2N], scaled by 1/τ, the diagonal masked out.
    let sim = (zn.matmul(&zn.t()?)? / temperature)?;
    let eye = Tensor::eye(rows, z.dtype(), z.device())?;
    let sim = (sim + (eye * SELF_MASK)?)?;
    let log_prob = candle_nn::ops::log_softmax(&sim, D::Minus1)?;
    // The positive of view i is its partner i ^ 1.
    let partner: Vec<u32> = (0..rows as u32).map(|i| i ^ 1).collect();
    let partner = Tensor::from_vec(partner, (rows, 1), z.device())?;
    let positive = log_prob.gather(&partner, 1)?;
    positive.mean_all()?.neg()
}
