//! A TCP stream with one deadline for the whole exchange, not one per read: a peer that
//! trickles bytes cannot stretch it. Both ends of the join protocol use it.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A socket whose every read and write must finish before one deadline.
pub struct DeadlineStream {
    inner: TcpStream,
    deadline: Instant,
}

impl DeadlineStream {
    pub fn new(inner: TcpStream, budget: Duration) -> Self {
        DeadlineStream::until(inner, Instant::now() + budget)
    }

    /// A stream whose reads and writes must finish before `deadline`.
    pub fn until(inner: TcpStream, deadline: Instant) -> Self {
        DeadlineStream { inner, deadline }
    }

    /// Moves the deadline to `deadline`.
    pub fn extend_to(&mut self, deadline: Instant) {
        self.deadline = deadline;
    }

    fn left(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection deadline passed",
            ));
        }
        Ok(left)
    }
}

impl Read for DeadlineStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.left()?;
        self.inner.set_read_timeout(Some(left))?;
        self.inner.read(buf)
    }
}

impl Write for DeadlineStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let left = self.left()?;
        self.inner.set_write_timeout(Some(left))?;
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
