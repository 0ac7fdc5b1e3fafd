//! Where the password comes from: `--password-file`, `--password-command`,
//! `COFFER_PASSWORD`, or a prompt on the terminal, in that order.

use std::io::IsTerminal;

use anyhow::{Context, Result, bail};
use zeroize::Zeroizing;

use crate::cli::GlobalArgs;

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

/// Reads the password; `confirm` asks twice on a terminal (for `init`).
pub fn read(global: &GlobalArgs, confirm: bool) -> Result<Zeroizing<String>> {
    if let Some(path) = &global.password_file {
        let text = Zeroizing::new(
            std::fs::read_to_string(path).with_context(|| format!("reading the password file {}", path.display()))?,
        );
        return Ok(Zeroizing::new(first_line(&text).to_string()));
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
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading the new password file {}", path.display()))?,
        );
        Zeroizing::new(first_line(&text).to_string())
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
