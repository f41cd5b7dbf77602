//! One `up` at a time: an exclusive `flock` on `/var/lib/bootstrap/lock` that names its holder.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another bootstrap is running ({holder}) and still holds {path} after {}; wait for it or stop it", humantime::format_duration(*.waited))]
    Held {
        path: PathBuf,
        holder: String,
        waited: Duration,
    },
    #[error("cannot open lock file {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Holds the lock until dropped (the kernel releases it if the process dies).
#[derive(Debug)]
pub struct LockGuard {
    _lock: Flock<File>,
}

/// Takes the lock at `path` (a real path), waiting at most `wait`, and records `holder`
/// (pid and command) in the file for whoever waits next.
pub fn acquire(path: &Path, wait: Duration, holder: &str) -> Result<LockGuard, LockError> {
    let open = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|source| LockError::Open {
                path: path.to_path_buf(),
                source,
            })
    };
    let start = Instant::now();
    let mut file = open()?;
    let mut announced = false;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut lock) => {
                let _ = lock.set_len(0);
                let _ = lock.seek(SeekFrom::Start(0));
                let _ = lock.write_all(holder.as_bytes());
                let _ = lock.sync_all();
                return Ok(LockGuard { _lock: lock });
            }
            Err((returned, _)) => {
                file = returned;
                let current = read_holder(&mut file);
                if start.elapsed() >= wait {
                    return Err(LockError::Held {
                        path: path.to_path_buf(),
                        holder: current,
                        waited: wait,
                    });
                }
                if !announced {
                    log::info!(
                        "waiting up to {} for another bootstrap ({current}) to finish",
                        humantime::format_duration(wait)
                    );
                    announced = true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// A shared hold on the lock, taken only while no one holds it exclusively: while it is
/// held, no `up` (nor any other command that takes the lock) can start or be running.
#[derive(Debug)]
pub struct Observer {
    _lock: Option<Flock<File>>,
}

/// Looks at the lock without waiting and without creating it: `Ok(None)` with the
/// holder's description while a command holds it, else a shared hold that keeps one from
/// starting until dropped (so what it wrote can be read consistently).
pub fn observe(path: &Path) -> Result<Result<Observer, String>, LockError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Ok(Observer { _lock: None }))
        }
        Err(source) => {
            return Err(LockError::Open {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        Ok(lock) => Ok(Ok(Observer { _lock: Some(lock) })),
        Err((mut file, _)) => Ok(Err(read_holder(&mut file))),
    }
}

fn read_holder(file: &mut File) -> String {
    let mut text = String::new();
    let _ = file.seek(SeekFrom::Start(0));
    let _ = file.read_to_string(&mut text);
    let text = text.trim();
    if text.is_empty() {
        "holder unknown".to_owned()
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_taker_waits_then_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let first = acquire(&path, Duration::from_secs(1), "pid 1 (bootstrap up)").unwrap();
        let err = acquire(&path, Duration::from_millis(300), "pid 2").unwrap_err();
        assert!(err.to_string().contains("pid 1 (bootstrap up)"), "{err}");
        drop(first);
        acquire(&path, Duration::from_millis(300), "pid 2").unwrap();
    }

    #[test]
    fn an_observer_sees_the_holder_and_keeps_the_next_one_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        assert!(
            observe(&path).unwrap().is_ok(),
            "no lock file: nothing runs"
        );
        assert!(!path.exists(), "observing creates nothing");
        let held = acquire(&path, Duration::from_secs(1), "pid 7 (bootstrap up)").unwrap();
        assert_eq!(observe(&path).unwrap().unwrap_err(), "pid 7 (bootstrap up)");
        drop(held);
        let observer = observe(&path).unwrap().unwrap();
        assert!(acquire(&path, Duration::from_millis(200), "pid 8").is_err());
        drop(observer);
        acquire(&path, Duration::from_millis(200), "pid 8").unwrap();
    }
}
