//! Group ownership for a cache that a team shares: with a shared group set, everything cfpipe
//! creates in the cache is owned by that group and group-writable, and directories are setgid so
//! files a teammate creates inside them inherit the group too. Without one, files keep whatever
//! the umask gives (the behaviour of a private cache).

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// The resolved group to apply, or none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupPerms {
    gid: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("shared group `{0}` does not exist (give a group name from `getent group`, or a numeric gid)")]
    Unknown(String),
    #[error("cannot look up shared group `{group}`: {source} (a numeric gid avoids the lookup)")]
    Lookup { group: String, source: io::Error },
}

/// The largest buffer a group lookup may take (16 MiB: a group entry of ~1M member names).
const MAX_GROUP_BUFFER: usize = 16 << 20;

impl GroupPerms {
    pub const NONE: GroupPerms = GroupPerms { gid: None };

    /// Resolve a group name (through the system's user database, so LDAP groups work) or a
    /// numeric gid.
    pub fn resolve(group: &str) -> Result<GroupPerms, GroupError> {
        if let Ok(gid) = group.parse::<u32>() {
            return Ok(GroupPerms { gid: Some(gid) });
        }
        let name =
            std::ffi::CString::new(group).map_err(|_| GroupError::Unknown(group.to_string()))?;
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        // A directory group with thousands of members does not fit a small buffer: getgrnam_r
        // then says ERANGE, and the lookup is retried with a bigger one.
        let mut buf = vec![0u8; 16 * 1024];
        let mut out: *mut libc::group = std::ptr::null_mut();
        loop {
            // SAFETY: every pointer refers to live, correctly sized storage owned by this frame.
            let rc = unsafe {
                libc::getgrnam_r(
                    name.as_ptr(),
                    &mut grp,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    &mut out,
                )
            };
            match rc {
                libc::ERANGE if buf.len() < MAX_GROUP_BUFFER => {
                    let bigger = buf.len() * 4;
                    buf = vec![0u8; bigger];
                }
                0 if !out.is_null() => break,
                0 => return Err(GroupError::Unknown(group.to_string())),
                errno => {
                    return Err(GroupError::Lookup {
                        group: group.to_string(),
                        source: io::Error::from_raw_os_error(errno),
                    })
                }
            }
        }
        Ok(GroupPerms {
            gid: Some(grp.gr_gid),
        })
    }

    pub fn gid(&self) -> Option<u32> {
        self.gid
    }

    /// Give a path cfpipe just created to the group: g+rw for files, g+rwx and setgid for
    /// directories. Fails when the user is not a member of the group.
    pub fn apply(&self, path: &Path) -> io::Result<()> {
        let Some(gid) = self.gid else { return Ok(()) };
        let meta = fs::symlink_metadata(path)?;
        if meta.gid() != gid {
            std::os::unix::fs::chown(path, None, Some(gid)).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot give {} to gid {gid} (are you a member of the shared group?): {e}",
                        path.display()
                    ),
                )
            })?;
        }
        let mode = meta.mode() & 0o7777;
        let want = if meta.is_dir() {
            mode | 0o2070
        } else {
            mode | 0o060
        };
        if want != mode {
            fs::set_permissions(path, fs::Permissions::from_mode(want))?;
        }
        Ok(())
    }

    /// `apply` to a path only if this user owns it: directories a teammate created are theirs
    /// to fix, and chmod on them would fail.
    pub fn apply_if_owned(&self, path: &Path) -> io::Result<()> {
        if self.gid.is_none() {
            return Ok(());
        }
        let meta = fs::symlink_metadata(path)?;
        // SAFETY: geteuid has no preconditions.
        if meta.uid() == unsafe { libc::geteuid() } {
            self.apply(path)?;
        }
        Ok(())
    }

    /// `create_dir_all` that gives every directory it creates to the group.
    pub fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        if path.is_dir() {
            return Ok(());
        }
        if self.gid.is_none() {
            return fs::create_dir_all(path);
        }
        let mut missing = Vec::new();
        let mut p = Some(path);
        while let Some(d) = p {
            if d.is_dir() {
                break;
            }
            missing.push(d.to_path_buf());
            p = d.parent();
        }
        fs::create_dir_all(path)?;
        for d in missing.iter().rev() {
            self.apply_if_owned(d)?;
        }
        Ok(())
    }
}
