//! Writing into directory trees that someone else controls (the repository's checkout, the
//! runner's workspace, code-server's data dir) without being led out of them: every path
//! component is opened relative to its parent with `O_NOFOLLOW | O_DIRECTORY`, so a symlink
//! (or a non-directory) anywhere on the way is an error instead of a detour, and the file is
//! written to a fresh temporary name and renamed into place, so an existing symlink or hard
//! link at the final name is replaced, never written through.
//!
//! The root directory itself must not be a symlink either (its ancestors are the agent's own
//! choice and trusted).

use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

/// Why a write beneath a root was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum FsafeError {
    /// A component of the path is a symlink or not a directory.
    #[error("{path}: {component:?} is a symbolic link or not a directory")]
    NotADirectory {
        /// The relative path asked for.
        path: String,
        /// The offending component.
        component: String,
    },
    /// The path is not a plain relative path.
    #[error("{path}: not a relative path inside the directory")]
    Invalid {
        /// The path.
        path: String,
    },
    /// Any other I/O error.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

fn cstr(s: &std::ffi::OsStr) -> std::io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
}

fn open_dir_at(dir: Option<&OwnedFd>, name: &std::ffi::OsStr) -> std::io::Result<OwnedFd> {
    let c = cstr(name)?;
    let at = dir.map(|d| d.as_raw_fd()).unwrap_or(libc::AT_FDCWD);
    // SAFETY: openat with a valid NUL-terminated name; the returned fd is owned below.
    let fd = unsafe {
        libc::openat(
            at,
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a freshly opened descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens `root` (a directory, not a symlink) for walking beneath it.
pub fn open_root(root: &Path) -> std::io::Result<OwnedFd> {
    open_dir_at(None, root.as_os_str())
}

/// Writes `bytes` to `rel` beneath `root` with `mode`, creating missing directories (0755),
/// refusing any symlink or non-directory on the way. The file is replaced atomically.
pub fn write_beneath(root: &Path, rel: &str, bytes: &[u8], mode: u32) -> Result<(), FsafeError> {
    let io = |source: std::io::Error| FsafeError::Io {
        path: rel.to_owned(),
        source,
    };
    let rel_path = Path::new(rel);
    let mut parts = Vec::new();
    for c in rel_path.components() {
        match c {
            Component::Normal(n) => parts.push(n),
            Component::CurDir => {}
            _ => {
                return Err(FsafeError::Invalid {
                    path: rel.to_owned(),
                })
            }
        }
    }
    let Some((file_name, dirs)) = parts.split_last() else {
        return Err(FsafeError::Invalid {
            path: rel.to_owned(),
        });
    };
    let not_dir = |component: &std::ffi::OsStr| FsafeError::NotADirectory {
        path: rel.to_owned(),
        component: component.to_string_lossy().into_owned(),
    };
    let mut dir = open_root(root).map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) | Some(libc::ENOTDIR) => not_dir(root.as_os_str()),
        _ => io(e),
    })?;
    for d in dirs {
        let c = cstr(d).map_err(io)?;
        // SAFETY: mkdirat with a valid directory fd and NUL-terminated name.
        let made = unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), 0o755) };
        if made != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(io(e));
            }
        }
        dir = open_dir_at(Some(&dir), d).map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) | Some(libc::ENOTDIR) => not_dir(d),
            _ => io(e),
        })?;
    }
    let tmp_name = format!(
        ".{}.guildnet-{}.tmp",
        file_name.to_string_lossy(),
        rand::random::<u64>()
    );
    let tmp = CString::new(tmp_name).map_err(|_| FsafeError::Invalid {
        path: rel.to_owned(),
    })?;
    // SAFETY: openat with a valid directory fd and NUL-terminated name; O_EXCL|O_NOFOLLOW
    // create a new file and never follow a planted link.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            tmp.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io(std::io::Error::last_os_error()));
    }
    // SAFETY: fd was just opened and is owned by the File.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    let unlink_tmp = |dir: &OwnedFd| {
        // SAFETY: unlinkat on the temp name in a directory we hold open.
        unsafe { libc::unlinkat(dir.as_raw_fd(), tmp.as_ptr(), 0) };
    };
    if let Err(e) = f.write_all(bytes).and_then(|_| f.sync_all()) {
        unlink_tmp(&dir);
        return Err(io(e));
    }
    drop(f);
    let target = cstr(file_name).map_err(io)?;
    // SAFETY: renameat within one directory fd; replaces the entry (a link is not followed).
    let r = unsafe {
        libc::renameat(
            dir.as_raw_fd(),
            tmp.as_ptr(),
            dir.as_raw_fd(),
            target.as_ptr(),
        )
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        unlink_tmp(&dir);
        return Err(io(e));
    }
    Ok(())
}

/// True when `path` is a real directory (not a symlink to one).
pub fn is_real_dir(path: &Path) -> bool {
    std::fs::symlink_metadata(path)
        .map(|m| m.is_dir())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    #[test]
    fn writes_create_directories_and_replace_files() {
        let d = tempfile::tempdir().unwrap();
        write_beneath(d.path(), "a/b/c.txt", b"one", 0o644).unwrap();
        write_beneath(d.path(), "a/b/c.txt", b"two", 0o600).unwrap();
        let p = d.path().join("a/b/c.txt");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // No temp file left behind.
        assert_eq!(std::fs::read_dir(d.path().join("a/b")).unwrap().count(), 1);
    }

    #[test]
    fn symlinks_on_the_way_are_refused_and_a_final_link_is_replaced() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir(&root).unwrap();
        symlink(outside.path(), root.join("link")).unwrap();
        let err = write_beneath(&root, "link/pwned.txt", b"x", 0o644).unwrap_err();
        assert!(matches!(err, FsafeError::NotADirectory { .. }), "{err}");
        assert!(!outside.path().join("pwned.txt").exists());
        // Deeper: a real dir, then a link.
        std::fs::create_dir(root.join("real")).unwrap();
        symlink(outside.path(), root.join("real/deeper")).unwrap();
        assert!(write_beneath(&root, "real/deeper/x/y.txt", b"x", 0o644).is_err());
        assert!(!outside.path().join("x").exists());
        // A symlink at the final name is replaced by a file, its target untouched.
        let target = outside.path().join("victim.txt");
        std::fs::write(&target, "keep").unwrap();
        symlink(&target, root.join("f.txt")).unwrap();
        write_beneath(&root, "f.txt", b"new", 0o644).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        assert!(!std::fs::symlink_metadata(root.join("f.txt"))
            .unwrap()
            .file_type()
            .is_symlink());
        // The root itself must not be a link.
        symlink(&root, d.path().join("rootlink")).unwrap();
        assert!(write_beneath(&d.path().join("rootlink"), "z.txt", b"x", 0o644).is_err());
        // Not relative.
        assert!(write_beneath(&root, "../x", b"x", 0o644).is_err());
        assert!(write_beneath(&root, "/etc/x", b"x", 0o644).is_err());
    }
}
