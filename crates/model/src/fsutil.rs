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

/// Largest small file read whole: recipes, JSON sidecars, label lists, tokenizer files.
pub const MAX_SMALL_FILE: u64 = 64 << 20;
/// Largest data file read whole: training CSVs, `embed --input`.
pub const MAX_DATA_FILE: u64 = 2 << 30;

/// Reads at most `limit` bytes of `path`: a larger file (or a device such as `/dev/zero`, or
/// an endless pipe) is an error before it can exhaust memory.
pub fn read_limited(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let kind = file.metadata()?.file_type();
        if kind.is_char_device() || kind.is_block_device() {
            return Err(std::io::Error::other("a device, not a file"));
        }
    }
    // A regular file's size is known: one allocation of it (bounded by `limit`) rather than
    // doublings, which would peak at twice a large checkpoint.
    let expected = file.metadata().map_or(0, |m| m.len()).min(limit);
    let mut bytes = Vec::new();
    bytes
        .try_reserve_exact(usize::try_from(expected).unwrap_or(0))
        .map_err(|_| std::io::Error::other("out of memory"))?;
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::other(format!(
            "larger than {} (not a file this program reads whole)",
            human_bytes(limit)
        )));
    }
    Ok(bytes)
}

/// [`read_limited`] as UTF-8 text.
pub fn read_text_limited(path: &Path, limit: u64) -> std::io::Result<String> {
    String::from_utf8(read_limited(path, limit)?).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("invalid UTF-8 at byte {}", e.utf8_error().valid_up_to()),
        )
    })
}

/// [`read_text_limited`] with [`MAX_SMALL_FILE`], the error naming the file.
pub fn read_small_text(path: &Path) -> Result<String> {
    read_text_limited(path, MAX_SMALL_FILE).map_err(|e| ModelError::io(path, e))
}

fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{} GiB", n >> 30),
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n => format!("{n} bytes"),
    }
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
///
/// Only regular files are replaced. A path that is something else (`/dev/null`, `/dev/stdout`,
/// a FIFO) is written directly, as a shell redirect would, and a symbolic link to a regular
/// file replaces the file it points to, not the link.
pub struct AtomicFile {
    file: std::fs::File,
    path: std::path::PathBuf,
    /// The temp file's name where the platform needs one.
    named: Option<std::path::PathBuf>,
    /// Written in place: `path` is not a regular file.
    direct: bool,
}

impl AtomicFile {
    pub fn create(path: &Path) -> Result<Self> {
        match std::fs::metadata(path) {
            Ok(meta) if !meta.is_file() => return Self::direct(path),
            Ok(_) if path.is_symlink() => {
                let target = std::fs::canonicalize(path).map_err(|e| ModelError::io(path, e))?;
                return Self::replacing(&target);
            }
            _ => {}
        }
        Self::replacing(path)
    }

    /// Writes straight into a path that is not a regular file (a device, a FIFO, a terminal).
    fn direct(path: &Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| ModelError::io(path, e))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            named: None,
            direct: true,
        })
    }

    fn replacing(path: &Path) -> Result<Self> {
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
                    direct: false,
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
            direct: false,
        })
    }

    pub fn file(&self) -> &std::fs::File {
        &self.file
    }

    /// Flushes to disk and gives the file its name, replacing any file there.
    pub fn persist(self) -> Result<()> {
        let path = self.path.clone();
        if self.direct {
            // Devices and pipes have nothing to sync or rename; their writes are done.
            return Ok(());
        }
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

    #[cfg(unix)]
    #[test]
    fn special_files_are_written_not_replaced() {
        use std::os::unix::fs::FileTypeExt;
        let tmp = tempfile::tempdir().unwrap();
        // /dev/null stays a device.
        write_atomic(Path::new("/dev/null"), b"gone").unwrap();
        assert!(
            std::fs::metadata("/dev/null")
                .unwrap()
                .file_type()
                .is_char_device()
        );
        // A FIFO stays a FIFO and its reader gets the bytes.
        let fifo = tmp.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read(fifo).unwrap())
        };
        write_atomic(&fifo, b"through").unwrap();
        assert_eq!(reader.join().unwrap(), b"through");
        assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
        // A link to a regular file: the file gets the new content, the link stays a link.
        let real = tmp.path().join("real.csv");
        std::fs::write(&real, "old").unwrap();
        let link = tmp.path().join("link.csv");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        write_atomic(&link, b"new").unwrap();
        assert!(link.is_symlink());
        assert_eq!(std::fs::read_to_string(&real).unwrap(), "new");
    }

    #[test]
    fn reads_are_bounded() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        std::fs::write(&path, b"12345").unwrap();
        assert_eq!(read_limited(&path, 5).unwrap(), b"12345");
        let err = read_limited(&path, 4).unwrap_err().to_string();
        assert!(err.contains("larger than 4 bytes"), "{err}");
        #[cfg(unix)]
        {
            let err = read_limited(Path::new("/dev/zero"), 1 << 20).unwrap_err();
            assert!(err.to_string().contains("device"), "{err}");
        }
    }
}
