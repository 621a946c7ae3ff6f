//! Learning-rate scaling and schedules.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How the base learning rate scales with the batch size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LrScaling {
    /// `base · B / 256` (SimCLR with LARS: 0.3 · B / 256).
    #[default]
    Linear,
    /// `base · √B` (SimCLR's small-batch alternative: 0.075 · √B).
    Sqrt,
    /// `base` as given.
    None,
}

impl LrScaling {
    /// The peak learning rate for `batch_size` samples (N, not 2N views).
    pub fn peak(self, base: f64, batch_size: usize) -> f64 {
        match self {
            LrScaling::Linear => base * batch_size as f64 / 256.0,
            LrScaling::Sqrt => base * (batch_size as f64).sqrt(),
            LrScaling::None => base,
        }
    }
}

/// Linear warm-up to `peak` over `warmup` steps, then cosine decay to 0 at `total`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WarmupCosine {
    /// Peak learning rate.
    pub peak: f64,
    /// Warm-up steps.
    pub warmup: u64,
    /// Total steps.
    pub total: u64,
}

impl WarmupCosine {
    /// The learning rate of step `step` (from 0).
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup {
            return self.peak * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1) as f64;
        let progress = ((step - self.warmup) as f64 / span).min(1.0);
        self.peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_rules_match_the_paper() {
        assert!((LrScaling::Linear.peak(0.3, 4096) - 4.8).abs() < 1e-12);
        assert!((LrScaling::Sqrt.peak(0.075, 4096) - 4.8).abs() < 1e-12);
        assert_eq!(LrScaling::None.peak(0.1, 512), 0.1);
    }

    #[test]
    fn warmup_then_cosine() {
        let s = WarmupCosine {
            peak: 1.0,
            warmup: 10,
            total: 110,
        };
        assert!((s.lr(0) - 0.1).abs() < 1e-12);
        assert!((s.lr(9) - 1.0).abs() < 1e-12);
        assert!((s.lr(10) - 1.0).abs() < 1e-12);
        assert!((s.lr(60) - 0.5).abs() < 1e-12);
        assert!(s.lr(109) < 0.001 && s.lr(200) == 0.0);
    }
}
