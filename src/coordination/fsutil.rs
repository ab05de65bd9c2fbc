//! Small filesystem primitives the standalone backend is built from.

use super::{CoordError, Result};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsFd;
use std::path::Path;

pub fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CoordError + '_ {
    move |cause| CoordError::Io {
        path: path.display().to_string(),
        cause,
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

/// Take an exclusive `flock`, waiting as long as it takes, without tying up
/// anything the process waits for at exit: the wait happens on a detached
/// thread. Dropping the future gives the wait up; should the lock be taken
/// after that, the thread drops the file at once, which releases it.
pub async fn lock_detached(file: File) -> std::io::Result<File> {
    if try_lock(&file)? {
        return Ok(file);
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("bgsched-flock".into())
        .spawn(move || {
            let _ = tx.send(lock_blocking(&file).map(|()| file));
        })?;
    rx.await
        .unwrap_or_else(|_| Err(std::io::Error::other("the lock's waiting thread died")))
}

/// Move a corrupt state file (or a directory where a file belongs, or the
/// reverse) out of the way, to `<name>.corrupt` beside it (with a number
/// when that name is taken), and return where it went. Kept, not deleted:
/// an operator may want to know what was in it.
pub fn set_aside(path: &Path) -> std::io::Result<std::path::PathBuf> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut to = dir.join(format!("{name}.corrupt"));
    let mut n = 1;
    while fs::symlink_metadata(&to).is_ok() {
        n += 1;
        to = dir.join(format!("{name}.{n}.corrupt"));
    }
    fs::rename(path, &to)?;
    Ok(to)
}

/// Whether an error reading or opening a state file says that something
/// other than a regular file stands at its path (a directory, or a file
/// where a directory of the path should be).
pub fn wrong_kind(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(e.kind(), ErrorKind::IsADirectory | ErrorKind::NotADirectory)
}
