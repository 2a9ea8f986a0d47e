//! Benchmarks: each prints a Markdown table of figures measured in one run.

pub mod footprint;
pub mod gossip;
pub mod http;
pub mod image;

/// Formats a duration in seconds with two decimals.
pub fn secs(d: std::time::Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}
