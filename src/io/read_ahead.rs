//! Reading and decompressing a stream on a thread of its own, so that the consumer's
//! work (extracting files, hashing blobs) runs alongside it — as GNU tar and its `zstd`
//! child do. Memory stays bounded: a few fixed-size chunks are in flight at a time, and
//! spent ones go back for reuse. The cluster image's unpacking and image seeding share it.

use std::io::{self, BufRead, Read};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

use super::compression::{self, Compression};

/// How much is read ahead: `depth` chunks of `chunk` bytes at most.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub chunk: usize,
    pub depth: usize,
}

impl Default for Shape {
    /// 8 × 512 KiB = 4 MiB at most.
    fn default() -> Self {
        Shape {
            chunk: 512 * 1024,
            depth: 8,
        }
    }
}

/// The decompressed stream, read on the consumer side.
pub struct ReadAhead<T> {
    /// `None` once finished or dropped, which stops the thread at its next chunk.
    chunks: Option<Receiver<io::Result<Vec<u8>>>>,
    give_back: SyncSender<Vec<u8>>,
    current: Vec<u8>,
    pos: usize,
    thread: Option<JoinHandle<io::Result<T>>>,
}

/// Starts decompressing `raw` on a new thread. When the compressed stream ends, `finish`
/// is called with `raw` (to drain and hash what follows) and its result is kept for
/// [`ReadAhead::finish`].
pub fn spawn<R, T, F>(mut raw: R, compression: Compression, shape: Shape, finish: F) -> ReadAhead<T>
where
    R: BufRead + Send + 'static,
    T: Send + 'static,
    F: FnOnce(R) -> io::Result<T> + Send + 'static,
{
    let (send, chunks) = mpsc::sync_channel::<io::Result<Vec<u8>>>(shape.depth);
    let (give_back, spare) = mpsc::sync_channel::<Vec<u8>>(shape.depth + 2);
    let thread = std::thread::spawn(move || {
        // The decoder is made here: it cannot cross threads.
        let produced = (|| -> io::Result<bool> {
            let mut decoder = compression::decoder(compression, &mut raw)?;
            loop {
                let mut buf = spare.try_recv().unwrap_or_default();
                if fill(&mut decoder, &mut buf, shape.chunk)? == 0 {
                    return Ok(true);
                }
                if send.send(Ok(buf)).is_err() {
                    // The consumer gave up (a refused entry, an early drop).
                    return Ok(false);
                }
            }
        })();
        match produced {
            Ok(true) => {
                drop(send);
                finish(raw)
            }
            Ok(false) => Err(io::Error::other("the reader stopped before the end")),
            Err(e) => {
                let copy = io::Error::new(e.kind(), e.to_string());
                let _ = send.send(Err(e));
                Err(copy)
            }
        }
    });
    ReadAhead {
        chunks: Some(chunks),
        give_back,
        current: Vec::new(),
        pos: 0,
        thread: Some(thread),
    }
}

/// Reads up to `chunk` bytes into `buf` (replacing what it held); 0 at the end.
fn fill(reader: &mut dyn Read, buf: &mut Vec<u8>, chunk: usize) -> io::Result<usize> {
    buf.resize(chunk, 0);
    let mut filled = 0;
    while filled < chunk {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(filled)
}

impl<T> Read for ReadAhead<T> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.current.len() {
            let spent = std::mem::take(&mut self.current);
            if spent.capacity() > 0 {
                let _ = self.give_back.try_send(spent);
            }
            self.pos = 0;
            match self.chunks.as_ref().map(Receiver::recv) {
                Some(Ok(Ok(buf))) => self.current = buf,
                Some(Ok(Err(e))) => return Err(e),
                // The thread ended: the stream is over.
                Some(Err(_)) | None => return Ok(0),
            }
        }
        let n = out.len().min(self.current.len() - self.pos);
        out[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl<T> ReadAhead<T> {
    /// Waits for the thread and returns what its `finish` returned — an error if the
    /// stream was not read to its end.
    pub fn finish(mut self) -> io::Result<T> {
        self.join()
            .unwrap_or_else(|| Err(io::Error::other("read-ahead already finished")))
    }

    fn join(&mut self) -> Option<io::Result<T>> {
        // Dropping the receiver ends a thread waiting to send; then it can be joined.
        self.chunks = None;
        let thread = self.thread.take()?;
        Some(match thread.join() {
            Ok(result) => result,
            Err(_) => Err(io::Error::other("the read-ahead thread panicked")),
        })
    }
}

impl<T> Drop for ReadAhead<T> {
    fn drop(&mut self) {
        let _ = self.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_the_stream_through_and_returns_the_finish_result() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let compressed = zstd::encode_all(&data[..], 3).unwrap();
        let reader = io::BufReader::new(io::Cursor::new(compressed));
        let mut pipe = spawn(reader, Compression::Zstd, Shape::default(), |_rest| Ok(42));
        let mut out = Vec::new();
        pipe.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
        assert_eq!(pipe.finish().unwrap(), 42);
    }

    #[test]
    fn a_corrupt_stream_is_an_error_on_both_sides() {
        let mut compressed = zstd::encode_all(&[5u8; 100_000][..], 3).unwrap();
        compressed.truncate(compressed.len() / 2);
        let reader = io::BufReader::new(io::Cursor::new(compressed));
        let mut pipe = spawn(reader, Compression::Zstd, Shape::default(), |_rest| Ok(()));
        let mut out = Vec::new();
        assert!(pipe.read_to_end(&mut out).is_err());
        assert!(pipe.finish().is_err());
    }

    #[test]
    fn dropping_the_reader_early_stops_the_thread() {
        let data = vec![7u8; 8 << 20];
        let compressed = zstd::encode_all(&data[..], 1).unwrap();
        let reader = io::BufReader::new(io::Cursor::new(compressed));
        let small = Shape {
            chunk: 4096,
            depth: 1,
        };
        let mut pipe = spawn(reader, Compression::Zstd, small, |_rest| Ok(()));
        let mut first = [0u8; 10];
        pipe.read_exact(&mut first).unwrap();
        // Finishing before the end neither hangs nor pretends the stream was whole.
        assert!(pipe.finish().is_err());
    }
}
