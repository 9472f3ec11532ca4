//! Small filesystem helpers shared by every writer of checkpoints and outputs.

use std::io::Write;
use std::path::Path;

use crate::error::{ModelError, Result};

/// Writes `bytes` to `path` atomically (through [`AtomicFile`]): readers see the old file or
/// the new one, never a partial write.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let file = AtomicFile::create(path)?;
    file.file()
        .write_all(bytes)
        .map_err(|e| ModelError::io(path, e))?;
    file.persist()
}

/// The directory a file at `path` goes in (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A file written in place of `path` all at once: until [`AtomicFile::persist`] it has no name
/// on Linux (an `O_TMPFILE`, which vanishes if the process is killed), elsewhere a hidden temp
/// file beside `path`. Created with the usual `0666 & ~umask` permissions, like `File::create`.
pub struct AtomicFile {
    file: std::fs::File,
    path: std::path::PathBuf,
    /// The temp file's name where the platform needs one.
    named: Option<std::path::PathBuf>,
}

impl AtomicFile {
    pub fn create(path: &Path) -> Result<Self> {
        let dir = parent_dir(path);
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::fs::OpenOptionsExt;
            let unnamed = std::fs::OpenOptions::new()
                .write(true)
                .mode(0o666)
                .custom_flags(libc::O_TMPFILE)
                .open(dir);
            if let Ok(file) = unnamed {
                return Ok(Self {
                    file,
                    path: path.to_path_buf(),
                    named: None,
                });
            }
        }
        let tmp = temp_name(dir, path);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| ModelError::io(&tmp, e))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            named: Some(tmp),
        })
    }

    pub fn file(&self) -> &std::fs::File {
        &self.file
    }

    /// Flushes to disk and gives the file its name, replacing any file there.
    pub fn persist(self) -> Result<()> {
        let path = self.path.clone();
        self.file.sync_all().map_err(|e| ModelError::io(&path, e))?;
        let tmp = match &self.named {
            Some(tmp) => tmp.clone(),
            None => self.link_unnamed()?,
        };
        std::fs::rename(&tmp, &path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            ModelError::io(&path, e)
        })
    }

    /// Links the unnamed file under a temp name (`linkat` through `/proc/self/fd`, as
    /// open(2) documents for `O_TMPFILE`), to be renamed over the target.
    #[cfg(target_os = "linux")]
    fn link_unnamed(&self) -> Result<std::path::PathBuf> {
        use std::ffi::CString;
        use std::os::fd::AsRawFd;
        use std::os::unix::ffi::OsStrExt;
        let tmp = temp_name(parent_dir(&self.path), &self.path);
        let _ = std::fs::remove_file(&tmp);
        let fd_path = CString::new(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
            .expect("no NUL in a number");
        let c_tmp = CString::new(tmp.as_os_str().as_bytes())
            .map_err(|_| ModelError::Other(format!("{}: NUL in the path", tmp.display())))?;
        // SAFETY: both arguments are valid NUL-terminated paths that outlive the call.
        let rc = unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                fd_path.as_ptr(),
                libc::AT_FDCWD,
                c_tmp.as_ptr(),
                libc::AT_SYMLINK_FOLLOW,
            )
        };
        if rc != 0 {
            return Err(ModelError::io(&self.path, std::io::Error::last_os_error()));
        }
        Ok(tmp)
    }

    #[cfg(not(target_os = "linux"))]
    fn link_unnamed(&self) -> Result<std::path::PathBuf> {
        unreachable!("only Linux creates unnamed files")
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        // Not persisted (an error on the way): the partial output goes.
        if let Some(tmp) = &self.named {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

fn temp_name(dir: &Path, path: &Path) -> std::path::PathBuf {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dir.join(format!(".{file_name}.tmp{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_file_appears_whole_with_normal_permissions() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("out.csv");
        std::fs::write(&path, "old").unwrap();
        let f = AtomicFile::create(&path).unwrap();
        std::io::Write::write_all(&mut f.file(), b"new").unwrap();
        // Until persisted, the directory holds only the old file.
        let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old");
        f.persist().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            let plain = tmp.path().join("plain");
            std::fs::File::create(&plain).unwrap();
            assert_eq!(
                mode(&path),
                mode(&plain),
                "permissions as File::create gives"
            );
            std::fs::remove_file(&plain).unwrap();
        }
        let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }
}
