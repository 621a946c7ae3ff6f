//! Our own CPU kernels, wrapped as candle custom ops so candle's autograd drives them.

pub mod conv;
pub mod gemm;
