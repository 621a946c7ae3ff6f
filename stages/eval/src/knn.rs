//! Weighted k-nearest-neighbour classification on cosine similarity (Wu et al. 2018, the
//! monitor most SimCLR code bases use): a query's k most similar bank features vote for their
//! labels with weight `exp(similarity / temperature)`; the class with the largest sum wins.

use candle_core::{Device, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::EvalError;

/// Settings of a kNN evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct KnnSettings {
    /// Neighbours that vote.
    pub k: usize,
    /// Temperature of the vote weights.
    pub temperature: f64,
}

impl Default for KnnSettings {
    fn default() -> Self {
        Self {
            k: 200,
            temperature: 0.1,
        }
    }
}

/// Accuracy of a kNN evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct KnnScore {
    /// Fraction of queries whose top class is right.
    pub top1: f64,
    /// Fraction whose right class is among the five best.
    pub top5: f64,
    /// Queries.
    pub queries: usize,
    /// Bank size.
    pub bank: usize,
}

/// Rows scaled to unit length (zero rows stay zero).
pub fn normalize_rows(x: &mut [f32], d: usize) {
    x.par_chunks_mut(d.max(1)).for_each(|row| {
        let norm = row
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            .sqrt();
        if norm > 0.0 {
            let inv = (1.0 / norm) as f32;
            row.iter_mut().for_each(|v| *v *= inv);
        }
    });
}

/// Class scores of every query: `[m][classes]`.
///
/// `bank` `[n, d]` and `queries` `[m, d]` are L2-normalised here (copies).
///
/// # Errors
/// Mismatched sizes or `k == 0`.
pub fn class_scores(
    bank: &[f32],
    bank_labels: &[u32],
    queries: &[f32],
    d: usize,
    classes: usize,
    settings: KnnSettings,
) -> Result<Vec<Vec<f64>>, EvalError> {
    let n = bank_labels.len();
    if d == 0 || bank.len() != n * d || !queries.len().is_multiple_of(d) {
        return Err(EvalError::Invalid(format!(
            "kNN: {} bank values for {n} labels of dimension {d}, {} query values",
            bank.len(),
            queries.len()
        )));
    }
    if settings.k == 0 || settings.temperature.is_nan() || settings.temperature <= 0.0 {
        return Err(EvalError::Invalid(
            "kNN: k must be at least 1 and the temperature positive".into(),
        ));
    }
    let k = settings.k.min(n);
    let mut b = bank.to_vec();
    normalize_rows(&mut b, d);
    let mut q = queries.to_vec();
    normalize_rows(&mut q, d);
    let bt = Tensor::from_vec(b, (n, d), &Device::Cpu)
        .and_then(|t| t.t())
        .map_err(EvalError::candle("kNN"))?;
    let mut out = Vec::with_capacity(q.len() / d);
    // 256 queries at a time: a [256, n] similarity block.
    for chunk in q.chunks(256 * d) {
        let sims = Tensor::from_slice(chunk, (chunk.len() / d, d), &Device::Cpu)
            .and_then(|t| t.matmul(&bt))
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(EvalError::candle("kNN"))?;
        let scores: Vec<Vec<f64>> = sims
            .par_chunks(n)
            .map(|row| {
                let mut idx: Vec<u32> = (0..n as u32).collect();
                // Most similar first; ties to the lower index, so the answer is deterministic.
                let order =
                    |a: &u32, b: &u32| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
                if k < n {
                    idx.select_nth_unstable_by(k - 1, order);
                }
                let mut votes = vec![0.0f64; classes];
                for &j in &idx[..k] {
                    let label = bank_labels[j as usize] as usize;
                    if label < classes {
                        votes[label] += (f64::from(row[j as usize]) / settings.temperature).exp();
                    }
                }
                votes
            })
            .collect();
        out.extend(scores);
    }
    Ok(out)
}

/// Rank of the true class among the scores (0 = best); ties count against the truth.
fn rank(scores: &[f64], truth: usize) -> usize {
    let t = scores.get(truth).copied().unwrap_or(f64::NEG_INFINITY);
    scores
        .iter()
        .enumerate()
        .filter(|&(c, &s)| c != truth && s >= t)
        .count()
}

/// Top-1 and top-5 accuracy of class scores against labels.
pub fn accuracy(scores: &[Vec<f64>], labels: &[u32]) -> (f64, f64) {
    let n = labels.len().max(1) as f64;
    let ranks: Vec<usize> = scores
        .iter()
        .zip(labels)
        .map(|(s, &l)| rank(s, l as usize))
        .collect();
    (
        ranks.iter().filter(|&&r| r == 0).count() as f64 / n,
        ranks.iter().filter(|&&r| r < 5).count() as f64 / n,
    )
}

/// kNN accuracy of `queries` against a labelled `bank`.
///
/// # Errors
/// As [`class_scores`].
pub fn evaluate(
    bank: &[f32],
    bank_labels: &[u32],
    queries: &[f32],
    query_labels: &[u32],
    d: usize,
    settings: KnnSettings,
) -> Result<KnnScore, EvalError> {
    let classes = bank_labels
        .iter()
        .chain(query_labels)
        .max()
        .map_or(0, |&m| m as usize + 1);
    let scores = class_scores(bank, bank_labels, queries, d, classes, settings)?;
    let (top1, top5) = accuracy(&scores, query_labels);
    Ok(KnnScore {
        top1,
        top5,
        queries: query_labels.len(),
        bank: bank_labels.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_vote() {
        // Bank in 2-D: two of class 0 near the x axis, one of class 1 on the y axis, one of
        // class 1 opposite the query.
        let bank = [1.0, 0.0, 0.8, 0.6, 0.0, 1.0, -1.0, 0.0];
        let labels = [0, 0, 1, 1];
        // Query at 45°: cos with the bank rows = 0.7071, 0.9899, 0.7071, -0.7071.
        let q = [1.0, 1.0];
        let s = KnnSettings {
            k: 3,
            temperature: 0.5,
        };
        let scores = class_scores(&bank, &labels, &q, 2, 2, s).expect("valid input");
        let c = std::f64::consts::FRAC_1_SQRT_2;
        let hand0 = (c / 0.5).exp() + ((0.8 * c + 0.6 * c) / 0.5).exp();
        let hand1 = (c / 0.5).exp();
        assert!((scores[0][0] - hand0).abs() < 1e-5, "{scores:?} vs {hand0}");
        assert!((scores[0][1] - hand1).abs() < 1e-5, "{scores:?} vs {hand1}");
        // k = 1: only the nearest (class 0) votes.
        let s1 = KnnSettings { k: 1, ..s };
        let scores = class_scores(&bank, &labels, &q, 2, 2, s1).expect("valid input");
        assert_eq!(scores[0][1], 0.0);
        // A query near the y axis with k = 2: class 1 (0.0,1.0) and class 0 (0.8,0.6) vote;
        // class 1's weight is larger, so top-1 is class 1.
        let r = evaluate(
            &bank,
            &labels,
            &[0.1, 1.0],
            &[1],
            2,
            KnnSettings {
                k: 2,
                temperature: 0.1,
            },
        )
        .expect("valid input");
        assert_eq!(r.top1, 1.0);
        let r = evaluate(
            &bank,
            &labels,
            &[0.1, 1.0],
            &[0],
            2,
            KnnSettings {
                k: 2,
                temperature: 0.1,
            },
        )
        .expect("valid input");
        assert_eq!((r.top1, r.top5), (0.0, 1.0));
    }

    #[test]
    fn ties_rank_against_the_truth() {
        assert_eq!(rank(&[1.0, 1.0, 0.5], 0), 1);
        assert_eq!(rank(&[2.0, 1.0, 0.5], 0), 0);
        assert_eq!(
            accuracy(&[vec![0.0, 3.0], vec![3.0, 0.0]], &[1, 1]),
            (0.5, 1.0)
        );
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(class_scores(&[1.0], &[0, 1], &[1.0], 1, 2, KnnSettings::default()).is_err());
        let s = KnnSettings {
            k: 0,
            temperature: 0.1,
        };
        assert!(class_scores(&[1.0], &[0], &[1.0], 1, 1, s).is_err());
    }
}
