//! A full disk: unpacking the cluster image, seeding images and journaling onto a small
//! tmpfs fail with an error naming the path and the room, leave the previous image,
//! registry storage and journal as they were, and succeed once there is room.
//!
//! Mounting a tmpfs needs root (CI has it); without it each test prints `SKIPPED` and
//! why.

#[path = "seed_support/archives.rs"]
mod archives;

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use archives::{self as build, TestImage};
use common::Node;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// A size-limited tmpfs mounted on a folder, unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts one of `size` bytes on `dir`; `None` (after a `SKIPPED` line naming the
    /// test and why) where this process may not mount.
    fn mount(test: &str, dir: &Path, size: u64) -> Option<Tmpfs> {
        if !common::is_root() {
            eprintln!("SKIPPED {test}: mounting a tmpfs needs root");
            return None;
        }
        fs::create_dir_all(dir).unwrap();
        let options = format!("size={size},mode=0755");
        if let Err(e) = mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            MsFlags::empty(),
            Some(options.as_str()),
        ) {
            eprintln!(
                "SKIPPED {test}: cannot mount a tmpfs on {}: {e}",
                dir.display()
            );
            return None;
        }
        Some(Tmpfs {
            dir: dir.to_path_buf(),
        })
    }

    /// Makes it `size` bytes, keeping what is in it.
    fn resize(&self, size: u64) {
        let options = format!("size={size},mode=0755");
        mount(
            Some("tmpfs"),
            &self.dir,
            Some("tmpfs"),
            MsFlags::MS_REMOUNT,
            Some(options.as_str()),
        )
        .unwrap();
    }

    fn free(&self) -> u64 {
        let stat = nix::sys::statvfs::statvfs(&self.dir).unwrap();
        stat.blocks_available() as u64 * stat.fragment_size() as u64
    }

    /// Fills it with a file until `left` bytes are free.
    fn fill(&self, left: u64) -> PathBuf {
        let filler = self.dir.join("filler");
        let size = self.free().saturating_sub(left);
        fs::write(&filler, vec![0u8; size as usize]).unwrap();
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Err(e) = umount2(&self.dir, MntFlags::MNT_DETACH) {
            eprintln!("cannot unmount {}: {e}", self.dir.display());
        }
    }
}

/// Every file under `dir` with its bytes.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(base).unwrap().to_path_buf();
            if meta.is_dir() {
                walk(base, &path, out);
            } else if meta.is_symlink() {
                let target = fs::read_link(&path).unwrap();
                out.insert(rel, target.into_os_string().into_encoded_bytes());
            } else {
                out.insert(rel, fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(fs::read(path).unwrap()))
}

#[test]
fn a_full_journal_disk_changes_nothing_and_up_finishes_once_there_is_room() {
    let node = Node::new();
    let Some(tmpfs) = Tmpfs::mount(
        "a_full_journal_disk",
        &node.path("/var/lib/bootstrap"),
        1 << 20,
    ) else {
        return;
    };
    // The tmpfs hides the image Node::new put there.
    node.image("k3s", "v1.31.4+k3s1");
    node.run(&["up"]).assert_code(0);
    // Drift: the next `up` has a step to journal.
    node.write(
        "/etc/sysctl.d/90-bootstrap.conf",
        "net.ipv4.ip_forward = 0\n",
    );
    let journal = node.read("/var/lib/bootstrap/journal.json").unwrap();
    assert!(journal.len() > 4096, "the journal takes more than a page");
    let filler = tmpfs.fill(4096);

    let run = node.run(&["up"]);
    run.assert_code(1);
    assert!(
        run.stderr
            .contains("cannot record progress in /var/lib/bootstrap/journal.json"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("No space left on device"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("(needs ") && run.stderr.contains("free on its file system"),
        "{}",
        run.stderr
    );
    assert_eq!(
        node.read("/var/lib/bootstrap/journal.json").unwrap(),
        journal,
        "the journal is the last one written"
    );
    assert_eq!(
        node.read("/etc/sysctl.d/90-bootstrap.conf").unwrap(),
        "net.ipv4.ip_forward = 0\n",
        "no step ran unjournaled"
    );

    fs::remove_file(filler).unwrap();
    node.run(&["up"]).assert_code(0);
    assert!(node
        .read("/etc/sysctl.d/90-bootstrap.conf")
        .unwrap()
        .contains("ip_forward = 1"));
    assert!(!node.exists("/var/lib/bootstrap/failed.json"));
}

#[test]
fn unpacking_onto_a_full_disk_keeps_the_previous_image_and_finishes_once_there_is_room() {
    let node = Node::new();
    // The image as two archives: the one in use, and a newer one with 3 MiB more.
    let staged = tempfile::tempdir().unwrap();
    let img = node.path("/var/lib/bootstrap/rootfs");
    for entry in fs::read_dir(&img).unwrap().flatten() {
        fs::rename(entry.path(), staged.path().join(entry.file_name())).unwrap();
    }
    fs::remove_dir(&img).unwrap();
    fs::create_dir_all(node.path("/images")).unwrap();
    let tar = |out: &Path| {
        let status = Command::new("tar")
            .arg("--zstd")
            .arg("-cf")
            .arg(out)
            .arg("-C")
            .arg(staged.path())
            .arg(".")
            .status()
            .unwrap();
        assert!(status.success());
        sha256_file(out)
    };
    let small = tar(&node.path("/images/small.tar.zst"));
    fs::create_dir_all(staged.path().join("extra")).unwrap();
    fs::write(
        staged.path().join("extra/big.bin"),
        build::random_bytes(7, 3 << 20),
    )
    .unwrap();
    let big = tar(&node.path("/images/big.tar.zst"));

    let Some(tmpfs) = Tmpfs::mount(
        "unpacking_onto_a_full_disk",
        &node.path("/var/lib/bootstrap"),
        2 << 20,
    ) else {
        return;
    };
    node.config(&format!(
        "rootfs:\n  archive: /images/small.tar.zst\n  sha256: {small}\n"
    ));
    node.run(&["up"]).assert_code(0);
    let link = node.path("/var/lib/bootstrap/rootfs");
    let before = fs::read_link(&link).unwrap();
    let image = tree(&node.path("/var/lib/bootstrap/rootfs.versions"));
    let journal = node.read("/var/lib/bootstrap/journal.json").unwrap();

    node.config(&format!(
        "rootfs:\n  archive: /images/big.tar.zst\n  sha256: {big}\n"
    ));
    let run = node.run(&["up"]);
    run.assert_code(1);
    let real = node.path("/var/lib/bootstrap/rootfs");
    assert!(
        run.stderr.contains(&format!(
            "not enough space to unpack {} into {}: it needs 3.0 MiB",
            node.path("/images/big.tar.zst").display(),
            real.display()
        )) && run.stderr.contains("free on its file system"),
        "{}",
        run.stderr
    );
    assert_eq!(
        fs::read_link(&link).unwrap(),
        before,
        "DEST still points at it"
    );
    assert_eq!(
        tree(&node.path("/var/lib/bootstrap/rootfs.versions")),
        image,
        "the image in use is untouched"
    );
    let leftovers: Vec<_> = fs::read_dir(node.path("/var/lib/bootstrap"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("staging"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let failed = node.read("/var/lib/bootstrap/failed.json").unwrap();
    assert!(
        failed.contains("unpack:/var/lib/bootstrap/rootfs"),
        "{failed}"
    );
    // Only the unpack step's record changed.
    let now: serde_json::Value =
        serde_json::from_str(&node.read("/var/lib/bootstrap/journal.json").unwrap()).unwrap();
    let then: serde_json::Value = serde_json::from_str(&journal).unwrap();
    let done = |j: &serde_json::Value| -> Vec<String> {
        j["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["status"] == "done" && !e["id"].as_str().unwrap().starts_with("unpack:"))
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(done(&now), done(&then));

    tmpfs.resize(16 << 20);
    node.run(&["up"]).assert_code(0);
    assert_ne!(fs::read_link(&link).unwrap(), before);
    assert!(node.exists("/var/lib/bootstrap/rootfs/extra/big.bin"));
    assert!(!node.exists("/var/lib/bootstrap/failed.json"));
}

#[test]
fn seeding_onto_a_full_disk_keeps_the_storage_and_finishes_once_there_is_room() {
    let work = tempfile::tempdir().unwrap();
    let storage = work.path().join("registry");
    let Some(tmpfs) = Tmpfs::mount("seeding_onto_a_full_disk", &storage, 1 << 20) else {
        return;
    };
    let images = work.path().join("images");
    fs::create_dir_all(&images).unwrap();
    let small = TestImage::random(201, 1, 64 * 1024);
    fs::write(
        images.join("10-small.tar"),
        build::tar(&build::docker_save(&[(
            &small,
            &["docker.io/library/small:1"],
        )])),
    )
    .unwrap();
    bootstrap::images::seed_images_dir(&images, &storage).expect("the small one fits");
    let seeded = tree(&storage);

    let big = TestImage::random(202, 2, 1 << 20);
    fs::write(
        images.join("20-big.tar"),
        build::tar(&build::docker_save(&[(&big, &["docker.io/library/big:1"])])),
    )
    .unwrap();
    let err = bootstrap::images::seed_images_dir(&images, &storage)
        .expect_err("2 MiB of layers do not fit in 1 MiB")
        .to_string();
    assert!(
        err.contains(&format!(
            "not enough space to seed {} into {}: it holds 2.0 MiB",
            images.join("20-big.tar").display(),
            storage.display()
        )),
        "{err}"
    );
    assert!(err.contains("free on its file system"), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert_eq!(tree(&storage), seeded, "the storage is as it was");

    tmpfs.resize(8 << 20);
    let report = bootstrap::images::seed_images_dir(&images, &storage).expect("room now");
    assert!(
        report
            .images
            .iter()
            .any(|i| format!("{i:?}").contains("big")),
        "{report:?}"
    );
}

#[test]
fn a_write_that_finds_the_disk_full_names_the_path_and_the_room() {
    // --max-size above the free space: the limit does not stop it, the file system does.
    let work = tempfile::tempdir().unwrap();
    let image = work.path().join("image");
    fs::create_dir_all(image.join("bin")).unwrap();
    fs::write(
        image.join("Metadata"),
        format!(
            r#"{{"version":"v1.31.4+k3s1","arch":"{}","ClusterRuntime":"k3s"}}"#,
            common::arch()
        ),
    )
    .unwrap();
    fs::write(image.join("bin/k3s"), build::random_bytes(9, 2 << 20)).unwrap();
    let archive = work.path().join("image.tar");
    let status = Command::new("tar")
        .arg("-cf")
        .arg(&archive)
        .arg("-C")
        .arg(&image)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    let disk = work.path().join("disk");
    let Some(_tmpfs) = Tmpfs::mount("a_write_that_finds_the_disk_full", &disk, 1 << 20) else {
        return;
    };
    let dest = disk.join("rootfs");
    let run = common::to_run(
        Command::new(common::BIN)
            .args(["rootfs", "unpack"])
            .arg(&archive)
            .arg(&dest)
            .args(["--max-size", "100M"])
            .output()
            .unwrap(),
    );
    run.assert_code(1);
    assert!(
        run.stderr.contains(&disk.display().to_string())
            && run.stderr.contains("No space left on device")
            && run.stderr.contains("free on its file system"),
        "{}",
        run.stderr
    );
    let left: Vec<_> = fs::read_dir(&disk)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(
        left.iter()
            .all(|p| !p.to_string_lossy().contains("staging")),
        "{left:?}"
    );
    assert!(!dest.exists(), "nothing published");
}
