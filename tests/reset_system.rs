//! `reset` tears down what a distro leaves running for real: a containerd shim still
//! running from the data folder is killed and a pod volume still mounted is unmounted —
//! both inside the temp root only. Needs root (mounts), as CI has.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Node;

#[test]
fn reset_kills_shims_and_unmounts_pod_volumes_under_the_root() {
    if !common::is_root() {
        eprintln!("SKIPPED reset_kills_shims_and_unmounts_pod_volumes_under_the_root: needs root to mount; CI runs as root");
        return;
    }
    let node = Node::new();
    node.config("node: {address: 10.0.0.10}\npreflight: {ignore: [address]}\n");
    node.run(&["up"]).assert_code(0);

    // A shim k3s left behind: a long sleep run from the k3s data folder.
    let shim = node.path("/var/lib/rancher/k3s/data/abc123/bin/containerd-shim-runc-v2");
    std::fs::create_dir_all(shim.parent().unwrap()).unwrap();
    std::fs::copy("/bin/sleep", &shim).unwrap();
    let mut child = Command::new(&shim)
        .arg("300")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // A pod volume still mounted.
    let volume = node.path("/var/lib/kubelet/pods/pod-1/volumes/empty-dir");
    std::fs::create_dir_all(&volume).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(&volume)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount tmpfs");
    // One more, outside the root, which reset must leave alone.
    let outside = tempfile::tempdir().unwrap();
    let outside_shim = outside.path().join("containerd-shim-runc-v2");
    std::fs::copy("/bin/sleep", &outside_shim).unwrap();
    let mut bystander = Command::new(&outside_shim).arg("300").spawn().unwrap();

    let run = node.run(&["reset"]);
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let still_mounted = mountinfo.contains(&volume.display().to_string());
    if still_mounted {
        let _ = Command::new("umount").arg("-l").arg(&volume).status();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut exited = None;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            exited = Some(status);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Reaped either way (kill after an exit is a harmless error).
    let _ = child.kill();
    let _ = child.wait();
    let bystander_alive = bystander.try_wait().unwrap().is_none();
    let _ = bystander.kill();
    let _ = bystander.wait();

    run.assert_code(0);
    assert!(
        !still_mounted,
        "the pod volume is still mounted\n{}",
        run.all()
    );
    assert!(exited.is_some(), "the shim still runs\n{}", run.all());
    assert!(bystander_alive, "reset killed a process outside the root");
    assert!(!node.exists("/var/lib/rancher/k3s"), "{}", run.all());
}
