//! Files written atomically.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::OnnxError;

/// Write `bytes` to `path`. A new file, or an existing regular file, is written through a
/// temporary file in the same folder (named after the target and this process, so concurrent
/// writers do not share it), synced, then renamed into place: readers see the old file or the
/// complete new one, and the temporary file is removed when anything fails. Through a symbolic
/// link, the file it points to is the one replaced. Anything else already there — a device
/// (`/dev/null`, `/dev/full`), a pipe — is written in place, as `cp` would, so a failure there
/// is reported and the node itself stays; a folder is an error. Creates the parent folder
/// when needed.
///
/// # Errors
/// The folder cannot be created, `path` is a folder, or the file cannot be written (the
/// message names the path).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), OnnxError> {
    let target = resolve(path)?;
    if let Ok(meta) = std::fs::metadata(&target) {
        if meta.is_dir() {
            return Err(OnnxError::file(path, "is a folder; name a file to write"));
        }
        if !meta.is_file() {
            return std::fs::OpenOptions::new()
                .write(true)
                .open(&target)
                .and_then(|mut f| f.write_all(bytes).and_then(|()| f.flush()))
                .map_err(OnnxError::io(format!("cannot write {}", path.display())));
        }
    }
    let parent = target.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(dir) = parent {
        std::fs::create_dir_all(dir)
            .map_err(OnnxError::io(format!("cannot create {}", dir.display())))?;
    }
    let name = target
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
        std::fs::rename(&tmp, &target)
    };
    write().map_err(|e| {
        std::fs::remove_file(&tmp).ok();
        OnnxError::io(format!("cannot write {}", path.display()))(e)
    })
}

/// The file a path names: through every symbolic link (a dangling one names the file it
/// would create).
fn resolve(path: &Path) -> Result<PathBuf, OnnxError> {
    let mut target = path.to_owned();
    for _ in 0..40 {
        match std::fs::symlink_metadata(&target) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let link = std::fs::read_link(&target).map_err(OnnxError::io(format!(
                    "cannot read the link {}",
                    target.display()
                )))?;
                target = match target.parent() {
                    Some(dir) if link.is_relative() => dir.join(link),
                    _ => link,
                };
            }
            _ => return Ok(target),
        }
    }
    Err(OnnxError::file(path, "too many levels of symbolic links"))
}
