//! Sizes and ranges as definitions write them, and the checks the transforms share.

use std::fmt;

use schemars::JsonSchema;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use simclr_core::value::join_path;
use simclr_core::{ParamError, Value};

use crate::transform::{Params, TransformError, invalid};

/// `32` or `[height, width]`, each side from 1 to [`MAX_SIDE`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Size(pub u32, pub u32);

/// The largest side a transform produces: 8192 px (an 8192² RGB view is 0.8 GB in float32;
/// beyond that a typo, not an experiment, and the allocation would abort the process).
pub const MAX_SIDE: u32 = 8192;

fn side<E: de::Error>(v: i64) -> Result<u32, E> {
    match u32::try_from(v) {
        Ok(s) if (1..=MAX_SIDE).contains(&s) => Ok(s),
        Ok(s) if s > MAX_SIDE => Err(E::custom(format!(
            "size {s} is larger than the largest supported side, {MAX_SIDE}"
        ))),
        _ if v > 0 => Err(E::custom(format!(
            "size {v} is larger than the largest supported side, {MAX_SIDE}"
        ))),
        _ => Err(E::custom(format!("size must be positive, found {v}"))),
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size: one integer, or [height, width]")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                let s = side(v)?;
                Ok(Size(s, s))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Size, A::Error> {
                let h: i64 = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::custom("expected [height, width]"))?;
                let w: i64 = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::custom("expected [height, width]"))?;
                if seq.next_element::<i64>()?.is_some() || h <= 0 || w <= 0 {
                    return Err(de::Error::custom(
                        "expected [height, width] of two positive integers",
                    ));
                }
                Ok(Size(side(h)?, side(w)?))
            }
        }
        d.deserialize_any(V)
    }
}

/// `0.4` (meaning a range around a centre) or `[lo, hi]`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, JsonSchema)]
pub struct Spread(pub Option<f64>, pub Option<(f64, f64)>);

impl<'de> Deserialize<'de> for Spread {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Spread;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number, or [min, max]")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Spread, E> {
                Ok(Spread(Some(v), None))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Spread, E> {
                Ok(Spread(Some(v as f64), None))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Spread, E> {
                Ok(Spread(Some(v as f64), None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Spread, A::Error> {
                let lo: f64 = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::custom("expected [min, max]"))?;
                let hi: f64 = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::custom("expected [min, max]"))?;
                if seq.next_element::<f64>()?.is_some() {
                    return Err(de::Error::custom("expected [min, max]"));
                }
                Ok(Spread(None, Some((lo, hi))))
            }
        }
        d.deserialize_any(V)
    }
}

impl Spread {
    /// The range: `x` means `[center - x, center + x]` clipped at `floor`.
    pub(super) fn range(self, center: f64, floor: f64) -> (f64, f64) {
        match self {
            Spread(_, Some(r)) => r,
            Spread(Some(x), _) => ((center - x).max(floor), center + x),
            Spread(None, None) => (center, center),
        }
    }
}

pub(super) fn check_p(node: &Value, path: &str, p: f64) -> Result<(), ParamError> {
    if (0.0..=1.0).contains(&p) {
        Ok(())
    } else {
        Err(invalid(
            node.get("p").unwrap_or(node),
            &join_path(path, "p"),
            format!("`p` must be a probability in [0, 1], found {p}"),
            "0 never applies, 1 always",
        ))
    }
}

/// Check a `[min, max]` parameter: `0 < min <= max` (and `max <= upper` when given).
pub(super) fn check_range(
    node: &Value,
    path: &str,
    key: &str,
    (lo, hi): (f64, f64),
    upper: Option<f64>,
    help: &str,
) -> Result<(), ParamError> {
    if 0.0 < lo && lo <= hi && upper.is_none_or(|u| hi <= u) {
        return Ok(());
    }
    let bound = upper.map_or(String::new(), |u| format!(" <= {u}"));
    Err(invalid(
        node.get(key).unwrap_or(node),
        &join_path(path, key),
        format!("`{key}` must satisfy 0 < min <= max{bound}, found [{lo}, {hi}]"),
        help,
    ))
}

pub(super) fn wrong(expected: &str, got: &Params) -> TransformError {
    TransformError(format!("expected {expected} parameters, got {got:?}"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ProbConfig {
    #[serde(default = "half")]
    pub(super) p: f64,
}

pub(super) fn half() -> f64 {
    0.5
}

/// One value for every channel, or a list of one per channel (1 or 3), as `fill` and `value`
/// take them.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum PerChannel {
    Number(f64),
    List(Vec<f64>),
}

impl PerChannel {
    /// The values, or `None` for a list that is neither 1 nor 3 long.
    pub(super) fn values(&self) -> Option<Vec<f32>> {
        match self {
            PerChannel::Number(v) => Some(vec![*v as f32]),
            PerChannel::List(v) if matches!(v.len(), 1 | 3) => {
                Some(v.iter().map(|&x| x as f32).collect())
            }
            PerChannel::List(_) => None,
        }
    }
}
