//! Progress display on a terminal (indicatif), and warnings everywhere.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use coffer_core::progress::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Draws a bar on stderr when it is a terminal; always prints warnings.
pub struct Bar {
    bar: Option<ProgressBar>,
    files: AtomicU64,
}

impl Bar {
    /// `show` is false for `--quiet` and `--json`.
    pub fn new(show: bool, verb: &str) -> Bar {
        let bar = (show && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(8));
            let template = format!("{{spinner}} {verb} [{{elapsed_precise}}] {{bytes}} · {{binary_bytes_per_sec}} · {{prefix}} files · {{wide_msg}}");
            bar.set_style(ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_spinner()));
            bar.enable_steady_tick(Duration::from_millis(125));
            bar.set_prefix("0");
            bar
        });
        Bar { bar, files: AtomicU64::new(0) }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Progress for Bar {
    fn set_total(&self, _files: u64, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(bytes);
            let verb = "restore";
            let template = format!(
                "{{spinner}} {verb} [{{elapsed_precise}}] [{{bar:30}}] {{bytes}}/{{total_bytes}} · {{binary_bytes_per_sec}} · ETA {{eta}} · {{prefix}} files · {{wide_msg}}"
            );
            if let Ok(style) = ProgressStyle::with_template(&template) {
                bar.set_style(style.progress_chars("=> "));
            }
        }
    }

    fn file_started(&self, path: &Path) {
        if let Some(bar) = &self.bar {
            bar.set_message(path.display().to_string());
        }
    }

    fn file_done(&self) {
        let n = self.files.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(bar) = &self.bar {
            bar.set_prefix(n.to_string());
        }
    }

    fn bytes_done(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    fn warning(&self, path: &Path, message: &str) {
        let line = format!("warning: {}: {message}", path.display());
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }
}
