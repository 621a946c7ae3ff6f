//! Where a definition's models run and how strictly they compute: its `device:` and
//! `precision:`, parsed once when the definition is read.

use std::fmt;
use std::str::FromStr;

/// A definition's `device:`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DeviceSpec {
    /// `cpu` (the default).
    #[default]
    Cpu,
    /// `cuda` (`None`: the first GPU, as written) or `cuda:N`.
    Cuda(Option<usize>),
    /// `auto`: the first GPU when the build and the machine have one, else the CPU.
    Auto,
}

impl DeviceSpec {
    /// Whether it names the CPU (not `auto`, which may pick it).
    pub fn is_cpu(self) -> bool {
        self == Self::Cpu
    }

    /// Whether it asks for a GPU by name (`cuda`, `cuda:N`).
    pub fn is_cuda(self) -> bool {
        matches!(self, Self::Cuda(_))
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(None) => f.write_str("cuda"),
            Self::Cuda(Some(n)) => write!(f, "cuda:{n}"),
            Self::Auto => f.write_str("auto"),
        }
    }
}

/// A `device:` that is none of `cpu`, `cuda`, `cuda:N`, `auto`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown device `{0}` (cpu, cuda, cuda:N or auto)")]
pub struct UnknownDevice(pub String);

impl FromStr for DeviceSpec {
    type Err = UnknownDevice;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(None)),
            "auto" => Ok(Self::Auto),
            other => other
                .strip_prefix("cuda:")
                .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
                .and_then(|n| n.parse().ok())
                .map(|n| Self::Cuda(Some(n)))
                .ok_or_else(|| UnknownDevice(other.to_owned())),
        }
    }
}

/// A definition's `precision:` for float32 work on CUDA.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// `fp32`: strict float32 (the default).
    #[default]
    Fp32,
    /// `tf32`: TensorFloat-32 matrix products and convolutions on CUDA tensor cores (10-bit
    /// mantissa products, float32 accumulation), as PyTorch's `allow_tf32`.
    Tf32,
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Fp32 => "fp32",
            Self::Tf32 => "tf32",
        })
    }
}

/// A `precision:` that is neither `fp32` nor `tf32`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown precision `{0}` (fp32 or tf32)")]
pub struct UnknownPrecision(pub String);

impl FromStr for Precision {
    type Err = UnknownPrecision;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fp32" => Ok(Self::Fp32),
            "tf32" => Ok(Self::Tf32),
            other => Err(UnknownPrecision(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_print_as_written() {
        for text in ["cpu", "cuda", "cuda:0", "cuda:3", "auto"] {
            let d: DeviceSpec = text.parse().expect(text);
            assert_eq!(d.to_string(), text);
        }
        assert_eq!("cuda".parse(), Ok(DeviceSpec::Cuda(None)));
        assert_eq!("cuda:2".parse(), Ok(DeviceSpec::Cuda(Some(2))));
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", "cuda:+1", "CPU", ""] {
            assert!(bad.parse::<DeviceSpec>().is_err(), "{bad}");
        }
        assert_eq!("tf32".parse(), Ok(Precision::Tf32));
        assert!("fp16".parse::<Precision>().is_err());
    }
}
