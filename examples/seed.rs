//! Seeds every image archive in a folder into a registry storage root, as `up` will:
//! for benchmarks and trying seeding by hand, not part of the command line.
//!
//!     cargo run --release --example seed -- IMAGES_DIR STORAGE
//!
//! Prints what it did and how long it took; exits 1 (with the error) when an archive
//! fails and 2 on bad usage.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [images_dir, storage] = args.as_slice() else {
        eprintln!("usage: seed IMAGES_DIR STORAGE");
        return ExitCode::from(2);
    };
    let (images_dir, storage) = (PathBuf::from(images_dir), PathBuf::from(storage));
    let started = Instant::now();
    match bootstrap::images::seed_images_dir(&images_dir, &storage) {
        Ok(report) => {
            println!(
                "seeded {} into {} in {:.2} s: {report}",
                images_dir.display(),
                storage.display(),
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            // SeedError's message already carries its cause.
            eprintln!("seed: {e}");
            ExitCode::FAILURE
        }
    }
}
