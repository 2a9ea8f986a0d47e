//! A node's journal for its readers (`GET /api/v1/logs`, `herd logs`, each node's page): read with the
//! real `journalctl`, one child per reader, as the agent itself, which herd.service puts in the
//! `systemd-journal` group and nothing more. Every reader is bounded: lines ([`MAX_LINES`]), line length
//! ([`MAX_LINE`]), bytes of a reply that does not follow ([`MAX_REPLY`]), rate ([`RATE`] lines a second
//! after the first ones), and readers at once ([`MAX_READERS`]). A reader that stops reading stops
//! journalctl (its pipe fills) and the API's write-stall timeout drops it, so what the agent holds for
//! one reader stays under [`HELD_PER_READER`], whatever the journal holds.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::model::logs::LogQuery;

pub use crate::model::logs::MAX_LINES;
/// Longest line sent; the rest of a longer one is cut and said so.
pub const MAX_LINE: usize = 4096;
/// Most bytes of a reply that does not follow (10,000 lines of 4 KiB would be 40 MiB).
pub const MAX_REPLY: usize = 4 << 20;
/// Lines a second a reader is sent once the lines it asked for are out.
pub const RATE: u32 = 1000;
/// Readers at once, on the whole node (each is a journalctl process).
pub const MAX_READERS: usize = 4;
/// Bytes gathered before they are handed to the client.
const CHUNK: usize = 16 * 1024;
/// Chunks waiting for a slow client.
const QUEUE: usize = 4;
/// What one reader makes the agent hold at most: journalctl's pipe buffer, a line, a chunk being
/// filled and the queue (the socket's own buffers aside).
pub const HELD_PER_READER: usize = 8 * 1024 + MAX_LINE + CHUNK * (QUEUE + 1);

/// Why a reader gets no lines.
#[derive(Debug)]
pub enum Refused {
    /// [`MAX_READERS`] are reading.
    Busy,
    /// The journal cannot be read here: what is wrong, in words.
    Unavailable(String),
}

/// The journal this node serves.
pub struct Journal {
    /// A directory of journal files to read instead of the system journal (`logs.journal_directory`).
    directory: Option<PathBuf>,
    readers: Arc<Semaphore>,
}

impl Journal {
    pub fn new(directory: Option<PathBuf>) -> Journal {
        Journal {
            directory,
            readers: Arc::new(Semaphore::new(MAX_READERS)),
        }
    }

    /// Starts a reader: Ok with its lines (a stream that ends when they do, or never while following),
    /// or why not. journalctl's own failure before any line (no journal, a directory it cannot read) is
    /// a refusal with its words, not an empty reply.
    pub async fn read(&self, q: &LogQuery) -> Result<mpsc::Receiver<Vec<u8>>, Refused> {
        let permit = Arc::clone(&self.readers)
            .try_acquire_owned()
            .map_err(|_| Refused::Busy)?;
        if self.directory.is_none() {
            may_read_system_journal().map_err(Refused::Unavailable)?;
        }
        let mut child = tokio::process::Command::new("journalctl")
            .args(args(q, self.directory.as_deref()))
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("SYSTEMD_COLORS", "0")
            .env("SYSTEMD_PAGER", "")
            .env("LC_ALL", "C.UTF-8")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Refused::Unavailable(format!("cannot run journalctl: {e}")))?;
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let (tx, mut rx) = mpsc::channel(QUEUE);
        tokio::spawn(pump(
            child,
            tokio::io::BufReader::with_capacity(8 * 1024, stdout),
            stderr,
            tx,
            Limits::for_query(q),
            permit,
        ));
        // The first chunk, the end, or a moment of quiet (a follower of a quiet journal) decides.
        match tokio::time::timeout(Duration::from_secs(2), rx.recv()).await {
            Ok(Some(first)) if first.starts_with(FAILED) => Err(Refused::Unavailable(
                String::from_utf8_lossy(&first[FAILED.len()..])
                    .trim_end()
                    .to_string(),
            )),
            Ok(Some(first)) => {
                let (tx2, rx2) = mpsc::channel(QUEUE);
                tokio::spawn(async move {
                    if tx2.send(first).await.is_err() {
                        return;
                    }
                    while let Some(chunk) = rx.recv().await {
                        if tx2.send(chunk).await.is_err() {
                            return;
                        }
                    }
                });
                Ok(rx2)
            }
            Ok(None) | Err(_) => Ok(rx),
        }
    }
}

/// The mark of journalctl's failure, before its words, as the last chunk.
const FAILED: &[u8] = b"\0failed: ";

/// journalctl's arguments for `q`: plain lines with ISO times, no host name (the node is known), no
/// hints, no pager.
fn args(q: &LogQuery, directory: Option<&Path>) -> Vec<String> {
    let mut a = vec![
        "--no-pager".to_string(),
        "--quiet".to_string(),
        "--output=short-iso".to_string(),
        "--no-hostname".to_string(),
        format!("--lines={}", q.lines),
    ];
    if let Some(d) = directory {
        a.push(format!("--directory={}", d.display()));
    }
    if let Some(unit) = &q.unit {
        a.push(format!("--unit={unit}"));
    }
    if let Some(since) = q.since {
        a.push(format!("--since=@{since}"));
    }
    if q.follow {
        a.push("--follow".into());
    }
    a
}

/// What one reader is allowed.
struct Limits {
    /// Lines sent at once before the rate applies.
    burst: u32,
    /// Bytes in all (`None`: following, bounded by the rate).
    bytes: Option<usize>,
}

impl Limits {
    fn for_query(q: &LogQuery) -> Limits {
        Limits {
            burst: q.lines.max(RATE),
            bytes: (!q.follow).then_some(MAX_REPLY),
        }
    }
}

/// Copies journalctl's lines to `tx`, cut to [`MAX_LINE`], paced to [`RATE`] after the burst, until
/// journalctl ends, the reader goes away or the byte cap is reached (then says so); a journalctl that
/// fails says why in the last chunk.
async fn pump(
    mut child: tokio::process::Child,
    mut out: tokio::io::BufReader<impl tokio::io::AsyncRead + Unpin>,
    err: tokio::process::ChildStderr,
    tx: mpsc::Sender<Vec<u8>>,
    limits: Limits,
    _permit: OwnedSemaphorePermit,
) {
    // Its first KiB, read while it runs (a full stderr pipe would stall it); the rest is dropped.
    let errors = tokio::spawn(async move {
        let mut kept = Vec::new();
        let mut err = err;
        let _ = (&mut err).take(1024).read_to_end(&mut kept).await;
        let _ = tokio::io::copy(&mut err, &mut tokio::io::sink()).await;
        kept
    });
    let mut chunk = Vec::with_capacity(CHUNK);
    let mut line = Vec::with_capacity(256);
    let mut sent = 0usize;
    let mut tokens = limits.burst as f64;
    let mut last = tokio::time::Instant::now();
    loop {
        line.clear();
        let cut = match read_line(&mut out, &mut line, MAX_LINE).await {
            Ok(None) => break,
            Ok(Some(cut)) => cut,
            Err(_) => break,
        };
        if cut > 0 {
            line.extend_from_slice(format!(" [herd: {cut} more bytes cut]").as_bytes());
        }
        line.push(b'\n');
        if let Some(cap) = limits.bytes {
            if sent + chunk.len() + line.len() > cap {
                chunk.extend_from_slice(
                    format!(
                        "[herd: reply cut at {} MiB; ask for fewer lines, a unit or a later --since]\n",
                        cap >> 20
                    )
                    .as_bytes(),
                );
                let _ = tx.send(std::mem::take(&mut chunk)).await;
                return;
            }
        }
        // The rate: a token per line, RATE a second, at most the burst kept.
        let now = tokio::time::Instant::now();
        tokens = (tokens + now.duration_since(last).as_secs_f64() * f64::from(RATE))
            .min(limits.burst as f64);
        last = now;
        if tokens < 1.0 {
            if !chunk.is_empty() {
                sent += chunk.len();
                if tx.send(std::mem::take(&mut chunk)).await.is_err() {
                    return;
                }
            }
            // A twentieth of a second's worth at a time: a timer per line would cost more than
            // the line.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = tokio::time::Instant::now();
            tokens += now.duration_since(last).as_secs_f64() * f64::from(RATE);
            last = now;
        }
        tokens -= 1.0;
        chunk.extend_from_slice(&line);
        // Hand over what is gathered when it is a chunk, or when journalctl has nothing more at hand.
        if chunk.len() >= CHUNK || out.buffer().is_empty() {
            sent += chunk.len();
            if tx.send(std::mem::take(&mut chunk)).await.is_err() {
                return;
            }
        }
    }
    if !chunk.is_empty() && tx.send(std::mem::take(&mut chunk)).await.is_err() {
        return;
    }
    let status = child.wait().await;
    let said = errors.await.unwrap_or_default();
    if let Ok(s) = status {
        if !s.success() {
            let words = String::from_utf8_lossy(&said);
            let words = words.trim();
            let mut last = FAILED.to_vec();
            last.extend_from_slice(
                format!(
                    "journalctl {s}{}{words}\n",
                    if words.is_empty() { "" } else { ": " }
                )
                .as_bytes(),
            );
            let _ = tx.send(last).await;
        }
    }
}

/// Reads one line into `line` (without its newline), keeping at most `max` bytes of it. Returns the
/// bytes cut, or `None` at the end of the input.
async fn read_line(
    out: &mut (impl AsyncBufRead + Unpin),
    line: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Option<usize>> {
    let mut cut = 0;
    let mut any = false;
    loop {
        let buf = out.fill_buf().await?;
        if buf.is_empty() {
            return Ok(any.then_some(cut));
        }
        any = true;
        let (part, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        let room = max.saturating_sub(line.len());
        line.extend_from_slice(&part[..part.len().min(room)]);
        cut += part.len().saturating_sub(room);
        let used = done.unwrap_or(buf.len());
        out.consume(used);
        if done.is_some() {
            return Ok(Some(cut));
        }
    }
}

/// Whether this process may read the whole system journal: root, or a member of `systemd-journal` or
/// `adm` (journalctl(1): other users see only their own lines, and journalctl's `--quiet` hides the
/// hint that says so). Read from /proc/self/status and /etc/group.
fn may_read_system_journal() -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> Vec<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| {
                v.split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    if field("Uid:").get(1) == Some(&0) {
        return Ok(());
    }
    let mut mine = field("Groups:");
    mine.extend(field("Gid:").get(1));
    let groups = std::fs::read_to_string("/etc/group").unwrap_or_default();
    let readers: Vec<u32> = groups
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let gid = f.nth(1)?.parse().ok()?;
            ["systemd-journal", "adm"].contains(&name).then_some(gid)
        })
        .collect();
    if mine.iter().any(|g| readers.contains(g)) {
        Ok(())
    } else {
        Err(
            "this agent may not read the journal: it is neither root nor in the systemd-journal \
             group (herd.service gives it SupplementaryGroups=systemd-journal)"
                .to_string(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn long_lines_are_cut_and_say_by_how_much() {
        let text = format!("short\n{}\nlast", "x".repeat(10_000));
        let mut r = tokio::io::BufReader::with_capacity(1000, text.as_bytes());
        let mut line = Vec::new();
        assert_eq!(read_line(&mut r, &mut line, 4096).await.unwrap(), Some(0));
        assert_eq!(line, b"short");
        line.clear();
        assert_eq!(
            read_line(&mut r, &mut line, 4096).await.unwrap(),
            Some(10_000 - 4096)
        );
        assert_eq!(line.len(), 4096);
        line.clear();
        assert_eq!(read_line(&mut r, &mut line, 4096).await.unwrap(), Some(0));
        assert_eq!(line, b"last");
        line.clear();
        assert_eq!(read_line(&mut r, &mut line, 4096).await.unwrap(), None);
    }

    #[test]
    fn journalctl_is_asked_exactly_for_the_query() {
        let q = LogQuery {
            lines: 5,
            unit: Some("herd.service".into()),
            since: Some(1_765_000_000),
            follow: true,
        };
        let a = args(&q, Some(Path::new("/tmp/j")));
        for want in [
            "--lines=5",
            "--unit=herd.service",
            "--since=@1765000000",
            "--follow",
            "--directory=/tmp/j",
            "--quiet",
        ] {
            assert!(a.iter().any(|x| x == want), "{want} in {a:?}");
        }
        let plain = args(&LogQuery::default(), None);
        assert!(!plain.iter().any(|x| x.starts_with("--follow")
            || x.starts_with("--unit")
            || x.starts_with("--directory")));
    }
}
