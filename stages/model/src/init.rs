//! Seeded parameter initialisation.
//!
//! candle's CPU backend draws initial weights from an unseedable thread-local generator, so two
//! runs with the same definition would start from different weights. After a model is built,
//! [`seeded`] overwrites every randomly initialised tensor of its variable map with values from
//! the project's own generator, keyed by the seed, the stage id and the parameter name (so the
//! values do not depend on the order variables were created in), using torchvision's
//! distributions:
//!
//! - convolution weights (4-D): Kaiming normal, fan-out, ReLU gain: `N(0, 2 / fan_out)`
//!   (`torchvision.models.resnet`);
//! - linear weights (2-D) and the biases of linear layers: `U(-1/√fan_in, 1/√fan_in)`
//!   (`torch.nn.Linear`'s default);
//! - everything else (BatchNorm γ, β and running statistics) keeps its constant initial value.

use candle_core::{Result, Tensor};
use candle_nn::VarMap;
use simclr_core::Rng;

/// A stable 64-bit hash of a name (FNV-1a), for keying the generator.
pub fn name_key(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Re-initialise the random parameters of `map` from `seed` and `stage` (see the module docs).
///
/// # Errors
/// A poisoned map or a failed tensor write.
pub fn seeded(map: &VarMap, seed: u64, stage: &str) -> Result<()> {
    let data = map
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("variable map poisoned".into()))?;
    for (name, var) in data.iter() {
        let dims = var.dims().to_vec();
        let fan_in_of_linear = |weight: &str| {
            data.get(weight)
                .filter(|w| w.rank() == 2)
                .map(|w| w.dims()[1])
        };
        let mut rng = Rng::from_key(&[seed, name_key(stage), name_key(name)]);
        let n: usize = dims.iter().product();
        let values: Vec<f32> = match dims.len() {
            4 if name.ends_with("weight") => {
                let fan_out = dims[0] * dims[2] * dims[3];
                let std = (2.0 / fan_out as f64).sqrt();
                (0..n).map(|_| (std * rng.normal()) as f32).collect()
            }
            2 if name.ends_with("weight") => {
                let bound = 1.0 / (dims[1] as f64).sqrt();
                (0..n).map(|_| rng.uniform(-bound, bound) as f32).collect()
            }
            1 if name.ends_with(".bias") => {
                let weight = format!("{}weight", &name[..name.len() - "bias".len()]);
                match fan_in_of_linear(&weight) {
                    Some(fan_in) => {
                        let bound = 1.0 / (fan_in as f64).sqrt();
                        (0..n).map(|_| rng.uniform(-bound, bound) as f32).collect()
                    }
                    None => continue,
                }
            }
            _ => continue,
        };
        let t = Tensor::from_vec(values, dims, var.device())?.to_dtype(var.dtype())?;
        var.set(&t)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarBuilder;

    fn build(seed: u64) -> Vec<(String, Vec<f32>)> {
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
        candle_nn::linear(8, 4, vb.pp("head.0")).expect("linear");
        candle_nn::conv2d_no_bias(3, 16, 3, Default::default(), vb.pp("conv1")).expect("conv");
        seeded(&map, seed, "encoder").expect("init");
        let data = map.data().lock().expect("lock");
        let mut out: Vec<(String, Vec<f32>)> = data
            .iter()
            .map(|(n, v)| {
                let flat = v.as_tensor().flatten_all().expect("flat");
                (n.clone(), flat.to_vec1::<f32>().expect("vec"))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    #[test]
    fn same_seed_same_weights_other_seed_other_weights() {
        let (a, b, c) = (build(7), build(7), build(8));
        assert_eq!(a, b);
        assert_ne!(a, c);
        // Distributions: conv std √(2/144) ≈ 0.118; linear bound 1/√8 ≈ 0.354.
        let conv = &a.iter().find(|(n, _)| n == "conv1.weight").expect("conv").1;
        let std = (conv.iter().map(|x| x * x).sum::<f32>() / conv.len() as f32).sqrt();
        assert!((std - 0.118).abs() < 0.03, "conv std {std}");
        for name in ["head.0.weight", "head.0.bias"] {
            let v = &a.iter().find(|(n, _)| n == name).expect("linear").1;
            assert!(
                v.iter().all(|x| x.abs() <= 0.3536),
                "{name} within the bound"
            );
            assert!(
                v.iter().any(|x| x.abs() > 0.1),
                "{name} is random, not constant"
            );
        }
    }
}
