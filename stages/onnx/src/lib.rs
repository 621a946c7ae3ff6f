//! ONNX export of trained encoders, written by the project (no Rust library writes ONNX),
//! verified against candle through ONNX Runtime, and inference with ONNX Runtime for `embed`.
//!
//! - [`export`]: the graph of any encoder, written by walking its layer plan
//!   (`simclr_stage_model::encoder::plan`), and of the projection heads; BatchNorm folded or in
//!   inference mode, symbolic batch dimension.
//! - [`exporter`]: a checkpoint to a verified ONNX file (`simclr export` as a library call);
//!   [`embed`]: the [`embed::Embedder`] behind `simclr embed`; [`error`]: what fails.
//! - [`meta`]: the preprocessing a consumer needs, as the model's `metadata_props`.
//! - [`runtime`]: ONNX Runtime loaded at run time, with a clear error when it is missing.
//! - [`verify`]: ONNX Runtime against candle on the same inputs.
//! - [`npy`]: `.npy` files in and out; [`files`]: atomic writes; [`checksum`]: the weights'
//!   SHA-256 an export records and every load verifies.

pub mod checksum;
pub mod embed;
pub mod error;
pub mod export;
pub mod exporter;
pub mod files;
pub mod meta;
pub mod npy;
pub mod proto;
pub mod runtime;
pub mod verify;
