//! Traffic for the netns tests: known volumes over TCP and UDP, in both directions.
//!
//! serve ADDR           — TCP and UDP on ADDR. A TCP client's first byte says what it wants: 'S'
//!                        (server sinks until EOF) or 'R' + 8-byte big-endian length (server sends
//!                        that many bytes, then closes). UDP datagrams are echoed back. Prints
//!                        "ready" once bound.
//! send ADDR BYTES      — TCP: send BYTES to the server.
//! recv ADDR BYTES      — TCP: have the server send BYTES to us.
//! storm ADDR COUNT BYTES — TCP: COUNT short connections one after another, each sending BYTES
//!                        and waiting for the server's close (sub-second connections). We close
//!                        first, so TIME_WAIT stays on our side and no port is reused too soon.
//! udp ADDR COUNT SIZE  — UDP: COUNT datagrams of SIZE payload bytes, each echoed, one in flight at a
//!                        time so that no queue overflows.
//! spray ADDR COUNT SIZE — UDP: one datagram of SIZE payload bytes to each of COUNT consecutive
//!                        IPv4 addresses from ADDR's (same port), nothing awaited: a flood of new
//!                        remote addresses.
use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| -> Result<&str> {
        args.get(i)
            .map(String::as_str)
            .with_context(|| format!("missing argument {i}"))
    };
    match arg(0)? {
        "serve" => serve(arg(1)?.parse()?),
        "send" => send(arg(1)?.parse()?, arg(2)?.parse()?),
        "recv" => recv(arg(1)?.parse()?, arg(2)?.parse()?),
        "storm" => {
            let (addr, count, bytes) =
                (arg(1)?.parse()?, arg(2)?.parse::<u32>()?, arg(3)?.parse()?);
            for _ in 0..count {
                send(addr, bytes)?;
            }
            Ok(())
        }
        "udp" => udp(arg(1)?.parse()?, arg(2)?.parse()?, arg(3)?.parse()?),
        "spray" => spray(arg(1)?.parse()?, arg(2)?.parse()?, arg(3)?.parse()?),
        other => bail!("unknown mode {other}"),
    }
}

fn serve(addr: SocketAddr) -> Result<()> {
    let tcp = TcpListener::bind(addr).with_context(|| format!("binding tcp {addr}"))?;
    let udp = UdpSocket::bind(addr).with_context(|| format!("binding udp {addr}"))?;
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, peer)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(&buf[..n], peer);
        }
    });
    println!("ready");
    std::io::stdout().flush()?;
    for stream in tcp.incoming() {
        let Ok(mut stream) = stream else { continue };
        std::thread::spawn(move || -> Result<()> {
            let mut op = [0u8; 1];
            stream.read_exact(&mut op)?;
            match op[0] {
                b'S' => {
                    std::io::copy(&mut stream, &mut std::io::sink())?;
                }
                b'R' => {
                    let mut len = [0u8; 8];
                    stream.read_exact(&mut len)?;
                    write_bytes(&mut stream, u64::from_be_bytes(len))?;
                    stream.shutdown(Shutdown::Write)?;
                    std::io::copy(&mut stream, &mut std::io::sink())?;
                }
                _ => {}
            }
            Ok(())
        });
    }
    Ok(())
}

fn write_bytes(stream: &mut TcpStream, mut left: u64) -> Result<()> {
    let chunk = vec![0x5au8; 256 * 1024];
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        stream.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    Ok(())
}

fn send(addr: SocketAddr, bytes: u64) -> Result<()> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting {addr}"))?;
    s.write_all(b"S")?;
    write_bytes(&mut s, bytes)?;
    s.shutdown(Shutdown::Write)?;
    // Wait for the server's close, so every byte is acknowledged before we exit.
    std::io::copy(&mut s, &mut std::io::sink())?;
    Ok(())
}

fn recv(addr: SocketAddr, bytes: u64) -> Result<()> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting {addr}"))?;
    let mut req = vec![b'R'];
    req.extend_from_slice(&bytes.to_be_bytes());
    s.write_all(&req)?;
    let got = std::io::copy(&mut s, &mut std::io::sink())?;
    s.shutdown(Shutdown::Both).ok();
    if got != bytes {
        bail!("received {got} bytes, wanted {bytes}");
    }
    Ok(())
}

fn udp(addr: SocketAddr, count: u32, size: usize) -> Result<()> {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    // Not connected: a host with several addresses may answer from another one than we asked.
    let s = UdpSocket::bind(bind)?;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    let payload = vec![0xa5u8; size];
    let mut buf = vec![0u8; 65536];
    let mut echoed = 0u32;
    let deadline = Instant::now() + Duration::from_secs(60);
    // Lock-step: one datagram in flight at a time, so no queue anywhere can overflow. A lost
    // datagram is reported, not fatal: the test compares counters, wherever a packet died.
    for _ in 0..count {
        s.send_to(&payload, addr)?;
        match s.recv_from(&mut buf) {
            Ok(_) => echoed += 1,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
        if Instant::now() > deadline {
            bail!("udp exchange took over 60 s");
        }
    }
    if echoed != count {
        eprintln!("udp {addr}: {echoed} of {count} datagrams came back");
    }
    if echoed == 0 {
        bail!("no datagram came back from {addr}");
    }
    Ok(())
}

fn spray(start: SocketAddr, count: u32, size: usize) -> Result<()> {
    let SocketAddr::V4(start) = start else {
        bail!("spray takes an IPv4 address");
    };
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    let payload = vec![0x5au8; size];
    let base = u32::from(*start.ip());
    for i in 0..count {
        let to = SocketAddr::from((std::net::Ipv4Addr::from(base.wrapping_add(i)), start.port()));
        // A full socket buffer: wait for the device to take what is queued, and try again.
        while let Err(e) = socket.send_to(&payload, to) {
            if e.kind() != std::io::ErrorKind::WouldBlock && e.raw_os_error() != Some(105) {
                return Err(e).with_context(|| format!("sending to {to}"));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    Ok(())
}
