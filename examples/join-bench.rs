//! Load generator for `bootstrap serve` (scripts/bench-join.sh runs it): N joiners on N
//! threads, released together by a barrier, each asking once for worker material with the
//! library's own client, each request timed. Not part of the command line.
//!
//!     cargo run --release --example join-bench -- ADDR SECRET_FILE CLUSTER N [--retry-for SECS]
//!
//! Prints one line: joiners, successes, failures (by cause), joins per second, p50, p99
//! and max latency. With `--retry-for`, a joiner whose ask fails tries again (full-jitter
//! backoff, 50 ms base, 1 s cap) until it succeeds or SECS have passed, as real joiners
//! do; its latency is then the time to its material, and the line also gives the number
//! of asks. Exits 1 when any joiner ended without material, 2 on bad usage.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use bootstrap::distro::JoinRole;
use bootstrap::join::client::{ask, Cause};
use bootstrap::join::proto::{Request, RequestKind};
use bootstrap::join::JoinKeys;

/// What one joiner saw.
struct Outcome {
    start: Instant,
    end: Instant,
    /// Time from the barrier to the material (or to giving up).
    latency: Duration,
    asks: u32,
    /// `None` when it got its material; else the last cause.
    failure: Option<Cause>,
}

fn kind(cause: &Cause) -> &'static str {
    match cause {
        Cause::Unreachable(_) => "unreachable",
        Cause::Tls(_) => "tls",
        Cause::Refused(_) => "refused",
        Cause::NotReady(_) => "not-ready",
        Cause::Busy(_) => "busy",
        Cause::Protocol(_) => "protocol",
        Cause::Failed(_) => "failed",
    }
}

/// A random delay in [0, min(cap, base * 2^round)].
fn jitter(round: u32) -> Duration {
    let ceiling = Duration::from_millis(50)
        .saturating_mul(1 << round.min(10))
        .min(Duration::from_secs(1));
    let mut seed = [0u8; 8];
    let fraction = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed))
        .map(|()| u64::from_le_bytes(seed) as f64 / u64::MAX as f64)
        .unwrap_or(0.5);
    ceiling.mul_f64(fraction)
}

fn joiner(
    address: &str,
    keys: &JoinKeys,
    index: usize,
    barrier: &Barrier,
    retry_for: Option<Duration>,
) -> Outcome {
    let request = Request {
        version: 1,
        kind: RequestKind::Join,
        role: JoinRole::Worker,
        node: format!("bench-{index:04}"),
        credential: None,
        drain_timeout_secs: None,
        kube_version: None,
    };
    barrier.wait();
    let start = Instant::now();
    let mut asks = 0;
    loop {
        asks += 1;
        let failure = match ask(address, keys, &request) {
            Ok(response) if response.material.is_some() => None,
            Ok(_) => Some(Cause::Protocol("an answer without material".into())),
            Err(cause) => Some(cause),
        };
        let done = match (&failure, retry_for) {
            (None, _) | (Some(_), None) => true,
            // Bounded: by time, and by count.
            (Some(_), Some(limit)) => start.elapsed() >= limit || asks >= 200,
        };
        if done {
            let end = Instant::now();
            return Outcome {
                start,
                end,
                latency: end - start,
                asks,
                failure,
            };
        }
        std::thread::sleep(jitter(asks - 1));
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || {
        eprintln!("usage: join-bench ADDR SECRET_FILE CLUSTER N [--retry-for SECS]");
        ExitCode::from(2)
    };
    let (address, secret_file, cluster, n, retry_for) = match args.as_slice() {
        [a, s, c, n] => (a, s, c, n, None),
        [a, s, c, n, flag, secs] if flag == "--retry-for" => match secs.parse::<u64>() {
            Ok(secs) => (a, s, c, n, Some(Duration::from_secs(secs))),
            Err(_) => return usage(),
        },
        _ => return usage(),
    };
    let Ok(n) = n.parse::<usize>() else {
        return usage();
    };
    if n == 0 || n > 20_000 {
        eprintln!("join-bench: N must be 1 to 20000");
        return ExitCode::from(2);
    }
    let secret = match std::fs::read_to_string(secret_file) {
        Ok(text) => bootstrap::secret::Secret::new(text.trim()),
        Err(e) => {
            eprintln!("join-bench: {secret_file}: {e}");
            return ExitCode::from(2);
        }
    };
    // Derived once (Argon2id), shared by every joiner: what every process start pays
    // (the service, each joiner's `up`, `token create`), timed here.
    let derive_started = Instant::now();
    let keys = match JoinKeys::from_secret(&secret, cluster) {
        Ok(keys) => Arc::new(keys),
        Err(e) => {
            eprintln!("join-bench: {e}");
            return ExitCode::from(2);
        }
    };
    {
        use bootstrap::join::keys::{KDF_LANES, KDF_MEMORY_KIB, KDF_PASSES};
        println!(
            "join-bench: key derivation (Argon2id, m={} MiB, t={KDF_PASSES}, p={KDF_LANES}) took {:.3} s",
            KDF_MEMORY_KIB / 1024,
            derive_started.elapsed().as_secs_f64()
        );
    }
    let address = Arc::new(address.clone());
    let barrier = Arc::new(Barrier::new(n + 1));
    let mut threads = Vec::with_capacity(n);
    for index in 0..n {
        let (keys, address, barrier) = (keys.clone(), address.clone(), barrier.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("joiner-{index}"))
            .stack_size(256 * 1024)
            .spawn(move || joiner(&address, &keys, index, &barrier, retry_for));
        match spawned {
            Ok(handle) => threads.push(handle),
            Err(e) => {
                // The others wait at the barrier for ever otherwise.
                eprintln!("join-bench: cannot start joiner {index}: {e}");
                std::process::exit(2);
            }
        }
    }
    barrier.wait();
    let outcomes: Vec<Outcome> = threads
        .into_iter()
        .map(|t| t.join().expect("a joiner panicked"))
        .collect();
    // From the first joiner's start to the last one's end (this thread may run late).
    let first = outcomes.iter().map(|o| o.start).min().expect("n >= 1");
    let last = outcomes.iter().map(|o| o.end).max().expect("n >= 1");
    let wall = last - first;

    let mut ok: Vec<Duration> = outcomes
        .iter()
        .filter(|o| o.failure.is_none())
        .map(|o| o.latency)
        .collect();
    ok.sort();
    let mut failures: BTreeMap<&str, (usize, String)> = BTreeMap::new();
    for cause in outcomes.iter().filter_map(|o| o.failure.as_ref()) {
        let entry = failures
            .entry(kind(cause))
            .or_insert_with(|| (0, cause.to_string()));
        entry.0 += 1;
    }
    let failed = n - ok.len();
    let asks: u32 = outcomes.iter().map(|o| o.asks).sum();
    let secs = |d: Duration| format!("{:.3} s", d.as_secs_f64());
    let mut line = format!(
        "join-bench: {n} joiners, {} ok, {failed} failed in {}: {:.0} joins/s, p50 {}, p99 {}, max {}",
        ok.len(),
        secs(wall),
        ok.len() as f64 / wall.as_secs_f64(),
        secs(percentile(&ok, 50.0)),
        secs(percentile(&ok, 99.0)),
        secs(ok.last().copied().unwrap_or_default()),
    );
    if retry_for.is_some() {
        line.push_str(&format!(", {asks} asks"));
    }
    if !failures.is_empty() {
        let parts: Vec<String> = failures
            .iter()
            .map(|(kind, (count, example))| format!("{kind} {count} (e.g. {example})"))
            .collect();
        line.push_str(&format!("; failures: {}", parts.join("; ")));
    }
    println!("{line}");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
