//! ONNX Runtime through `ort`, loaded at run time (`load-dynamic`): nothing is linked or
//! downloaded at build time, and a machine without the library gets an error that says what to
//! install instead of a panic.
//!
//! The library is looked for, in order:
//! 1. `ORT_DYLIB_PATH` (a path to `libonnxruntime.so*`); when set, only there;
//! 2. the `onnxruntime` Python package of `python3` (`pip install onnxruntime==1.31.1` ships the
//!    library in `onnxruntime/capi/`), found without importing it.
//!
//! Nothing is loaded from the current folder: a checkout cannot plant a library.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::Tensor;

use crate::error::OnnxError;

/// What to do when no library is found.
pub const INSTALL_HINT: &str = "install ONNX Runtime 1.31 or newer: `pip install onnxruntime==1.31.1` \
(the wheel ships libonnxruntime.so), or point ORT_DYLIB_PATH at a libonnxruntime.so";

static ENVIRONMENT: OnceLock<Result<(ort::environment::Environment, PathBuf), String>> =
    OnceLock::new();

/// The process's ONNX Runtime environment (loaded on first use) and the library it came from.
///
/// # Errors
/// No usable library: the message lists where it looked and what to install.
pub fn environment() -> Result<&'static (ort::environment::Environment, PathBuf), OnnxError> {
    ENVIRONMENT
        .get_or_init(|| {
            let mut tried = Vec::new();
            for candidate in candidates(&mut tried).map_err(|NotFound(why)| why)? {
                match ort::init_from(&candidate) {
                    Ok(builder) => {
                        let env = builder
                            .with_name("simclr")
                            .build()
                            .map_err(|e| format!("ONNX Runtime ({}): {e}", candidate.display()))?;
                        return Ok((env, candidate));
                    }
                    Err(e) => tried.push(format!("{}: {e}", candidate.display())),
                }
            }
            Err(format!(
                "ONNX Runtime library not found ({}); {INSTALL_HINT}",
                tried.join("; ")
            ))
        })
        .as_ref()
        .map_err(|message| OnnxError::NoRuntime(message.clone()))
}

/// The library files to try, in order; `tried` collects where nothing was found.
fn candidates(tried: &mut Vec<String>) -> Result<Vec<PathBuf>, NotFound> {
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            return Err(NotFound(format!(
                "ORT_DYLIB_PATH is {}, which is not a file; {INSTALL_HINT}",
                path.display()
            )));
        }
        return Ok(vec![path]);
    }
    tried.push("ORT_DYLIB_PATH is not set".into());
    let mut found = Vec::new();
    match python_package() {
        Ok(dir) => match library_in(&dir.join("capi")) {
            Some(p) => found.push(p),
            None => tried.push(format!("no library in {}/capi", dir.display())),
        },
        Err(NotFound(why)) => tried.push(why),
    }
    Ok(found)
}

/// Why no library was found (a line of the message that lists where it looked).
struct NotFound(String);

/// `libonnxruntime.so*` in `dir` (the versioned file when several).
fn library_in(dir: &Path) -> Option<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libonnxruntime.so") || n == "libonnxruntime.dylib")
        })
        .collect();
    files.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    files.into_iter().next()
}

/// The folder of the `onnxruntime` Python package, asked of `python3` without importing it.
fn python_package() -> Result<PathBuf, NotFound> {
    let script = "import importlib.util as u\ns = u.find_spec('onnxruntime')\n\
                  print(s.submodule_search_locations[0] if s and s.submodule_search_locations else '')";
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .map_err(|e| NotFound(format!("python3 not runnable ({e})")))?;
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || dir.is_empty() {
        return Err(NotFound("python3 has no `onnxruntime` package".into()));
    }
    Ok(PathBuf::from(dir))
}

/// A float32 tensor: shape and row-major values.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    /// The output's name.
    pub name: String,
    /// Its shape.
    pub dims: Vec<usize>,
    /// Its values.
    pub data: Vec<f32>,
}

/// An ONNX model in an ONNX Runtime session, with its metadata.
pub struct OnnxModel {
    session: Session,
    input: String,
    outputs: Vec<String>,
    metadata: BTreeMap<String, String>,
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel")
            .field("input", &self.input)
            .field("outputs", &self.outputs)
            .finish_non_exhaustive()
    }
}

fn builder(threads: usize) -> Result<ort::session::builder::SessionBuilder, OnnxError> {
    let (env, _) = environment()?;
    let b = Session::builder(env).map_err(OnnxError::runtime("ONNX Runtime"))?;
    let b = b
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(OnnxError::runtime("ONNX Runtime"))?;
    let b = if threads > 0 {
        b.with_intra_threads(threads)
            .map_err(OnnxError::runtime("ONNX Runtime"))?
    } else {
        b
    };
    Ok(b)
}

impl OnnxModel {
    /// Load a model file; `threads` intra-op threads (0: ONNX Runtime's default, one per core).
    ///
    /// # Errors
    /// No ONNX Runtime, a file it refuses (its message, with the path), or one whose weights
    /// do not match the checksum its metadata records ([`crate::checksum`]).
    pub fn load(path: &Path, threads: usize) -> Result<Self, OnnxError> {
        let bytes = std::fs::read(path).map_err(|e| OnnxError::file(path, e.to_string()))?;
        crate::checksum::verify(&bytes).map_err(|e| OnnxError::file(path, e.to_string()))?;
        let session = builder(threads)?
            .commit_from_memory(&bytes)
            .map_err(OnnxError::runtime(format!(
                "{}: ONNX Runtime cannot load it",
                path.display()
            )))?;
        Self::from_session(session)
    }

    /// Load a model from its bytes.
    ///
    /// # Errors
    /// As [`OnnxModel::load`].
    pub fn from_bytes(bytes: &[u8], threads: usize) -> Result<Self, OnnxError> {
        crate::checksum::verify(bytes).map_err(|e| OnnxError::Message(e.to_string()))?;
        let session = builder(threads)?
            .commit_from_memory(bytes)
            .map_err(OnnxError::runtime("ONNX Runtime cannot load the model"))?;
        Self::from_session(session)
    }

    fn from_session(session: Session) -> Result<Self, OnnxError> {
        let input = match session.inputs() {
            [one] => one.name().to_owned(),
            other => {
                return Err(OnnxError::Message(format!(
                    "the model has {} inputs; an encoder has one (images)",
                    other.len()
                )));
            }
        };
        let outputs = session
            .outputs()
            .iter()
            .map(|o| o.name().to_owned())
            .collect();
        let mut metadata = BTreeMap::new();
        if let Ok(m) = session.metadata() {
            for key in m.custom_keys().unwrap_or_default() {
                if let Some(v) = m.custom(&key) {
                    metadata.insert(key, v);
                }
            }
        }
        Ok(Self {
            session,
            input,
            outputs,
            metadata,
        })
    }

    /// The model's `metadata_props`.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The input's name.
    pub fn input_name(&self) -> &str {
        &self.input
    }

    /// The outputs' names, in graph order.
    pub fn output_names(&self) -> &[String] {
        &self.outputs
    }

    /// Run a batch `x` of shape `dims`; every output, in graph order.
    ///
    /// # Errors
    /// A shape the model does not take, or a failure inside ONNX Runtime.
    pub fn run(&mut self, x: &[f32], dims: &[usize]) -> Result<Vec<Output>, OnnxError> {
        let shape: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
        let tensor = Tensor::from_array((shape, x.to_vec()))
            .map_err(OnnxError::runtime("ONNX Runtime input"))?;
        let outputs = self
            .session
            .run(ort::inputs![self.input.as_str() => tensor])
            .map_err(OnnxError::runtime("ONNX Runtime"))?;
        self.outputs
            .iter()
            .map(|name| {
                let (shape, data) = outputs[name.as_str()]
                    .try_extract_tensor::<f32>()
                    .map_err(OnnxError::runtime(format!("output `{name}`")))?;
                Ok(Output {
                    name: name.clone(),
                    dims: shape.iter().map(|&d| d.max(0) as usize).collect(),
                    data: data.to_vec(),
                })
            })
            .collect()
    }
}
