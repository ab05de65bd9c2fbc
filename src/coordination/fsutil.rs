//! Small filesystem primitives the standalone backend is built from.

use super::{CoordError, Result};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsFd;
use std::path::Path;

pub fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CoordError + '_ {
    move |source| CoordError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Replace `path` with `bytes` so that readers see the old or the new
/// content, never a mix, even if this process is killed half-way. With
/// `durable`, the data also survives a power loss once this returns.
pub fn atomic_write(path: &Path, bytes: &[u8], durable: bool) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        if durable {
            f.sync_all()?;
        }
        fs::rename(&tmp, path)?;
        if durable {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_err(path)(e)
    })
}

/// Open (creating) a lock file. The lock itself is taken with [`try_lock`].
pub fn open_lock_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io_err(path))
}

/// Take an exclusive `flock` without blocking. `Ok(false)` means another
/// open file description holds it. The lock lives as long as any descriptor
/// of this open file description stays open, which is what lets a run's
/// supervisor inherit it from the scheduler.
pub fn try_lock(file: &impl AsFd) -> std::io::Result<bool> {
    use rustix::fs::{flock, FlockOperation};
    match flock(file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Take an exclusive `flock`, waiting as long as it takes.
pub fn lock_blocking(file: &impl AsFd) -> std::io::Result<()> {
    use rustix::fs::{flock, FlockOperation};
    loop {
        match flock(file, FlockOperation::LockExclusive) {
            Err(e) if e == rustix::io::Errno::INTR => continue,
            other => return other.map_err(Into::into),
        }
    }
}

/// Read a JSON file; `Ok(None)` if it does not exist.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| CoordError::Corrupt {
                path: path.display().to_string(),
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}
