//! The kernel's connection tracking table, read over ctnetlink: a dump of what exists and the
//! NEW/DESTROY events after it. Only the two tuples of each connection are decoded — they are what
//! says where NAT really sent a connection (original: pod → Service; reply: backend → pod).
//!
//! Written against the socket directly rather than with a netlink crate: we need one request, two
//! multicast groups and four attributes, and we need to see ENOBUFS (events dropped because we
//! fell behind) to resynchronise with a dump — a tiny, fully tested decoder does that plainly.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
    time::Duration,
};

#[cfg(test)]
pub(crate) use super::netlink::test_tuple;
use super::netlink::{decode, dump_request, GROUP_DESTROY, GROUP_NEW, NETLINK_NETFILTER};
pub use super::netlink::{Connection, Event, Received, Tuple};

#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    #[error("opening a ctnetlink socket: {0} (the kernel needs nf_conntrack_netlink, and we need CAP_NET_ADMIN)")]
    Open(io::Error),
    #[error("entering network namespace {path}: {source}")]
    Netns { path: String, source: io::Error },
    #[error("the kernel refused the conntrack dump: {0}")]
    Refused(io::Error),
    #[error("reading ctnetlink: {0}")]
    Io(#[from] io::Error),
}

/// Moves the calling thread into the network namespace at `path` (a `/run/netns/X` or
/// `/proc/PID/ns/net` file). Sockets opened afterwards belong to it.
pub fn enter_netns(path: &Path) -> Result<(), ConntrackError> {
    let err = |source| ConntrackError::Netns {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(err)?;
    // SAFETY: setns takes a descriptor we own and a flag.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    Ok(())
}

/// A ctnetlink socket: either subscribed to NEW and DESTROY events, or used for dumps.
pub struct ConntrackSocket {
    fd: OwnedFd,
    buf: Vec<u8>,
    seq: u32,
}

impl ConntrackSocket {
    fn open(groups: u32, receive_buffer: usize, timeout: Duration) -> Result<Self, ConntrackError> {
        // SAFETY: plain socket(2); the descriptor is owned right away.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        };
        if raw < 0 {
            return Err(ConntrackError::Open(io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // A storm of new connections must not overflow the queue between two reads; FORCE
        // lifts the rmem_max cap (we have CAP_NET_ADMIN), plain RCVBUF is the fallback.
        let size = receive_buffer as libc::c_int;
        if setsockopt(&fd, libc::SO_RCVBUFFORCE, &size).is_err() {
            let _ = setsockopt(&fd, libc::SO_RCVBUF, &size);
        }
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        setsockopt(&fd, libc::SO_RCVTIMEO, &tv).map_err(ConntrackError::Open)?;
        // SAFETY: zeroed sockaddr_nl is valid; we set family and groups.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = groups;
        // SAFETY: addr is a valid sockaddr_nl of the given length.
        let ret = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if ret != 0 {
            return Err(ConntrackError::Open(io::Error::last_os_error()));
        }
        Ok(ConntrackSocket {
            fd,
            buf: vec![0; 256 * 1024],
            seq: 0,
        })
    }

    /// Subscribed to new and destroyed connections.
    pub fn events(receive_buffer: usize, timeout: Duration) -> Result<Self, ConntrackError> {
        Self::open(GROUP_NEW | GROUP_DESTROY, receive_buffer, timeout)
    }

    /// For dumps.
    pub fn dumper(timeout: Duration) -> Result<Self, ConntrackError> {
        Self::open(0, 4 * 1024 * 1024, timeout)
    }

    /// Dumps the whole table (IPv4 and IPv6), calling `each` per batch of rows.
    pub fn dump(&mut self, mut each: impl FnMut(Received)) -> Result<(), ConntrackError> {
        self.seq = self.seq.wrapping_add(1);
        let request = dump_request(self.seq);
        // SAFETY: sending a byte buffer we own to the kernel (destination: the default, pid 0).
        let sent = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                request.as_ptr() as *const libc::c_void,
                request.len(),
                0,
            )
        };
        if sent < 0 {
            return Err(ConntrackError::Refused(io::Error::last_os_error()));
        }
        loop {
            let got = self.recv()?;
            let done = got.done;
            each(got);
            if done {
                return Ok(());
            }
        }
    }

    /// Reads one datagram. `ErrorKind::WouldBlock`/`TimedOut` when nothing came within the
    /// timeout; `ENOBUFS` when the kernel dropped events because we fell behind.
    pub fn recv(&mut self) -> Result<Received, ConntrackError> {
        self.recv_with(0)
    }

    /// Reads one datagram if one is queued (`ErrorKind::WouldBlock` otherwise).
    pub fn try_recv(&mut self) -> Result<Received, ConntrackError> {
        self.recv_with(libc::MSG_DONTWAIT)
    }

    fn recv_with(&mut self, flags: libc::c_int) -> Result<Received, ConntrackError> {
        // SAFETY: receiving into a buffer we own, of its length.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                self.buf.as_mut_ptr() as *mut libc::c_void,
                self.buf.len(),
                flags,
            )
        };
        if n < 0 {
            return Err(ConntrackError::Io(io::Error::last_os_error()));
        }
        Ok(decode(&self.buf[..n as usize]))
    }
}

fn setsockopt<T>(fd: &OwnedFd, option: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live T of the size passed.
    let ret = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            value as *const T as *const libc::c_void,
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
