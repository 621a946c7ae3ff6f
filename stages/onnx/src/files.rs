//! Files written atomically.

use std::io::Write;
use std::path::Path;

use crate::error::OnnxError;

/// Write `bytes` to `path` through a temporary file in the same folder (named after the
/// target and this process, so concurrent writers do not share it), synced, then renamed into
/// place: readers see the old file or the complete new one. The temporary file is removed when
/// anything fails. Creates the folder when needed.
///
/// # Errors
/// The folder cannot be created or the file written (the message names the path).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), OnnxError> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(dir) = parent {
        std::fs::create_dir_all(dir)
            .map_err(OnnxError::io(format!("cannot create {}", dir.display())))?;
    }
    let name = path
        .file_name()
        .ok_or_else(|| OnnxError::file(path, "not a file name"))?
        .to_string_lossy();
    let tmp = parent
        .unwrap_or(Path::new("."))
        .join(format!(".{name}.{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        std::fs::remove_file(&tmp).ok();
        OnnxError::io(format!("cannot write {}", path.display()))(e)
    })
}
