//! `bootstrap secret generate`: a new join secret, printed once on stdout.

use super::Error;
use crate::cli::SecretCommand;

pub(super) fn run(command: &SecretCommand) -> Result<(), Error> {
    match command {
        SecretCommand::Generate => {
            let secret = crate::secret_format::generate()
                .map_err(|e| Error::Failed(format!("secret generate: no random bytes: {e}")))?;
            // stdout only, so it goes straight into a file; never into the log.
            println!("{}", secret.expose());
            Ok(())
        }
    }
}
