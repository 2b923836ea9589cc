//! A stream wrapper that closes connections that make no progress: an idle keep-alive
//! connection, or a client that stopped taking our answer (hyper has no such timeout of its own).

use std::{
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Sleep,
};

/// A stream that fails with `TimedOut` once neither reading nor writing made progress for
/// `limit`: an idle keep-alive connection, or a client that stopped taking our answer.
pub(super) struct Stalling<S> {
    inner: S,
    limit: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl<S> Stalling<S> {
    pub(super) fn new(inner: S, limit: Duration) -> Self {
        Stalling {
            inner,
            limit,
            deadline: Box::pin(tokio::time::sleep(limit)),
        }
    }

    fn progressed(&mut self) {
        let next = tokio::time::Instant::now() + self.limit;
        self.deadline.as_mut().reset(next);
    }

    /// On `Pending`: `Ready(Err)` once the deadline passed.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "no progress: connection closed")
}

impl<S: AsyncRead + Unpin> AsyncRead for Stalling<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.progressed();
                }
                Poll::Ready(r)
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Stalling<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.progressed();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(e) => Poll::Ready(e),
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out())),
            other => other,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::{future::poll_fn, time::Instant};

    use super::*;
    use tokio::net::{TcpListener, TcpStream};

    const LIMIT: Duration = Duration::from_millis(300);

    async fn pair() -> (Stalling<TcpStream>, std::net::TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (Stalling::new(server, LIMIT), client)
    }

    async fn read_some(s: &mut Stalling<TcpStream>) -> io::Result<usize> {
        let mut buf = [0u8; 64];
        poll_fn(|cx| {
            let mut rb = ReadBuf::new(&mut buf);
            Pin::new(&mut *s)
                .poll_read(cx, &mut rb)
                .map_ok(|()| rb.filled().len())
        })
        .await
    }

    #[tokio::test]
    async fn a_reader_that_stops_taking_the_answer_is_cut_off() {
        let (mut server, _client) = pair().await;
        let chunk = vec![b'x'; 64 * 1024];
        let started = Instant::now();
        let mut written = 0usize;
        let error = loop {
            match poll_fn(|cx| Pin::new(&mut server).poll_write(cx, &chunk)).await {
                Ok(n) => written += n,
                Err(e) => break e,
            }
            assert!(written < 1 << 30, "the writes never stalled");
        };
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= LIMIT, "cut off before the limit");
        assert!(written > 0);
    }

    #[tokio::test]
    async fn an_idle_connection_times_out_and_a_trickling_one_does_not_until_it_stops() {
        use std::io::Write as _;
        let (mut server, mut client) = pair().await;
        // A byte every third of the limit: each read is progress, so no timeout for a while.
        let writer = std::thread::spawn(move || {
            for _ in 0..6 {
                std::thread::sleep(LIMIT / 3);
                client.write_all(b"x").unwrap();
            }
            client
        });
        let mut got = 0;
        while got < 6 {
            got += read_some(&mut server)
                .await
                .expect("progress resets the deadline");
        }
        let _client = writer.join().unwrap();
        let quiet = Instant::now();
        let error = read_some(&mut server).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(quiet.elapsed() >= LIMIT - Duration::from_millis(50));
    }
}
