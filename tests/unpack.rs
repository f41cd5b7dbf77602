//! `rootfs unpack`: a corpus of hostile and broken archives, each refused with the entry
//! named, nothing written outside DEST and the image already there left intact; and valid
//! archives in every format unpacking to exactly what GNU tar produces.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{to_run, Run, BIN};

/// Builds tar streams byte by byte, so tests can write what no well-behaved tool would.
#[derive(Default)]
struct RawTar {
    buf: Vec<u8>,
}

impl RawTar {
    fn header(&mut self, name: &[u8], kind: u8, link: &[u8], size: u64, mode: u32) {
        let mut h = tar::Header::new_gnu();
        h.set_size(size);
        h.set_mode(mode);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::new(kind));
        let old = h.as_old_mut();
        let n = name.len().min(100);
        old.name[..n].copy_from_slice(&name[..n]);
        let l = link.len().min(100);
        old.linkname[..l].copy_from_slice(&link[..l]);
        h.set_cksum();
        self.buf.extend_from_slice(h.as_bytes());
    }

    fn data(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.buf.extend(std::iter::repeat_n(0u8, pad));
    }

    fn file(mut self, name: &str, data: &[u8], mode: u32) -> Self {
        self.header(name.as_bytes(), b'0', b"", data.len() as u64, mode);
        self.data(data);
        self
    }

    fn dir(mut self, name: &str, mode: u32) -> Self {
        self.header(name.as_bytes(), b'5', b"", 0, mode);
        self
    }

    fn special(mut self, name: &str, kind: u8, link: &str) -> Self {
        self.header(name.as_bytes(), kind, link.as_bytes(), 0, 0o644);
        self
    }

    /// A GNU long-name entry for the next header.
    fn long_name(mut self, name: &[u8]) -> Self {
        let mut data = name.to_vec();
        data.push(0);
        self.header(b"././@LongLink", b'L', b"", data.len() as u64, 0o644);
        self.data(&data);
        self
    }

    /// A minimal valid k3s image first, so only the entry under test can be at fault.
    fn image() -> Self {
        RawTar::default()
            .file(
                "Metadata",
                br#"{"version":"v1.31.4+k3s1","ClusterRuntime":"k3s"}"#,
                0o644,
            )
            .dir("bin", 0o755)
            .file("bin/k3s", &[7u8; 4096], 0o755)
    }

    fn finish(mut self) -> Vec<u8> {
        self.buf.extend(std::iter::repeat_n(0u8, 1024));
        self.buf
    }

    fn unterminated(self) -> Vec<u8> {
        self.buf
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// A scene: DEST with an image already unpacked, a canary folder beside it.
struct Scene {
    dir: tempfile::TempDir,
}

impl Scene {
    fn new() -> Scene {
        let scene = Scene {
            dir: tempfile::tempdir().unwrap(),
        };
        fs::create_dir_all(scene.canary()).unwrap();
        fs::write(scene.canary().join("file"), "original").unwrap();
        let first = RawTar::image()
            .file("etc/version", b"first", 0o644)
            .finish();
        let archive = scene.write("first.tar", &first);
        scene.unpack(&archive, &[]).assert_code(0);
        scene
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }
    fn canary(&self) -> PathBuf {
        self.root().join("canary")
    }
    fn dest(&self) -> PathBuf {
        self.root().join("dest")
    }

    fn write(&self, name: &str, data: &[u8]) -> PathBuf {
        let p = self.root().join(name);
        fs::write(&p, data).unwrap();
        p
    }

    fn unpack(&self, archive: &Path, extra: &[&str]) -> Run {
        to_run(
            Command::new(BIN)
                .args(["rootfs", "unpack"])
                .arg(archive)
                .arg(self.dest())
                .args(extra)
                .output()
                .unwrap(),
        )
    }

    /// Everything under the scene except the archives: path → (mode, contents or link).
    fn state(&self) -> BTreeMap<PathBuf, (u32, String)> {
        let mut out = BTreeMap::new();
        walk(self.root(), self.root(), &mut out);
        out.retain(|p, _| {
            let s = p.to_string_lossy();
            !(s.ends_with(".tar")
                || s.ends_with(".gz")
                || s.ends_with(".zst")
                || s.ends_with(".sha256")
                || s.ends_with(".bin"))
        });
        out
    }
}

fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, (u32, String)>) {
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let meta = fs::symlink_metadata(&path).unwrap();
        let rel = path.strip_prefix(base).unwrap().to_path_buf();
        let what = if meta.file_type().is_symlink() {
            format!("-> {}", fs::read_link(&path).unwrap().display())
        } else if meta.is_dir() {
            walk(base, &path, out);
            "dir".to_owned()
        } else {
            sha256(&fs::read(&path).unwrap())
        };
        out.insert(rel, (meta.mode(), what));
    }
}

struct Case {
    name: &'static str,
    archive: Vec<u8>,
    extra: Vec<String>,
    /// Text the error must contain (the entry, or what is wrong with the stream).
    expect: Vec<String>,
}

fn case(name: &'static str, archive: Vec<u8>, expect: &[&str]) -> Case {
    Case {
        name,
        archive,
        extra: vec![],
        expect: expect.iter().map(|s| s.to_string()).collect(),
    }
}

fn hostile_corpus(scene: &Scene) -> Vec<Case> {
    let canary = scene.canary();
    let canary_file = canary.join("file");
    let canary_file = canary_file.to_str().unwrap();
    let canary_dir = canary.to_str().unwrap();
    let valid = RawTar::image().finish();
    let long_component = vec![b'a'; 300];
    let mut long_path = Vec::new();
    for _ in 0..25 {
        long_path.extend_from_slice(&[b'd'; 200]);
        long_path.push(b'/');
    }
    long_path.extend_from_slice(b"file");
    let mut cut_mid_file = RawTar::image().finish();
    cut_mid_file.truncate(512 * 3 + 512 + 512 + 2048);
    let mut bad_checksum = RawTar::image().file("etc/a", b"x", 0o644).finish();
    let header_at = bad_checksum.len() - 1024 - 1024;
    bad_checksum[header_at + 10] ^= 0x55;
    let mut bad_gzip = gzip(
        &RawTar::image()
            .file("etc/big", &[3u8; 200_000], 0o644)
            .finish(),
    );
    let mid = bad_gzip.len() / 2;
    for b in &mut bad_gzip[mid..mid + 16] {
        *b ^= 0xff;
    }
    let mut cut_zstd = zstd(
        &RawTar::image()
            .file(
                "etc/big",
                &(0..200_000u32)
                    .map(|i| (i * 7 % 251) as u8)
                    .collect::<Vec<_>>(),
                0o644,
            )
            .finish(),
    );
    cut_zstd.truncate(cut_zstd.len() - 40);
    let mut cases = vec![
        case(
            "absolute path",
            RawTar::image().file(canary_file, b"pwned", 0o644).finish(),
            &[canary_file, "absolute"],
        ),
        case(
            "dot-dot escape",
            RawTar::image()
                .file("../canary/file", b"pwned", 0o644)
                .finish(),
            &["../canary/file", ".."],
        ),
        case(
            "nested dot-dot escape",
            RawTar::image()
                .file("bin/../../canary/file", b"pwned", 0o644)
                .finish(),
            &["bin/../../canary/file"],
        ),
        case(
            "absolute symlink",
            RawTar::image().special("evil", b'2', canary_dir).finish(),
            &["\"evil\"", "absolute"],
        ),
        case(
            "relative symlink escape",
            RawTar::image()
                .special("etc/evil", b'2', "../../canary")
                .finish(),
            &["etc/evil", "outside"],
        ),
        case(
            "write through a symlink",
            RawTar::image()
                .special("sub", b'2', ".")
                .file("sub/x", b"x", 0o644)
                .finish(),
            &["sub/x", "through the symlink sub"],
        ),
        case(
            "symlink escape assembled by entry order",
            RawTar::image()
                .special("a", b'2', "b/..")
                .special("b", b'2', ".")
                .finish(),
            &["\"a\"", "resolves outside"],
        ),
        case(
            "absolute hard link",
            RawTar::image().special("h", b'1', canary_file).finish(),
            &["\"h\"", "absolute"],
        ),
        case(
            "dot-dot hard link",
            RawTar::image()
                .special("h", b'1', "../canary/file")
                .finish(),
            &["\"h\"", ".."],
        ),
        case(
            "hard link through a symlink",
            RawTar::image()
                .special("s", b'2', "bin")
                .special("h", b'1', "s/k3s")
                .finish(),
            &["\"h\"", "through the symlink s"],
        ),
        case(
            "character device",
            RawTar::image().special("dev-null", b'3', "").finish(),
            &["dev-null", "device"],
        ),
        case(
            "block device",
            RawTar::image().special("sda", b'4', "").finish(),
            &["sda", "device"],
        ),
        case(
            "fifo",
            RawTar::image().special("pipe", b'6', "").finish(),
            &["pipe", "FIFO"],
        ),
        case(
            "name component over 255 bytes",
            RawTar::image()
                .long_name(&long_component)
                .file("short", b"x", 0o644)
                .finish(),
            &["aaaa", "255"],
        ),
        case(
            "path over PATH_MAX",
            RawTar::image()
                .long_name(&long_path)
                .file("short", b"x", 0o644)
                .finish(),
            &["dddd", "4096"],
        ),
        case(
            "truncated inside a file",
            cut_mid_file,
            &["bin/k3s", "truncated"],
        ),
        case(
            "stream without an end-of-archive marker",
            RawTar::image().file("etc/last", b"x", 0o644).unterminated(),
            &["etc/last", "end-of-archive"],
        ),
        case(
            "corrupt header checksum",
            bad_checksum,
            &["checksum", "bin/k3s"],
        ),
        case("corrupt gzip stream", bad_gzip, &["corrupt"]),
        case("truncated zstd stream", cut_zstd, &["corrupt"]),
        case("not an archive", vec![0x42u8; 4096], &["corrupt"]),
        case(
            "xz archive",
            vec![0xfd, b'7', b'z', b'X', b'Z', 0, 1, 2, 3],
            &["xz", "not supported"],
        ),
        case(
            "hard link to a missing file",
            RawTar::image().special("h", b'1', "nowhere").finish(),
            &["\"h\"", "nowhere"],
        ),
        case(
            "file over a folder",
            RawTar::image().file("bin", b"x", 0o644).finish(),
            &["\"bin\"", "folder"],
        ),
    ];
    let mut too_big = case(
        "over --max-size",
        RawTar::image()
            .file("images/huge.tar", &vec![1u8; 2 << 20], 0o644)
            .finish(),
        &["images/huge.tar", "limit"],
    );
    too_big.extra = vec!["--max-size".into(), "1M".into()];
    cases.push(too_big);
    let mut wrong_digest = case(
        "digest mismatch",
        valid.clone(),
        &["SHA-256", "expected 0000", "--sha256"],
    );
    wrong_digest.extra = vec!["--sha256".into(), "0".repeat(64)];
    cases.push(wrong_digest);
    cases
}

#[test]
fn hostile_and_broken_archives_are_refused_and_harm_nothing() {
    let scene = Scene::new();
    let before = scene.state();
    let version_before = fs::read_link(scene.dest()).unwrap();
    let cases = hostile_corpus(&scene);
    assert!(cases.len() >= 15);
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let archive = scene.write(&format!("case-{i}.bin"), &case.archive);
        let extra: Vec<&str> = case.extra.iter().map(String::as_str).collect();
        let run = scene.unpack(&archive, &extra);
        let mut problems = Vec::new();
        if run.code == 0 {
            problems.push("accepted".to_owned());
        }
        for want in &case.expect {
            if !run.stderr.contains(want.as_str()) {
                problems.push(format!("error lacks {want:?}"));
            }
        }
        let after = scene.state();
        if after != before {
            let changed: Vec<_> = after
                .keys()
                .chain(before.keys())
                .filter(|k| after.get(*k) != before.get(*k))
                .collect();
            problems.push(format!("changed outside the archive: {changed:?}"));
        }
        if fs::read_link(scene.dest()).unwrap() != version_before {
            problems.push("DEST no longer points at the previous image".into());
        }
        if !problems.is_empty() {
            failures.push(format!(
                "[{}] {}\n    stderr: {}",
                case.name,
                problems.join("; "),
                run.stderr.trim()
            ));
        }
    }
    assert_eq!(
        fs::read_to_string(scene.canary().join("file")).unwrap(),
        "original"
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn a_wrong_sha256_file_beside_the_archive_is_named() {
    let scene = Scene::new();
    let archive = scene.write("second.tar", &RawTar::image().finish());
    scene.write(
        "second.tar.sha256",
        &format!("{}  second.tar\n", "1".repeat(64)).into_bytes(),
    );
    let run = scene.unpack(&archive, &[]);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("second.tar.sha256"), "{}", run.stderr);
}

#[test]
fn setuid_bits_are_stripped_with_a_warning() {
    let scene = Scene::new();
    let archive = scene.write(
        "suid.tar",
        &RawTar::image()
            .file("bin/helper", b"#!", 0o4755)
            .dir("tmp", 0o1777)
            .finish(),
    );
    let run = scene.unpack(&archive, &[]);
    run.assert_code(0);
    assert!(
        run.stderr
            .contains("bin/helper: setuid/setgid/sticky bits dropped"),
        "{}",
        run.stderr
    );
    let mode = fs::metadata(scene.dest().join("bin/helper"))
        .unwrap()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o755);
    let mode = fs::metadata(scene.dest().join("tmp")).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o777);
}

#[test]
fn versions_are_kept_and_a_repeat_is_not_unpacked_again() {
    let scene = Scene::new();
    let first_version = fs::read_link(scene.dest()).unwrap();
    let second = RawTar::image()
        .file("etc/version", b"second", 0o644)
        .finish();
    let archive = scene.write("second.tar.zst", &zstd(&second));
    let digest = sha256(&fs::read(&archive).unwrap());
    scene
        .unpack(&archive, &["--sha256", &digest])
        .assert_code(0);
    assert_eq!(
        fs::read_to_string(scene.dest().join("etc/version")).unwrap(),
        "second"
    );
    let second_version = fs::read_link(scene.dest()).unwrap();
    assert_ne!(first_version, second_version);
    assert!(
        scene
            .root()
            .join(&first_version)
            .join("etc/version")
            .exists(),
        "previous version kept"
    );
    assert!(
        second_version.to_string_lossy().contains(&digest[..12]),
        "{second_version:?}"
    );
    let run = scene.unpack(&archive, &["--sha256", &digest]);
    run.assert_code(0);
    assert!(run.stdout.contains("already unpacked"), "{}", run.stdout);
    // The staging folders are gone.
    let leftovers: Vec<_> = fs::read_dir(scene.root())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("staging"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn an_image_baked_in_place_is_kept_as_a_version() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("rootfs");
    fs::create_dir_all(dest.join("bin")).unwrap();
    fs::write(
        dest.join("Metadata"),
        r#"{"version":"v1.30.0+k3s1","ClusterRuntime":"k3s"}"#,
    )
    .unwrap();
    fs::write(dest.join("bin/k3s"), "old").unwrap();
    fs::set_permissions(dest.join("bin/k3s"), fs::Permissions::from_mode(0o755)).unwrap();
    let archive = dir.path().join("new.tar");
    fs::write(&archive, RawTar::image().finish()).unwrap();
    let run = to_run(
        Command::new(BIN)
            .args(["rootfs", "unpack"])
            .arg(&archive)
            .arg(&dest)
            .output()
            .unwrap(),
    );
    run.assert_code(0);
    assert!(fs::symlink_metadata(&dest)
        .unwrap()
        .file_type()
        .is_symlink());
    let kept = dir
        .path()
        .join("rootfs.versions/v1.30.0+k3s1-preexisting/bin/k3s");
    assert_eq!(fs::read_to_string(kept).unwrap(), "old");
}

#[test]
fn a_killed_unpack_leaves_the_old_image_and_is_cleaned_up_next_time() {
    let scene = Scene::new();
    let before = fs::read_link(scene.dest()).unwrap();
    // A large zstd archive, killed partway.
    let big: Vec<u8> = (0..64u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let archive = scene.write(
        "big.tar.zst",
        &zstd(&RawTar::image().file("images/big.tar", &big, 0o644).finish()),
    );
    let mut child = Command::new(BIN)
        .args(["rootfs", "unpack"])
        .arg(&archive)
        .arg(scene.dest())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let staging = fs::read_dir(scene.root())
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().contains("staging"));
        if staging || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let _ = child.kill();
    child.wait().unwrap();
    assert_eq!(
        fs::read_link(scene.dest()).unwrap(),
        before,
        "DEST untouched by the killed run"
    );
    scene.unpack(&archive, &[]).assert_code(0);
    let leftovers: Vec<_> = fs::read_dir(scene.root())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("staging"))
        .collect();
    assert!(leftovers.is_empty(), "stale staging removed: {leftovers:?}");
    assert_eq!(
        fs::metadata(scene.dest().join("images/big.tar"))
            .unwrap()
            .len(),
        big.len() as u64
    );
}

/// A tree exercising what images hold: modes, empty and large files, nested and
/// read-only folders, long and non-ASCII names, symlinks and hard links, set mtimes.
fn sample_tree(root: &Path) {
    let w = |rel: &str, data: &[u8], mode: u32| {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, data).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    };
    w(
        "Metadata",
        br#"{"version":"v1.31.4+k3s1","arch":"amd64","ClusterRuntime":"k3s"}"#,
        0o644,
    );
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    w("bin/k3s", &big, 0o755);
    w("etc/empty", b"", 0o600);
    w("etc/readonly.conf", b"ro\n", 0o444);
    w("manifests/app.yaml", b"kind: Namespace\n", 0o640);
    w(
        &format!("images/{}/{}.tar", "n".repeat(120), "x".repeat(150)),
        b"long name",
        0o644,
    );
    w("données/é.txt", "unicode ✓".as_bytes(), 0o644);
    fs::create_dir_all(root.join("empty-dir")).unwrap();
    fs::create_dir_all(root.join("secret-dir")).unwrap();
    fs::set_permissions(root.join("secret-dir"), fs::Permissions::from_mode(0o700)).unwrap();
    w("locked/inner.txt", b"inside a read-only folder", 0o644);
    fs::set_permissions(root.join("locked"), fs::Permissions::from_mode(0o555)).unwrap();
    std::os::unix::fs::symlink("k3s", root.join("bin/kubectl")).unwrap();
    std::os::unix::fs::symlink("../etc", root.join("bin/etc-link")).unwrap();
    std::os::unix::fs::symlink("missing-but-inside", root.join("dangling")).unwrap();
    fs::hard_link(root.join("bin/k3s"), root.join("bin/crictl")).unwrap();
    let status = Command::new("find")
        .arg(root)
        .args([
            "-exec",
            "touch",
            "-h",
            "-d",
            "2024-03-01 12:34:56",
            "{}",
            "+",
        ])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Path → (type, mode, size, sha, link target, mtime); plus hard-link groups.
fn describe(root: &Path) -> (BTreeMap<PathBuf, String>, Vec<Vec<PathBuf>>) {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
    fn go(
        base: &Path,
        dir: &Path,
        out: &mut BTreeMap<PathBuf, String>,
        inodes: &mut BTreeMap<u64, Vec<PathBuf>>,
    ) {
        for entry in fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(base).unwrap().to_path_buf();
            if rel.as_os_str() == ".bootstrap-unpacked.json" {
                continue;
            }
            let m = fs::symlink_metadata(&path).unwrap();
            let d = if m.file_type().is_symlink() {
                format!(
                    "link {} mtime {}",
                    fs::read_link(&path).unwrap().display(),
                    m.mtime()
                )
            } else if m.is_dir() {
                go(base, &path, out, inodes);
                format!("dir {:o} mtime {}", m.mode() & 0o7777, m.mtime())
            } else {
                if m.nlink() > 1 {
                    inodes.entry(m.ino()).or_default().push(rel.clone());
                }
                format!(
                    "file {:o} {} {} mtime {}",
                    m.mode() & 0o7777,
                    m.len(),
                    sha256(&fs::read(&path).unwrap()),
                    m.mtime()
                )
            };
            out.insert(rel, d);
        }
    }
    go(root, root, &mut out, &mut inodes);
    let mut groups: Vec<Vec<PathBuf>> = inodes
        .into_values()
        .map(|mut v| {
            v.sort();
            v
        })
        .collect();
    groups.sort();
    (out, groups)
}

#[test]
fn valid_archives_unpack_exactly_as_gnu_tar_does() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir(&src).unwrap();
    sample_tree(&src);
    let formats: [(&str, &[&str]); 3] = [
        ("plain.tar", &["-cf"]),
        ("image.tar.gz", &["-czf"]),
        ("image.tar.zst", &["--zstd", "-cf"]),
    ];
    let mut seen_formats = Vec::new();
    for (name, flags) in formats {
        let archive = work.path().join(name);
        let status = Command::new("tar")
            .args(flags)
            .arg(&archive)
            .arg("-C")
            .arg(&src)
            .arg(".")
            .status()
            .unwrap();
        assert!(status.success(), "tar {flags:?}");
        // Named .bin so the format must be recognised by content.
        let renamed = work.path().join(format!("{name}.bin"));
        fs::rename(&archive, &renamed).unwrap();

        let gnu = work.path().join(format!("gnu-{name}"));
        fs::create_dir(&gnu).unwrap();
        let status = Command::new("tar")
            .arg("-xf")
            .arg(&renamed)
            .arg("-C")
            .arg(&gnu)
            .status()
            .unwrap();
        assert!(status.success());

        let dest = work.path().join(format!("ours-{name}"));
        let run = to_run(
            Command::new(BIN)
                .args(["rootfs", "unpack"])
                .arg(&renamed)
                .arg(&dest)
                .output()
                .unwrap(),
        );
        run.assert_code(0);
        let ours = fs::canonicalize(&dest).unwrap();
        let (gnu_tree, gnu_links) = describe(&gnu);
        let (our_tree, our_links) = describe(&ours);
        let diffs: Vec<String> = gnu_tree
            .keys()
            .chain(our_tree.keys())
            .filter(|k| gnu_tree.get(*k) != our_tree.get(*k))
            .map(|k| {
                format!(
                    "{}: gnu {:?} ours {:?}",
                    k.display(),
                    gnu_tree.get(k),
                    our_tree.get(k)
                )
            })
            .collect();
        assert!(diffs.is_empty(), "{name}:\n{}", diffs.join("\n"));
        assert_eq!(gnu_links, our_links, "{name}: hard links");
        assert!(!gnu_links.is_empty());
        seen_formats.push(run.stdout);
    }
    assert_eq!(seen_formats.len(), 3);
}
