//! The linear probe: multinomial logistic regression on frozen, standardised features.
//!
//! Features are standardised with the training split's per-dimension mean and standard
//! deviation (applied unchanged to the test split). The weights minimise the mean
//! cross-entropy plus `l2/2·‖W‖²` by full-batch Adam with a cosine-decayed step; the L2
//! strength is picked from a small grid on a held-out tenth of the training split (then the
//! probe is refitted on all of it), unless given. Only the probe's own weights are trained:
//! the features are plain numbers by the time they get here.

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::EvalError;

/// How the probe is trained.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProbeSettings {
    /// Full-batch optimisation steps.
    pub iterations: usize,
    /// Adam's initial step (cosine-decayed to 0).
    pub lr: f64,
    /// L2 strength; `None`: chosen from [`ProbeSettings::grid`] on a held-out tenth of the
    /// training split.
    pub l2: Option<f64>,
    /// Candidates for the L2 strength.
    pub grid: Vec<f64>,
}

impl Default for ProbeSettings {
    fn default() -> Self {
        Self {
            iterations: 500,
            lr: 0.05,
            l2: None,
            grid: vec![0.0, 1e-5, 1e-4, 1e-3, 1e-2],
        }
    }
}

/// What a probe achieved.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProbeScore {
    /// Top-1 accuracy on the test split.
    pub top1: f64,
    /// Top-5 accuracy on the test split.
    pub top5: f64,
    /// Top-1 accuracy on the training split.
    pub train_top1: f64,
    /// The L2 strength used.
    pub l2: f64,
    /// Held-out top-1 of each L2 candidate (empty when `l2` was given).
    pub l2_search: Vec<(f64, f64)>,
    /// Training and test examples.
    pub train: usize,
    /// Test examples.
    pub test: usize,
    /// Feature dimension.
    pub dim: usize,
}

/// Per-dimension mean and standard deviation of `x` `[n, d]`.
fn moments(x: &[f32], d: usize) -> (Vec<f32>, Vec<f32>) {
    let n = (x.len() / d.max(1)).max(1) as f64;
    let mut mean = vec![0.0f64; d];
    for row in x.chunks(d) {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += f64::from(v);
        }
    }
    mean.iter_mut().for_each(|m| *m /= n);
    let mut var = vec![0.0f64; d];
    for row in x.chunks(d) {
        for ((s, &v), m) in var.iter_mut().zip(row).zip(&mean) {
            *s += (f64::from(v) - m).powi(2);
        }
    }
    (
        mean.iter().map(|&m| m as f32).collect(),
        // Constant dimensions (e.g. dead ReLUs) are left at 0 rather than divided by 0.
        var.iter()
            .map(|&s| {
                let sd = (s / n).sqrt();
                if sd > 1e-8 { sd as f32 } else { 1.0 }
            })
            .collect(),
    )
}

fn standardise(x: &[f32], d: usize, mean: &[f32], sd: &[f32]) -> Vec<f32> {
    let mut out = x.to_vec();
    for row in out.chunks_mut(d) {
        for ((v, m), s) in row.iter_mut().zip(mean).zip(sd) {
            *v = (*v - m) / s;
        }
    }
    out
}

struct Fitted {
    w: Tensor,
    b: Tensor,
}

fn err(e: candle_core::Error) -> EvalError {
    EvalError::Candle {
        what: "linear probe",
        source: e,
    }
}

fn fit(
    x: &Tensor,
    labels: &[u32],
    classes: usize,
    l2: f64,
    s: &ProbeSettings,
) -> Result<Fitted, EvalError> {
    let (n, d) = x.dims2().map_err(err)?;
    let dev = Device::Cpu;
    let mut onehot = vec![0f32; n * classes];
    for (i, &l) in labels.iter().enumerate() {
        onehot[i * classes + l as usize] = 1.0;
    }
    let y = Tensor::from_vec(onehot, (n, classes), &dev).map_err(err)?;
    let xt = x.t().map_err(err)?.contiguous().map_err(err)?;
    let mut w = Tensor::zeros((d, classes), DType::F32, &dev).map_err(err)?;
    let mut b = Tensor::zeros(classes, DType::F32, &dev).map_err(err)?;
    let (mut mw, mut vw) = (w.zeros_like().map_err(err)?, w.zeros_like().map_err(err)?);
    let (mut mb, mut vb) = (b.zeros_like().map_err(err)?, b.zeros_like().map_err(err)?);
    let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8f64);
    let steps = s.iterations.max(1);
    for t in 1..=steps {
        let mut step = || -> candle_core::Result<()> {
            let logits = x.matmul(&w)?.broadcast_add(&b)?;
            let p = candle_nn::ops::softmax_last_dim(&logits)?;
            let g = ((p - &y)? / n as f64)?;
            let gw = (xt.matmul(&g)? + (&w * l2)?)?;
            let gb = g.sum(0)?;
            let lr =
                s.lr * 0.5 * (1.0 + (std::f64::consts::PI * (t - 1) as f64 / steps as f64).cos());
            let c1 = 1.0 - b1.powi(t as i32);
            let c2 = 1.0 - b2.powi(t as i32);
            mw = ((&mw * b1)? + (&gw * (1.0 - b1))?)?;
            vw = ((&vw * b2)? + (gw.sqr()? * (1.0 - b2))?)?;
            mb = ((&mb * b1)? + (&gb * (1.0 - b1))?)?;
            vb = ((&vb * b2)? + (gb.sqr()? * (1.0 - b2))?)?;
            w = (&w - (((&mw / c1)? / ((&vw / c2)?.sqrt()? + eps)?)? * lr)?)?;
            b = (&b - (((&mb / c1)? / ((&vb / c2)?.sqrt()? + eps)?)? * lr)?)?;
            Ok(())
        };
        step().map_err(err)?;
    }
    Ok(Fitted { w, b })
}

fn scores(f: &Fitted, x: &Tensor) -> Result<Vec<Vec<f64>>, EvalError> {
    let logits = x
        .matmul(&f.w)
        .and_then(|l| l.broadcast_add(&f.b))
        .and_then(|l| l.to_dtype(DType::F64))
        .and_then(|l| l.to_vec2::<f64>())
        .map_err(err)?;
    Ok(logits)
}

fn tensor(x: Vec<f32>, d: usize) -> Result<Tensor, EvalError> {
    let n = x.len() / d.max(1);
    Tensor::from_vec(x, (n, d), &Device::Cpu).map_err(err)
}

/// Train a probe on `(train, train_labels)` and score it on `(test, test_labels)`; features
/// are `[n, d]` row-major.
///
/// # Errors
/// Mismatched sizes, fewer than two classes, or a numerical failure.
pub fn probe(
    train: &[f32],
    train_labels: &[u32],
    test: &[f32],
    test_labels: &[u32],
    d: usize,
    settings: &ProbeSettings,
) -> Result<ProbeScore, EvalError> {
    if d == 0
        || train.len() != train_labels.len() * d
        || test.len() != test_labels.len() * d
        || train_labels.is_empty()
    {
        return Err(EvalError::Invalid(format!(
            "linear probe: {} train values for {} labels and {} test values for {} labels, dimension {d}",
            train.len(),
            train_labels.len(),
            test.len(),
            test_labels.len()
        )));
    }
    let classes = train_labels
        .iter()
        .chain(test_labels)
        .max()
        .map_or(0, |&m| m as usize + 1);
    if classes < 2 {
        return Err(EvalError::Invalid(
            "linear probe: the labels name fewer than two classes".into(),
        ));
    }
    let (mean, sd) = moments(train, d);
    let xtr = standardise(train, d, &mean, &sd);
    let xte = standardise(test, d, &mean, &sd);
    let mut l2_search = Vec::new();
    let l2 = match settings.l2 {
        Some(l2) => l2,
        None => {
            // Every tenth example held out (deterministic, spread over the split).
            let (mut fit_x, mut fit_y, mut val_x, mut val_y) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for (i, (row, &l)) in xtr.chunks(d).zip(train_labels).enumerate() {
                if i % 10 == 9 {
                    val_x.extend_from_slice(row);
                    val_y.push(l);
                } else {
                    fit_x.extend_from_slice(row);
                    fit_y.push(l);
                }
            }
            if val_y.is_empty() {
                settings.grid.first().copied().unwrap_or(0.0)
            } else {
                let (fx, vx) = (tensor(fit_x, d)?, tensor(val_x, d)?);
                let mut best = (f64::NEG_INFINITY, 0.0);
                for &l2 in &settings.grid {
                    let f = fit(&fx, &fit_y, classes, l2, settings)?;
                    let (acc, _) = crate::knn::accuracy(&scores(&f, &vx)?, &val_y);
                    l2_search.push((l2, acc));
                    // Ties go to the stronger regularisation.
                    if acc >= best.0 {
                        best = (acc, l2);
                    }
                }
                best.1
            }
        }
    };
    let (xtr, xte) = (tensor(xtr, d)?, tensor(xte, d)?);
    let fitted = fit(&xtr, train_labels, classes, l2, settings)?;
    let (train_top1, _) = crate::knn::accuracy(&scores(&fitted, &xtr)?, train_labels);
    let (top1, top5) = crate::knn::accuracy(&scores(&fitted, &xte)?, test_labels);
    Ok(ProbeScore {
        top1,
        top5,
        train_top1,
        l2,
        l2_search,
        train: train_labels.len(),
        test: test_labels.len(),
        dim: d,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gaussian-ish blobs around well-separated centres: a linear probe separates them.
    fn blobs(n: usize, d: usize, classes: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
        let mut rng = simclr_core::Rng::from_key(&[seed]);
        let mut x = Vec::with_capacity(n * d);
        let mut y = Vec::with_capacity(n);
        for i in 0..n {
            let c = i % classes;
            for j in 0..d {
                let centre = if j % classes == c { 4.0 } else { 0.0 };
                let noise: f64 = (0..4).map(|_| rng.next_f64() - 0.5).sum();
                x.push((centre + noise) as f32 + 100.0);
            }
            y.push(c as u32);
        }
        (x, y)
    }

    #[test]
    fn separable_blobs_are_learned() {
        let (xtr, ytr) = blobs(600, 12, 4, 1);
        let (xte, yte) = blobs(200, 12, 4, 2);
        let s = probe(&xtr, &ytr, &xte, &yte, 12, &ProbeSettings::default()).expect("valid input");
        assert!(s.top1 > 0.99, "{s:?}");
        assert!(s.train_top1 > 0.99, "{s:?}");
        assert_eq!(s.top5, 1.0);
        assert_eq!(s.l2_search.len(), 5);
    }

    #[test]
    fn labels_unrelated_to_features_stay_at_chance() {
        let (xtr, _) = blobs(600, 12, 4, 1);
        let (xte, _) = blobs(400, 12, 4, 2);
        // Labels from a different rule than the blobs: (i / 4) % 2 is independent of i % 4.
        let ytr: Vec<u32> = (0..600).map(|i| ((i / 4) % 2) as u32).collect();
        let yte: Vec<u32> = (0..400).map(|i| ((i / 4) % 2) as u32).collect();
        let s = probe(&xtr, &ytr, &xte, &yte, 12, &ProbeSettings::default()).expect("valid input");
        assert!(s.top1 < 0.6, "{s:?}");
    }

    #[test]
    fn mismatched_input_is_an_error() {
        let s = ProbeSettings::default();
        assert!(probe(&[1.0; 5], &[0, 1], &[1.0; 4], &[0, 1], 2, &s).is_err());
        assert!(probe(&[1.0; 4], &[0, 0], &[1.0; 4], &[0, 0], 2, &s).is_err());
    }
}
