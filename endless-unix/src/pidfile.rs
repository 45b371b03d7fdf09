//! The pid file: which process serves now.
//!
//! Written atomically (a temporary file in the same directory, then `rename`), so that a
//! reader never sees a half-written pid; rewritten by each new generation once it is
//! ready; removed on a clean stop by the process that stops the service (never by an old
//! generation that handed over), and only if it still names this process. A stale pid file
//! left by a crash does not block start-up: it is simply overwritten.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// A pid file at a fixed path.
///
/// # Examples
///
/// ```
/// use endless_unix::pidfile::PidFile;
///
/// # let dir = std::env::temp_dir().join(format!("endless-doc-pidfile-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// let pid_file = PidFile::new(dir.join("app.pid"));
/// assert_eq!(pid_file.read()?, None);
/// pid_file.write(std::process::id())?;
/// assert_eq!(pid_file.read()?, Some(std::process::id()));
/// // A generation removes it only while it still names that generation.
/// assert!(!pid_file.remove_if(1)?);
/// assert!(pid_file.remove_if(std::process::id())?);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PidFile {
    path: PathBuf,
}

impl PidFile {
    /// A pid file at `path` (nothing is written yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `pid` atomically.
    pub fn write(&self, pid: u32) -> io::Result<()> {
        write_atomically(&self.path, format!("{pid}\n").as_bytes(), true)
    }

    /// The pid the file names, if it exists and holds one.
    pub fn read(&self) -> io::Result<Option<u32>> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => Ok(text.trim().parse().ok()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes the file if it still names `pid`; returns whether it did.
    pub fn remove_if(&self, pid: u32) -> io::Result<bool> {
        if self.read()? != Some(pid) {
            return Ok(false);
        }
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Replaces the file at `path` with `contents` atomically: written to a new temporary file
/// in the same directory, then renamed over `path`. A reader sees the old contents or the
/// new ones, never a part. With `sync`, the data reaches the disk before the rename.
///
/// The temporary file is created exclusively (`O_EXCL`, which never follows a symlink): a
/// file or symlink planted at its name is left alone, and another name is tried.
fn write_atomically(path: &Path, contents: &[u8], sync: bool) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"))?;
    let mut attempt = 0u32;
    let (tmp, mut file) = loop {
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(file_name);
        tmp_name.push(format!(
            ".{}.{}.{attempt}.tmp",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        ));
        let tmp = dir.join(tmp_name);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
        {
            Ok(file) => break (tmp, file),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 8 => attempt += 1,
            Err(e) => return Err(e),
        }
    };
    let result = (|| {
        file.write_all(contents)?;
        if sync {
            file.sync_all()?;
        }
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("endless-pidfile-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("server.pid")
    }

    #[test]
    fn write_read_remove() {
        let pf = PidFile::new(temp_path("wrr"));
        assert_eq!(pf.read().unwrap(), None);
        pf.write(1234).unwrap();
        assert_eq!(pf.read().unwrap(), Some(1234));
        // A stale file is overwritten.
        pf.write(5678).unwrap();
        assert_eq!(pf.read().unwrap(), Some(5678));
        // Only the process it names removes it.
        assert!(!pf.remove_if(1234).unwrap());
        assert!(pf.path().exists());
        assert!(pf.remove_if(5678).unwrap());
        assert!(!pf.path().exists());
        let dir = pf.path().parent().unwrap();
        assert_eq!(
            std::fs::read_dir(dir).unwrap().count(),
            0,
            "no temp file left"
        );
        std::fs::remove_dir(dir).unwrap();
    }

    #[test]
    fn a_symlink_planted_at_a_temporary_name_is_never_written_through() {
        let pf = PidFile::new(temp_path("planted"));
        let dir = pf.path().parent().unwrap().to_owned();
        let victim = dir.join("victim");
        std::fs::write(&victim, "precious").unwrap();
        // The name an earlier version always used, and a guess at a current one.
        for name in [
            format!(".server.pid.{}.tmp", std::process::id()),
            format!(".server.pid.{}.0.0.tmp", std::process::id()),
        ] {
            std::os::unix::fs::symlink(&victim, dir.join(name)).unwrap();
        }
        pf.write(42).unwrap();
        assert_eq!(pf.read().unwrap(), Some(42));
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert!(
            !std::fs::symlink_metadata(pf.path())
                .unwrap()
                .file_type()
                .is_symlink()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
