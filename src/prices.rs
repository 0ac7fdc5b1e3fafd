//! The price table `stats --cost` and `restore --dry-run` estimate with.

use std::path::Path;

use anyhow::{Context, Result};
use coffer_core::pricing::{PriceOverrides, Prices};

/// The built-in table, with the classes a `--prices` file gives replacing
/// the table's own.
pub fn load(file: Option<&Path>) -> Result<Prices> {
    let table = Prices::aws();
    let Some(file) = file else { return Ok(table) };
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read the price file {}", file.display()))?;
    let overrides: PriceOverrides =
        toml::from_str(&text).with_context(|| format!("the price file {} does not parse", file.display()))?;
    Ok(table.merge(overrides))
}

/// An amount of money as the summaries print it.
pub fn money(amount: f64, currency: &str) -> String {
    if amount != 0.0 && amount.abs() < 0.01 {
        format!("{amount:.4} {currency}")
    } else {
        format!("{amount:.2} {currency}")
    }
}
