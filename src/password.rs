//! Where the password comes from: `--password-file`, `--password-command`,
//! `COFFER_PASSWORD`, or a prompt on the terminal, in that order.

use std::io::IsTerminal;

use anyhow::{Context, Result, bail};
use zeroize::Zeroizing;

use crate::cli::GlobalArgs;

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

/// The first line of a password file (`what` names it in errors), with a
/// warning when users other than its owner may read or change it: as ssh
/// does for private keys, since a password readable by others protects
/// nothing. It is a warning, not a refusal, because a file in a folder only
/// its owner can enter may be safe with loose bits of its own.
fn read_file(path: &std::path::Path, what: &str) -> Result<Zeroizing<String>> {
    use std::os::unix::fs::PermissionsExt;
    let text = Zeroizing::new(
        std::fs::read_to_string(path).with_context(|| format!("reading the {what} {}", path.display()))?,
    );
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            eprintln!(
                "warning: the {what} {} can be accessed by other users (mode {mode:03o}); make it private with `chmod 600 {}`",
                path.display(),
                path.display()
            );
        }
    }
    Ok(Zeroizing::new(first_line(&text).to_string()))
}

/// Reads the password; `confirm` asks twice on a terminal (for `init`).
pub fn read(global: &GlobalArgs, confirm: bool) -> Result<Zeroizing<String>> {
    if let Some(path) = &global.password_file {
        return read_file(path, "password file");
    }
    if let Some(cmd) = &global.password_command {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .stderr(std::process::Stdio::inherit())
            .output()
            .with_context(|| format!("running the password command {cmd:?}"))?;
        if !out.status.success() {
            bail!("the password command {cmd:?} failed ({})", out.status);
        }
        let text = Zeroizing::new(
            String::from_utf8(out.stdout).context("the password command printed something that is not UTF-8")?,
        );
        return Ok(Zeroizing::new(first_line(&text).to_string()));
    }
    if let Ok(pw) = std::env::var("COFFER_PASSWORD") {
        return Ok(Zeroizing::new(pw));
    }
    if !std::io::stdin().is_terminal() {
        bail!(
            "no password given: set COFFER_PASSWORD, COFFER_PASSWORD_FILE or COFFER_PASSWORD_COMMAND, or run on a terminal"
        );
    }
    let pw = Zeroizing::new(rpassword::prompt_password("Repository password: ").context("reading the password")?);
    if confirm {
        let again =
            Zeroizing::new(rpassword::prompt_password("Repeat the password: ").context("reading the password")?);
        if *pw != *again {
            bail!("the two passwords differ");
        }
    }
    Ok(pw)
}

/// Reads a new password (`key add`, `key passwd`): the first line of `file`,
/// or asked twice on the terminal. Empty passwords are refused.
pub fn read_new(file: Option<&std::path::Path>) -> Result<Zeroizing<String>> {
    let pw = if let Some(path) = file {
        read_file(path, "new password file")?
    } else {
        if !std::io::stdin().is_terminal() {
            bail!("no new password given: use --new-password-file FILE, or run on a terminal");
        }
        let pw = Zeroizing::new(rpassword::prompt_password("New password: ").context("reading the password")?);
        let again =
            Zeroizing::new(rpassword::prompt_password("Repeat the new password: ").context("reading the password")?);
        if *pw != *again {
            bail!("the two passwords differ");
        }
        pw
    };
    if pw.is_empty() {
        bail!("an empty password is not allowed");
    }
    Ok(pw)
}
