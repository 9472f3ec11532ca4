//! A one-line progress bar for long scoring jobs on a terminal.
//!
//! CSV scoring streams, so the row count is not known up front; progress is measured in bytes
//! of the input file instead (the CSV reader's offset against the file's size), which needs no
//! first pass over the file. Each redraw returns to the line start and clears to its end.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

const WIDTH: usize = 24;
/// Redraws at most this often, so a fast job does not spend its time on the terminal.
const EVERY: Duration = Duration::from_millis(100);

pub struct Progress {
    total_bytes: u64,
    start: Instant,
    last_draw: Option<Instant>,
    enabled: bool,
}

impl Progress {
    /// A bar on stderr, shown only when stderr is a terminal.
    pub fn new(total_bytes: u64) -> Self {
        Self {
            total_bytes,
            start: Instant::now(),
            last_draw: None,
            enabled: std::io::stderr().is_terminal(),
        }
    }

    /// `rows` done so far, `bytes` of the input consumed by them.
    pub fn update(&mut self, rows: usize, bytes: u64) {
        if !self.enabled || self.last_draw.is_some_and(|t| t.elapsed() < EVERY) {
            return;
        }
        self.last_draw = Some(Instant::now());
        let line = render(rows, bytes, self.total_bytes, self.start.elapsed());
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{line}\x1b[K");
        let _ = err.flush();
    }

    /// Draws the final state and ends the line.
    pub fn finish(&mut self, rows: usize) {
        if self.enabled {
            let line = render(
                rows,
                self.total_bytes,
                self.total_bytes,
                self.start.elapsed(),
            );
            eprintln!("\r{line}\x1b[K");
        }
    }
}

/// `[#########---------------]  37%  12,034 rows  166 rows/s  ETA 2:11`
pub fn render(rows: usize, bytes: u64, total_bytes: u64, elapsed: Duration) -> String {
    let fraction = if total_bytes == 0 {
        1.0
    } else {
        (bytes as f64 / total_bytes as f64).clamp(0.0, 1.0)
    };
    let filled = (fraction * WIDTH as f64).round() as usize;
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { rows as f64 / secs } else { 0.0 };
    let eta = if fraction > 0.0 && fraction < 1.0 {
        let left = secs * (1.0 - fraction) / fraction;
        format!("  ETA {}:{:02}", left as u64 / 60, left as u64 % 60)
    } else {
        String::new()
    };
    format!(
        "[{}{}] {:>3.0}%  {} rows  {rate:.0} rows/s{eta}",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled),
        fraction * 100.0,
        thousands(rows),
    )
}

/// `1234567` -> `"1,234,567"`, as peft prints parameter counts.
pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(578), "578");
        assert_eq!(thousands(697060), "697,060");
        assert_eq!(thousands(22713216), "22,713,216");
    }

    #[test]
    fn bar_rate_and_eta() {
        let s = render(12_034, 250, 1000, Duration::from_secs(60));
        assert_eq!(
            s,
            "[######------------------]  25%  12,034 rows  201 rows/s  ETA 3:00"
        );
        let done = render(32_000, 1000, 1000, Duration::from_secs(10));
        assert_eq!(
            done,
            "[########################] 100%  32,000 rows  3200 rows/s"
        );
        // An empty file is done at once; no division by zero.
        assert!(render(0, 0, 0, Duration::ZERO).starts_with("[########################] 100%"));
    }
}
