//! What a command answers (text or one JSON document), how it fails, and the shared
//! formatting helpers.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

/// A command's answer: its JSON document and its text form.
pub struct Report {
    pub json: Value,
    pub text: String,
    /// Exit nonzero although the command ran (e.g. `health` when Redis is not up), with this
    /// on stderr.
    pub warn: Option<String>,
}

impl Report {
    pub fn new(json: Value, text: String) -> Report {
        Report {
            json,
            text,
            warn: None,
        }
    }

    pub fn print(self, json: bool) -> ExitCode {
        let mut out = std::io::stdout().lock();
        let written = if json {
            writeln!(out, "{}", self.json)
        } else {
            write!(out, "{}", self.text)
        };
        // A closed pipe (`tierkit ... | head`) is not worth a panic.
        let _ = written.and_then(|()| out.flush());
        match self.warn {
            Some(warn) => {
                eprintln!("tierkit: {warn}");
                ExitCode::FAILURE
            }
            None => ExitCode::SUCCESS,
        }
    }
}

/// Why a command failed, for stderr (and stdout's JSON with `--json`).
#[derive(Debug)]
pub struct Failure(String);

impl Failure {
    pub fn new(message: impl Into<String>) -> Failure {
        Failure(message.into())
    }
}

impl From<tierkit::Error> for Failure {
    fn from(e: tierkit::Error) -> Failure {
        Failure(e.to_string())
    }
}

/// Reports `failure` and gives the exit code.
pub fn fail(json: bool, failure: &Failure) -> ExitCode {
    if json {
        println!("{}", serde_json::json!({ "error": failure.0 }));
    }
    eprintln!("tierkit: error: {}", failure.0);
    ExitCode::FAILURE
}

/// A progress bar on stderr when it is a terminal and `show` (not `--json`); hidden otherwise.
pub fn progress(show: bool, len: Option<u64>, what: &str) -> ProgressBar {
    if !show || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match len {
        Some(len) => ProgressBar::new(len).with_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {msg}: {pos} keys")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    bar.set_message(what.to_owned());
    bar
}

/// A spinner on stderr for a wait whose length is unknown (a pattern invalidation walking the
/// namespace), under the same rule as [`progress`].
pub fn spinner(show: bool, what: &str) -> ProgressBar {
    if !show || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner().with_message(what.to_owned());
    bar.enable_steady_tick(std::time::Duration::from_millis(100));
    bar
}

/// `n` bytes for people: `512 B`, `1.5 KiB`, `3.2 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for next in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = next;
    }
    format!("{v:.1} {unit}")
}

/// Milliseconds since the Unix epoch of `t` (0 before it).
pub fn millis(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A hex dump line and the lossy UTF-8 of `bytes` (control characters shown as `.`).
pub fn preview(bytes: &[u8]) -> (String, String) {
    let hex = bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ");
    let text = String::from_utf8_lossy(bytes)
        .chars()
        .map(|c| if c.is_control() { '.' } else { c })
        .collect();
    (hex, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_previews_read_well() {
        assert_eq!(bytes(10), "10 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0 MiB");
        assert_eq!(
            preview(b"\x02hi\xff"),
            ("02 68 69 ff".into(), ".hi\u{fffd}".into())
        );
    }
}
