//! Writes the man pages and shell completions of `bootstrap` from its clap model, so they
//! cannot drift from the command line:
//!
//!     cargo run --example gen-docs -- OUTDIR
//!
//! `OUTDIR/man/bootstrap.1` and one page per subcommand (`bootstrap-up.1`,
//! `bootstrap-rootfs-inspect.1` …), and `OUTDIR/completions/bootstrap.bash`, `_bootstrap`
//! (zsh) and `bootstrap.fish`. Subcommands are found by walking the model: a new one gets
//! its page and completions without a change here.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bootstrap::cli::Cli;
use clap::CommandFactory;
use clap_complete::Shell;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [out] = args.as_slice() else {
        eprintln!("usage: gen-docs OUTDIR");
        return ExitCode::from(2);
    };
    match generate(Path::new(out)) {
        Ok(files) => {
            for file in files {
                println!("{}", file.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gen-docs: {e}");
            ExitCode::FAILURE
        }
    }
}

fn generate(out: &Path) -> std::io::Result<Vec<PathBuf>> {
    let man = out.join("man");
    let completions = out.join("completions");
    for dir in [&man, &completions] {
        // Start clean: a subcommand that was removed must not leave its page behind.
        if dir.exists() {
            fs::remove_dir_all(dir)?;
        }
        fs::create_dir_all(dir)?;
    }

    // One page per command, named after its path (`bootstrap-rootfs-unpack.1`); the
    // `help` pseudo-command and hidden commands get none.
    clap_mangen::generate_to(Cli::command(), &man)?;

    let mut written = Vec::new();
    for (shell, name) in [
        (Shell::Bash, "bootstrap.bash"),
        (Shell::Zsh, "_bootstrap"),
        (Shell::Fish, "bootstrap.fish"),
    ] {
        let path = completions.join(name);
        let mut file = fs::File::create(&path)?;
        clap_complete::generate(shell, &mut Cli::command(), "bootstrap", &mut file);
        written.push(path);
    }

    let mut pages: Vec<PathBuf> = fs::read_dir(&man)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    pages.sort();
    pages.extend(written);
    Ok(pages)
}
