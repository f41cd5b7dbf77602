//! The write-behind thread of seeding: staged files are written (with `O_DIRECT` for
//! whole chunks) while the caller reads and hashes what comes next.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

use super::report::io_error;
use super::report::SeedError;

/// Blob and link files are world-readable: the registry may run as its own user.
pub(super) const FILE_MODE: u32 = 0o644;

/// Bytes read, hashed and written at a time: large enough that system calls are few
/// and direct writes keep the device busy.
pub(super) const CHUNK: usize = 1024 * 1024;
/// Chunks waiting for the writer thread at most: with the spare ones, memory stays
/// under 2 × (QUEUE_DEPTH + 2) chunks, 20 MiB, whatever the size of a blob.
pub(super) const QUEUE_DEPTH: usize = 8;
/// What `O_DIRECT` asks of buffers, offsets and lengths: a multiple of the device's
/// logical block size, which is 512 or 4096 bytes.
pub(super) const DIRECT_ALIGN: usize = 4096;
/// A buffer of [`CHUNK`] bytes whose start is aligned for `O_DIRECT`, so the writer can
/// hand it to the device as it is.
pub(super) struct Chunk {
    bytes: Vec<u8>,
    start: usize,
    len: usize,
}

impl Chunk {
    pub(super) fn new() -> Chunk {
        let bytes = vec![0u8; CHUNK + DIRECT_ALIGN];
        let start = (DIRECT_ALIGN - bytes.as_ptr() as usize % DIRECT_ALIGN) % DIRECT_ALIGN;
        Chunk {
            bytes,
            start,
            len: 0,
        }
    }

    pub(super) fn filled(&self) -> &[u8] {
        &self.bytes[self.start..self.start + self.len]
    }

    /// Reads until the chunk is full or `reader` ends; returns how much it holds, so
    /// less than [`CHUNK`] means the end was reached.
    pub(super) fn fill(&mut self, reader: &mut dyn Read) -> io::Result<usize> {
        let space = &mut self.bytes[self.start..self.start + CHUNK];
        self.len = 0;
        while self.len < CHUNK {
            match reader.read(&mut space[self.len..]) {
                Ok(0) => break,
                Ok(n) => self.len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(self.len)
    }
}

/// What the writer thread is asked to do, in order.
pub(super) enum Job {
    /// Create (or truncate) a staged file; the following writes go to it.
    Create {
        path: PathBuf,
        direct: bool,
    },
    Write(Chunk),
}

/// A thread that writes staged files while the caller reads and hashes what comes
/// next: the two halves of a copy then overlap instead of taking turns. Memory stays
/// bounded: at most [`QUEUE_DEPTH`] chunks wait, and spent chunks come back for reuse.
pub(super) struct Writer {
    jobs: Option<SyncSender<Job>>,
    spare: Receiver<Chunk>,
    thread: Option<JoinHandle<Result<(), SeedError>>>,
}

impl Writer {
    pub(super) fn spawn() -> Writer {
        let (jobs, queued) = mpsc::sync_channel(QUEUE_DEPTH);
        let (give_back, spare) = mpsc::sync_channel(QUEUE_DEPTH + 2);
        let thread = std::thread::spawn(move || write_jobs(queued, give_back));
        Writer {
            jobs: Some(jobs),
            spare,
            thread: Some(thread),
        }
    }

    /// A spent chunk to fill again, or a new one.
    pub(super) fn chunk(&self) -> Chunk {
        self.spare.try_recv().unwrap_or_else(|_| Chunk::new())
    }

    /// Queues a job. A writer that has stopped did so on an error, which is returned.
    pub(super) fn send(&mut self, job: Job) -> Result<(), SeedError> {
        let sent = match &self.jobs {
            Some(jobs) => jobs.send(job).is_ok(),
            None => false,
        };
        if sent {
            Ok(())
        } else {
            Err(self.finish().err().unwrap_or_else(|| writer_gone(None)))
        }
    }

    /// Waits for every queued write; the first error, if any.
    pub(super) fn finish(&mut self) -> Result<(), SeedError> {
        self.jobs = None;
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(writer_gone(Some("panicked"))),
            None => Ok(()),
        }
    }
}

pub(super) fn writer_gone(how: Option<&str>) -> SeedError {
    let what = format!("the staging writer thread {}", how.unwrap_or("stopped"));
    io_error("write", Path::new("(staging)"), io::Error::other(what))
}

/// The writer thread's loop; it stops at the first error, which ends the caller's next
/// [`Writer::send`].
pub(super) fn write_jobs(
    jobs: Receiver<Job>,
    give_back: SyncSender<Chunk>,
) -> Result<(), SeedError> {
    let mut current: Option<StagedWrite> = None;
    for job in jobs {
        match job {
            Job::Create { path, direct } => current = Some(StagedWrite::create(path, direct)?),
            Job::Write(chunk) => {
                let Some(out) = current.as_mut() else {
                    return Err(writer_gone(Some("got data before a file")));
                };
                out.write(chunk.filled())
                    .map_err(|e| io_error("write", &out.path, e))?;
                // A full spare queue means enough chunks are about; let this one go.
                let _ = give_back.try_send(chunk);
            }
        }
    }
    Ok(())
}

/// One staged file being written, `O_DIRECT` when asked: past the page cache, straight
/// from the chunk to the device. A staged blob is written once and not read back here,
/// so copying it into the cache would only cost CPU time and pile up dirty pages for
/// the next sync barrier to flush all at once, while direct writes keep the device
/// busy as the data arrives (scripts/bench-seed.sh on a 2-core VM: 2.7 s buffered,
/// 1.15 s direct). A last, partial chunk and file systems that refuse `O_DIRECT` go
/// through the page cache instead; the sync barrier makes either durable.
pub(super) struct StagedWrite {
    pub(super) path: PathBuf,
    file: File,
    direct: bool,
}

impl StagedWrite {
    pub(super) fn create(path: PathBuf, direct: bool) -> Result<StagedWrite, SeedError> {
        let open = |flags: i32| {
            fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .custom_flags(flags)
                .open(&path)
        };
        let direct = match direct.then(|| open(nix::libc::O_DIRECT)) {
            Some(Ok(file)) => Some(file),
            // The file system does not do O_DIRECT.
            Some(Err(e)) if e.raw_os_error() == Some(nix::libc::EINVAL) => None,
            Some(Err(e)) => return Err(io_error("create", &path, e)),
            None => None,
        };
        let (file, direct) = match direct {
            Some(file) => (file, true),
            None => (open(0).map_err(|e| io_error("create", &path, e))?, false),
        };
        file.set_permissions(fs::Permissions::from_mode(FILE_MODE))
            .map_err(|e| io_error("chmod", &path, e))?;
        Ok(StagedWrite { path, file, direct })
    }

    pub(super) fn write(&mut self, data: &[u8]) -> io::Result<()> {
        let mut done = 0;
        while done < data.len() {
            let rest = &data[done..];
            // O_DIRECT takes only whole blocks from aligned memory at aligned offsets;
            // every earlier direct write was whole chunks, so the offset is aligned.
            if self.direct && !is_direct_aligned(rest) {
                self.stop_direct()?;
            }
            match self.file.write(rest) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // A file system may take O_DIRECT at open yet refuse the write.
                Err(e) if self.direct && e.raw_os_error() == Some(nix::libc::EINVAL) => {
                    self.stop_direct()?
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub(super) fn stop_direct(&mut self) -> io::Result<()> {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        let fd = self.file.as_raw_fd();
        let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
        fcntl(fd, FcntlArg::F_SETFL(flags - OFlag::O_DIRECT))?;
        self.direct = false;
        Ok(())
    }
}

pub(super) fn is_direct_aligned(bytes: &[u8]) -> bool {
    bytes.as_ptr() as usize % DIRECT_ALIGN == 0 && bytes.len() % DIRECT_ALIGN == 0
}
