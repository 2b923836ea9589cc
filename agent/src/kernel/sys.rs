//! The few bpf(2) commands aya 0.14 does not offer on a pinned link: open a pin, swap the program
//! of a link in place, find a link by id and detach it. Each is one syscall with a zeroed
//! `union bpf_attr`.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    path::Path,
};

// Command numbers from `enum bpf_cmd` in include/uapi/linux/bpf.h (stable kernel ABI).
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
const BPF_LINK_DETACH: libc::c_long = 34;

/// `union bpf_attr` is at most 144 bytes on current kernels; unknown trailing bytes must be zero,
/// which they are.
#[repr(C, align(8))]
struct Attr([u32; 36]);

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, zero-padded bpf_attr for `cmd`; the kernel reads at most its size.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut Attr,
            std::mem::size_of::<Attr>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: the kernel just returned this new descriptor to us.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// Opens a pinned object (map, program or link).
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    let mut attr = Attr([0; 36]);
    let ptr = c.as_ptr() as u64;
    // `pathname` is an __aligned_u64 at offset 0.
    attr.0[0] = ptr as u32;
    attr.0[1] = (ptr >> 32) as u32;
    bpf(BPF_OBJ_GET, &mut attr).map(owned)
}

/// Replaces the program of `link` with `program`, atomically: no packet sees neither or both.
pub fn link_update(link: BorrowedFd<'_>, program: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = Attr([0; 36]);
    attr.0[0] = link.as_raw_fd() as u32;
    attr.0[1] = program.as_raw_fd() as u32;
    bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
}

pub fn link_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut attr = Attr([0; 36]);
    attr.0[0] = id;
    bpf(BPF_LINK_GET_FD_BY_ID, &mut attr).map(owned)
}

/// Detaches a link's program now, whoever else holds the link (it stays, defunct, until closed).
pub fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = Attr([0; 36]);
    attr.0[0] = link.as_raw_fd() as u32;
    bpf(BPF_LINK_DETACH, &mut attr).map(drop)
}

/// Whether `path` is on a BPF file system (the nearest existing ancestor, for a path that is yet
/// to be created).
pub fn on_bpffs(path: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    let Some(existing) = path.ancestors().find(|p| p.exists()) else {
        return false;
    };
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(c) = CString::new(existing.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the struct we pass and reads the NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let ret = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    ret == 0 && st.f_type as i64 == BPF_FS_MAGIC
}
