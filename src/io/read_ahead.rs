//! Reading, hashing and decompressing an archive on a thread of its own, so that the
//! extraction (file creation and writes) runs alongside it — as GNU tar and its `zstd`
//! child do. Memory stays bounded: a few fixed-size chunks are in flight at a time.

use std::io::{self, BufRead, Read};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

use super::compression::{self, Compression};

const CHUNK: usize = 512 * 1024;
/// Chunks queued between the threads (8 × 512 KiB = 4 MiB at most).
const DEPTH: usize = 8;

/// The decompressed stream, read on the consumer side.
pub struct Pipeline<T> {
    rx: Receiver<io::Result<Vec<u8>>>,
    recycle: SyncSender<Vec<u8>>,
    current: Vec<u8>,
    pos: usize,
    handle: Option<JoinHandle<io::Result<T>>>,
}

/// Starts decompressing `raw` on a new thread. When the compressed stream ends, `finish`
/// is called with `raw` (to drain and hash what follows) and its result is kept for
/// [`Pipeline::finish`].
pub fn spawn<R, T, F>(mut raw: R, compression: Compression, finish: F) -> Pipeline<T>
where
    R: BufRead + Send + 'static,
    T: Send + 'static,
    F: FnOnce(R) -> io::Result<T> + Send + 'static,
{
    let (tx, rx) = mpsc::sync_channel::<io::Result<Vec<u8>>>(DEPTH);
    let (recycle, recycled) = mpsc::sync_channel::<Vec<u8>>(DEPTH + 2);
    let handle = std::thread::spawn(move || {
        let produced = (|| -> io::Result<bool> {
            let mut decoder = compression::decoder(compression, &mut raw)?;
            loop {
                let mut buf = recycled
                    .try_recv()
                    .unwrap_or_else(|_| Vec::with_capacity(CHUNK));
                buf.resize(CHUNK, 0);
                let mut filled = 0;
                while filled < CHUNK {
                    match decoder.read(&mut buf[filled..]) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                if filled == 0 {
                    return Ok(true);
                }
                buf.truncate(filled);
                if tx.send(Ok(buf)).is_err() {
                    // The consumer gave up (a refused entry); nothing more to do.
                    return Ok(false);
                }
            }
        })();
        match produced {
            Ok(true) => {
                drop(tx);
                finish(raw)
            }
            Ok(false) => Err(io::Error::other("extraction stopped early")),
            Err(e) => {
                let copy = io::Error::new(e.kind(), e.to_string());
                let _ = tx.send(Err(e));
                Err(copy)
            }
        }
    });
    Pipeline {
        rx,
        recycle,
        current: Vec::new(),
        pos: 0,
        handle: Some(handle),
    }
}

impl<T> Read for Pipeline<T> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.current.len() {
            let spent = std::mem::take(&mut self.current);
            if spent.capacity() > 0 {
                let _ = self.recycle.try_send(spent);
            }
            self.pos = 0;
            match self.rx.recv() {
                Ok(Ok(buf)) => self.current = buf,
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.current.len() - self.pos);
        out[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl<T> Pipeline<T> {
    /// Waits for the producer and returns what its `finish` returned. Call after reading
    /// the stream to its end.
    pub fn finish(mut self) -> io::Result<T> {
        match self.handle.take().map(|h| h.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("the decompression thread panicked")),
            None => Err(io::Error::other("pipeline already finished")),
        }
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
        let mut pipe = spawn(reader, Compression::Zstd, |_rest| Ok(42));
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
        let mut pipe = spawn(reader, Compression::Zstd, |_rest| Ok(()));
        let mut out = Vec::new();
        assert!(pipe.read_to_end(&mut out).is_err());
        assert!(pipe.finish().is_err());
    }
}
