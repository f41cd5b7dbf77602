//! Entry point: parse, set up logging, run, map the outcome to an exit code.

use clap::Parser;

fn main() {
    let cli = bootstrap::cli::Cli::parse();
    bootstrap::logging::init(cli.log_format, cli.verbose);
    if let Err(error) = bootstrap::app::run(cli) {
        log::error!("{error}");
        std::process::exit(error.exit_code());
    }
}
