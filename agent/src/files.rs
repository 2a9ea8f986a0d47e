//! Files the agent and the CLI keep (node id, generation, meta-data, host name, wanted counts): written so
//! that a power cut leaves the old or the new content, never a mix.

use std::path::Path;

use anyhow::Context;

/// Writes `path` so that a power cut leaves either the old or the new content: temporary file, fsync,
/// rename, fsync of the directory.
pub fn write_atomic(path: &Path, content: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let dir = path.parent().context("path has no directory")?;
    let tmp = path.with_extension("tmp");
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(content.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    result.with_context(|| format!("cannot write {}", path.display()))
}
