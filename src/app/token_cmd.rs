//! `bootstrap token create`: join material minted on this controller, printed once.

use super::{Error, Session};
use crate::cli::{Cli, NewNodeRole, TokenCommand};
use crate::distro::JoinRole;
use crate::{lock, role, state};

pub(super) fn run(cli: &Cli, command: &TokenCommand) -> Result<(), Error> {
    let (role, ttl, material) = match command {
        TokenCommand::Create {
            role,
            ttl,
            material,
        } => (role, ttl, material),
        TokenCommand::List => return list(cli),
        TokenCommand::Revoke { id } => return revoke(cli, id),
    };
    if let Some(this) = cli.overrides.role {
        // `--role` is this node's role everywhere; taking it for the new node's here
        // once turned a controller into a worker.
        return Err(Error::Usage(format!(
            "token create: --role {this} sets this node's role; name the new node's role after the command: `bootstrap token create worker` or `bootstrap token create controller`"
        )));
    }
    let join_role = match role {
        Some(NewNodeRole::Worker) => JoinRole::Worker,
        Some(NewNodeRole::Controller) => JoinRole::Controller,
        None => {
            return Err(Error::Usage(
                "token create: name the new node's role: `bootstrap token create worker` or `bootstrap token create controller`".into(),
            ))
        }
    };
    let join_role = &join_role;
    let ttl = match ttl {
        Some(text) => {
            let ttl = humantime::parse_duration(text)
                .map_err(|e| Error::Usage(format!("--ttl {text:?}: {e} (e.g. 30m, 2h)")))?;
            // The distros round a lifetime under a second down to 0, which kubeadm
            // reads as "never expires"; a long one is a long-lived leak. Same range as
            // join.token_ttl.
            crate::config::check_token_ttl(ttl)
                .map_err(|what| Error::Usage(format!("--ttl {text}: {what}")))?;
            Some(ttl)
        }
        None => None,
    };
    let session = Session::open(cli)?;
    let ttl = ttl.unwrap_or(session.config.join.token_ttl);
    let decision = role::load(&session.host)?.ok_or_else(|| {
        Error::Failed(
            "this node has not been set up (no role recorded); run `bootstrap up` first".into(),
        )
    })?;
    if !decision.role.is_controller() {
        return Err(Error::Failed(format!(
            "this node is a {}; join material comes from a controller",
            decision.role
        )));
    }
    let _lock = lock::acquire(
        &super::real_path(&session.host, state::LOCK_FILE),
        session.config.lock_wait,
        &format!("pid {} (bootstrap token create)", std::process::id()),
    )?;
    if !*material {
        return print_line(&session, *join_role, ttl);
    }
    let keys = session.join_keys()?;
    let material = session.mint(&decision, *join_role, ttl, keys.as_ref())?;
    log::info!(
        "join material for a {join_role} of this {} {} cluster, endpoint {}{}",
        material.distro,
        material.version,
        material.endpoint,
        material
            .expires_at
            .as_ref()
            .map(|t| format!(", valid until {t}"))
            .unwrap_or_default()
    );
    print!("{}", material.to_file_text());
    Ok(())
}

/// A join line: this controller's join service, the pin of its key (derived from the join
/// secret) and a new credential for one role, valid for `ttl`.
fn print_line(session: &Session, role: JoinRole, ttl: std::time::Duration) -> Result<(), Error> {
    use crate::host::Host;
    let keys = session.join_keys()?.ok_or_else(|| {
        Error::Failed(format!(
            "token create: this controller has no join secret (cluster.join_secret_file, or {} which `up` makes); run `bootstrap up` first, or use --material to print the join material instead",
            crate::join::NODE_SECRET_FILE
        ))
    })?;
    let address = session.node_address().ok_or_else(|| {
        Error::Failed("token create: this controller's address is unknown; set node.address".into())
    })?;
    let store = crate::join::credentials::CredentialStore::new(session.host.real_path(
        std::path::Path::new(crate::join::credentials::CREDENTIALS_FILE),
    )?);
    let (id, credential) = store
        .add(role, ttl)
        .map_err(|e| Error::Failed(format!("token create: cannot keep the credential: {e}")))?;
    let line = crate::join::manual::JoinLine {
        address: crate::join::targets(&[address.to_string()], session.config.join.port).remove(0),
        role,
        pin: keys.pin(),
        id,
        secret: credential,
    };
    log::info!(
        "a join line for a {role}, valid for {}; on the new node: bootstrap up --role {role} --join FILE (the line in FILE, or --join - on standard input)",
        humantime::format_duration(ttl)
    );
    println!("{}", line.text());
    Ok(())
}

/// The join lines this controller handed out.
fn store(cli: &Cli) -> Result<crate::join::credentials::CredentialStore, Error> {
    use crate::host::Host;
    let host = super::open_host(cli)?;
    let file = host.real_path(std::path::Path::new(
        crate::join::credentials::CREDENTIALS_FILE,
    ))?;
    Ok(crate::join::credentials::CredentialStore::new(file))
}

/// `token list`: id, role, expiry, used — never a secret.
fn list(cli: &Cli) -> Result<(), Error> {
    let lines = store(cli)?.list();
    if lines.is_empty() {
        eprintln!("no live join lines");
        return Ok(());
    }
    println!("{:<10} {:<11} {:<21} USED", "ID", "ROLE", "EXPIRES");
    for line in lines {
        let expires = std::time::UNIX_EPOCH + std::time::Duration::from_secs(line.expires);
        println!(
            "{:<10} {:<11} {:<21} {}",
            line.id,
            line.role.to_string(),
            humantime::format_rfc3339_seconds(expires).to_string(),
            if line.used { "yes" } else { "no" }
        );
    }
    Ok(())
}

/// `token revoke ID`.
fn revoke(cli: &Cli, id: &str) -> Result<(), Error> {
    let store = store(cli)?;
    match store.revoke(id) {
        Ok(true) => {
            eprintln!("join line {id} revoked");
            Ok(())
        }
        Ok(false) => Err(Error::Failed(format!(
            "token revoke: no live join line {id} (see `bootstrap token list`)"
        ))),
        Err(e) => Err(Error::Failed(format!(
            "token revoke: {}: {e}",
            store.file().display()
        ))),
    }
}
