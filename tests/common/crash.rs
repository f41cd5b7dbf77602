//! The crash-point harness (`tests/crash_points.rs`, needs the `fault-injection` feature):
//! runs a scenario once to learn its end state and its fault points, then for every point
//! kills a fresh copy there, re-runs the command, and compares the end state.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Node;

/// One bootstrap run may take this long before the test calls it hung.
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

/// A fresh node ready for a scenario's commands, with what must live as long as it.
pub struct Prepared {
    pub node: Node,
    /// Where the kube stand-ins keep the cluster (compared too), when shared.
    pub cluster: Option<PathBuf>,
    /// Sockets, temp folders: dropped with the node.
    pub keep: Vec<Box<dyn std::any::Any + Send + Sync>>,
}

/// One command of a scenario; `faults` says whether the crash test kills it at its points
/// (commands that only set the scene, as the `up` before a `reset`, are covered elsewhere).
pub struct Step {
    pub args: Vec<String>,
    pub faults: bool,
}

/// Commands run in order on a fresh node.
pub struct Scenario {
    pub name: String,
    pub prepare: Box<dyn Fn() -> Prepared + Send + Sync>,
    pub steps: Vec<Step>,
    /// The command whose second run must change nothing (`up`; `reset` for a reset).
    pub again: Vec<String>,
    /// One point at a time: the scenario's nodes listen on a fixed address (the one
    /// their files name, so that every run's files are equal).
    pub serial: bool,
}

/// Calls that only ask (unit state, readiness, node lists), which every run makes to check
/// its steps: not changes.
pub fn is_question(call: &str) -> bool {
    call.starts_with("systemctl is-")
        || call.contains("get --raw")
        || call.contains("status -o json")
        || call.contains(" get ")
        || call.ends_with(" version")
        || call.contains(" version -o json")
        || call.contains("--version")
}

/// Commands that must never run more often than in an uninterrupted run: a second
/// `kubeadm init` or `k0s install` would fail or split the cluster, a second token minted
/// where one was enough is a credential nobody needed.
const ONCE: &[&str] = &[
    "kubeadm init",
    "k0s install",
    "token create",
    "k0s token create",
];

/// What a run left: the tree under the root and what the stand-ins recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndState {
    pub tree: BTreeMap<String, String>,
    pub cluster: String,
    /// Distinct changing calls, the root's path written `ROOT`.
    pub changes: BTreeSet<String>,
    /// How often each must-run-once command ran.
    pub once: BTreeMap<String, usize>,
}

/// Runs `node` with `args` and extra environment, bounded; returns the exit status.
fn run(node: &Node, args: &[String], env: &[(&str, String)]) -> (std::process::ExitStatus, String) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = node.command(&args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let work = tempfile::tempdir().expect("temp dir");
    let (status, _, stderr) = super::run_bounded(&mut cmd, work.path(), RUN_TIMEOUT);
    (status, stderr)
}

fn run_ok(node: &Node, args: &[String], what: &str) {
    let (status, stderr) = run(node, args, &[]);
    assert!(
        status.success(),
        "{what}: `{}` {status}\n{stderr}",
        args.join(" ")
    );
}

/// What the stand-in systemctl's units said (their daemons' output), to tell why one
/// failed.
fn unit_logs(node: &Node) -> String {
    super::unit_logs(node.root())
        .into_iter()
        .map(|(path, text)| format!("--- {}\n{text}", path.display()))
        .collect()
}

/// Names of the fault points one clean run of `args` reaches, in order.
fn list_points(node: &Node, args: &[String]) -> Vec<String> {
    let list = node.root().join(".standin-fault-points");
    let (status, stderr) = run(
        node,
        args,
        &[("BOOTSTRAP_FAULT_LIST", list.display().to_string())],
    );
    assert!(
        status.success(),
        "listing points: {status}\n{stderr}\n{}\ncalls: {:#?}",
        unit_logs(node),
        node.calls()
    );
    let text = fs::read_to_string(&list).unwrap_or_default();
    let _ = fs::remove_file(&list);
    text.lines().map(str::to_owned).collect()
}

/// The scenario run without a fault; also proves that the feature is on (points listed).
pub fn uninterrupted(scenario: &Scenario) -> (Prepared, Vec<Vec<String>>) {
    let prepared = (scenario.prepare)();
    let mut points = Vec::new();
    for step in &scenario.steps {
        if step.faults {
            points.push(list_points(&prepared.node, &step.args));
        } else {
            run_ok(&prepared.node, &step.args, &scenario.name);
            points.push(Vec::new());
        }
    }
    (prepared, points)
}

/// The end state of `prepared`, normalised (see [`normalise`]).
pub fn end_state(prepared: &Prepared) -> EndState {
    let root = prepared.node.root();
    let mut tree = BTreeMap::new();
    walk(root, root, &mut tree);
    let cluster = prepared
        .cluster
        .as_ref()
        .map(|c| {
            let text = fs::read_to_string(c.join("cluster.json")).unwrap_or_default();
            super::crash_normalise::cluster(&text, &root.display().to_string())
        })
        .unwrap_or_default();
    let root_text = root.display().to_string();
    let calls: Vec<String> = prepared
        .node
        .calls()
        .into_iter()
        .map(|c| c.replace(&root_text, "ROOT"))
        .collect();
    let changes = calls.iter().filter(|c| !is_question(c)).cloned().collect();
    let once = ONCE
        .iter()
        .map(|o| {
            let n = calls
                .iter()
                .filter(|c| c.starts_with(o) || c.contains(&format!(" {o}")))
                .count();
            (o.to_string(), n)
        })
        .collect();
    EndState {
        tree,
        cluster,
        changes,
        once,
    }
}

fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".standin") {
            continue;
        }
        let rel = format!("/{}", path.strip_prefix(base).unwrap().display());
        let meta = fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o7777;
        let shown = if meta.file_type().is_symlink() {
            format!("link -> {}", fs::read_link(&path).unwrap().display())
        } else if meta.is_dir() {
            walk(base, &path, out);
            format!("dir {mode:04o}")
        } else if meta.file_type().is_socket() {
            format!("socket {mode:04o}")
        } else {
            let bytes = fs::read(&path).unwrap_or_default();
            let text = String::from_utf8_lossy(&bytes);
            format!(
                "file {mode:04o} {}",
                super::crash_normalise::file(&rel, &text, &base.display().to_string())
            )
        };
        out.insert(rel, shown);
    }
}

use std::os::unix::fs::FileTypeExt;

/// Where a crash run went wrong.
pub struct Failure {
    pub scenario: String,
    pub point: String,
    pub why: String,
}

/// Kills the scenario at every point of every faulted command and checks it converges
/// to `expected`; returns the number of points run and the failures.
pub fn every_point(
    scenario: &Scenario,
    points: &[Vec<String>],
    expected: &EndState,
) -> (usize, Vec<Failure>) {
    let work: Vec<(usize, usize, String)> = points
        .iter()
        .enumerate()
        .flat_map(|(s, names)| {
            names
                .iter()
                .enumerate()
                .map(move |(k, n)| (s, k + 1, n.clone()))
        })
        // CRASH_POINTS=TEXT runs only the points whose name holds TEXT (to reproduce one).
        .filter(|(_, _, n)| std::env::var("CRASH_POINTS").map_or(true, |f| n.contains(&f)))
        .collect();
    // CRASH_EVERY=N runs every N-th point of the scenario, starting with its first and
    // always ending with its last (CI's share of the whole sweep; the sweep is N=1, the
    // default).
    let every: usize = std::env::var("CRASH_EVERY")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n >= 1)
        .unwrap_or(1);
    let all = work.len();
    let last = all.saturating_sub(1);
    let work: Vec<(usize, usize, String)> = work
        .into_iter()
        .enumerate()
        .filter(|(i, _)| i % every == 0 || *i == last)
        .map(|(_, w)| w)
        .collect();
    if every > 1 {
        println!(
            "crash points: {}: {} of its {all} points, every {every}th and the last (CRASH_EVERY)",
            scenario.name,
            work.len()
        );
    }
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    let threads = if scenario.serial {
        1
    } else {
        std::env::var("CRASH_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get() * 2)
                    .unwrap_or(2)
            })
    };
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some((step, k, name)) = work.get(i) else {
                    break;
                };
                if let Err(why) = one_point(scenario, *step, *k, expected) {
                    failures.lock().unwrap().push(Failure {
                        scenario: scenario.name.clone(),
                        point: name.clone(),
                        why,
                    });
                }
            });
        }
    });
    (work.len(), failures.into_inner().unwrap())
}

/// A fresh node, the commands before `step` clean, `step` killed at point `k` and run
/// again, the rest clean; then the end state compared with `expected`.
fn one_point(
    scenario: &Scenario,
    step: usize,
    k: usize,
    expected: &EndState,
) -> Result<(), String> {
    let prepared = (scenario.prepare)();
    for (i, s) in scenario.steps.iter().enumerate() {
        if i == step {
            let (status, stderr) = run(
                &prepared.node,
                &s.args,
                &[("BOOTSTRAP_FAULT_AT", k.to_string())],
            );
            if status.signal() != Some(nix::libc::SIGABRT) {
                return Err(format!("did not die at the point ({status}): the points differ from the listing run\n{stderr}"));
            }
        }
        let (status, stderr) = run(&prepared.node, &s.args, &[]);
        if !status.success() {
            let again = if i == step {
                "the re-run after the crash"
            } else {
                "a later command"
            };
            return Err(format!(
                "{again} `{}` {status}:\n{stderr}",
                s.args.join(" ")
            ));
        }
    }
    let got = end_state(&prepared);
    compare(expected, &got)
}

/// Equal, or a list of the differences.
pub fn compare(expected: &EndState, got: &EndState) -> Result<(), String> {
    let mut diffs = Vec::new();
    let keys: BTreeSet<&String> = expected.tree.keys().chain(got.tree.keys()).collect();
    for key in keys {
        match (expected.tree.get(key), got.tree.get(key)) {
            (a, b) if a == b => {}
            (Some(a), Some(b)) => diffs.push(format!("{key}: {}", first_difference(a, b))),
            (Some(_), None) => diffs.push(format!("{key}: missing")),
            (None, Some(b)) => diffs.push(format!("{key}: left over ({})", first_line(b))),
            (None, None) => {}
        }
    }
    if expected.cluster != got.cluster {
        diffs.push(format!(
            "stand-in cluster state: {}",
            first_difference(&expected.cluster, &got.cluster)
        ));
    }
    for missing in expected.changes.difference(&got.changes) {
        diffs.push(format!("never ran: {missing}"));
    }
    for extra in got.changes.difference(&expected.changes) {
        diffs.push(format!("ran, not in a clean run: {extra}"));
    }
    for (cmd, n) in &got.once {
        let want = expected.once.get(cmd).copied().unwrap_or(0);
        if *n != want {
            diffs.push(format!("`{cmd}` ran {n} times, {want} in a clean run"));
        }
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(diffs.join("\n"))
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

/// The first line where two texts part, with its neighbours' line number.
fn first_difference(a: &str, b: &str) -> String {
    let (la, lb): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let n = la.iter().zip(&lb).take_while(|(x, y)| x == y).count();
    format!(
        "line {}: expected `{}`, got `{}`",
        n + 1,
        la.get(n).copied().unwrap_or("<end>"),
        lb.get(n).copied().unwrap_or("<end>")
    )
}

/// A second `again` after success: no changing call, no file written (contents and
/// mtimes), except the lock file, which names whoever last held it.
pub fn assert_idempotent(scenario: &Scenario, prepared: &Prepared) {
    let node = &prepared.node;
    let before = node.snapshot();
    let calls = node.calls().len();
    let (status, stderr) = run(node, &scenario.again, &[]);
    assert!(
        status.success(),
        "{}: a second `{}` {status}\n{stderr}",
        scenario.name,
        scenario.again.join(" ")
    );
    let again: Vec<String> = node.calls()[calls..]
        .iter()
        .filter(|c| !is_question(c))
        .cloned()
        .collect();
    assert!(
        again.is_empty(),
        "{}: a second `{}` ran {again:?}",
        scenario.name,
        scenario.again.join(" ")
    );
    let after = node.snapshot();
    let lock = Path::new("var/lib/bootstrap/lock");
    // A `reset` removed the lock with the rest of the state; taking it again makes the
    // file anew, which touches its folder's mtime (its listing is still compared).
    let state = Path::new("var/lib/bootstrap");
    let same = |k: &Path| {
        let (a, b) = (before.get(k), after.get(k));
        a == b
            || k == lock
            || (k == state && a.zip(b).is_some_and(|(a, b)| (a.0, a.1) == (b.0, b.1)))
    };
    let changed: Vec<_> = before
        .keys()
        .chain(after.keys())
        .filter(|k| !same(k))
        .collect();
    assert!(
        changed.is_empty(),
        "{}: a second `{}` changed {changed:?}\n{stderr}",
        scenario.name,
        scenario.again.join(" ")
    );
}

/// Runs `scenario` at every point; panics with every failure, returns the point count.
pub fn check(scenario: &Scenario) -> usize {
    let start = Instant::now();
    let (prepared, points) = uninterrupted(scenario);
    let expected = end_state(&prepared);
    assert_idempotent(scenario, &prepared);
    // Gone before the next node starts: a serial scenario's services hold fixed addresses.
    drop(prepared);
    // Two clean runs must be equal under the comparison's rules: otherwise a difference
    // after a crash could be one that any run makes (crash_normalise lists what is masked).
    let (second, _) = uninterrupted(scenario);
    if let Err(diff) = compare(&expected, &end_state(&second)) {
        panic!(
            "{}: two clean runs differ; crash_normalise must say why:\n{diff}",
            scenario.name
        );
    }
    drop(second);
    let total: usize = points.iter().map(Vec::len).sum();
    assert!(
        total > 0,
        "{}: no fault point reached: is the fault-injection feature on?",
        scenario.name
    );
    let (count, failures) = every_point(scenario, &points, &expected);
    eprintln!(
        "crash points: {}: {count} points, {} failed, {:.0?}",
        scenario.name,
        failures.len(),
        start.elapsed()
    );
    if !failures.is_empty() {
        let shown: Vec<String> = failures
            .iter()
            .map(|f| format!("--- {} at {}:\n{}", f.scenario, f.point, f.why))
            .collect();
        panic!(
            "{} of {count} crash points did not converge:\n{}",
            failures.len(),
            shown.join("\n")
        );
    }
    count
}
