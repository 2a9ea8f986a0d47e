//! The overlay: the tree under `overlay/` that every image gets, rendered with `tera` (every file is a
//! template), plus the agent binary and the symlink that enables its unit.

use std::path::Path;

use crate::ext4::Entry;
use crate::{Error, Result};

/// The values the templates see.
#[derive(Clone, serde::Serialize)]
pub struct Values {
    pub cluster: String,
    pub cluster_key: String,
    pub api_token: String,
    /// A TOML array of `host:port` seeds, e.g. `["pi1.local:7496"]`.
    pub seeds: String,
    /// `hostname_template` of herd.toml: the name each card takes at first boot ("" keeps the base's).
    pub hostname_template: String,
    /// `upgrade.public_key` of herd.toml: the public half of the cluster's signing key (base64).
    pub signing_public_key: String,
    /// `engine.kind` of herd.toml: `none`, or `swarm` for an image that carries docker.io.
    pub engine: String,
    /// `engine.expect` of herd.toml.
    pub engine_expect: u32,
}

impl std::fmt::Debug for Values {
    /// The cluster key and the API token are secrets: never shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Values")
            .field("cluster", &self.cluster)
            .field("cluster_key", &"<secret>")
            .field("api_token", &"<secret>")
            .field("seeds", &self.seeds)
            .field("hostname_template", &self.hostname_template)
            .field("signing_public_key", &self.signing_public_key)
            .field("engine", &self.engine)
            .field("engine_expect", &self.engine_expect)
            .finish()
    }
}

/// Renders every file under `dir` into entries rooted at `/` (files 0644 root:root, directories 0755; a
/// file that takes the cluster key or the API token is 0600, readable by root only: the agent, which
/// runs as a dynamic user, gets it as a systemd credential).
pub fn render(dir: &Path, values: &Values) -> Result<Vec<Entry>> {
    let ctx = tera::Context::from_serialize(values)
        .map_err(|e| Error::Invalid(format!("overlay values: {e}")))?;
    let mut out = Vec::new();
    walk(dir, dir, &ctx, &mut out)?;
    if out.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: the overlay is empty",
            dir.display()
        )));
    }
    Ok(out)
}

fn walk(base: &Path, dir: &Path, ctx: &tera::Context, out: &mut Vec<Entry>) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(crate::io(dir))?
        .collect::<std::result::Result<_, _>>()
        .map_err(crate::io(dir))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let rel = format!(
            "/{}",
            path.strip_prefix(base)
                .expect("under base")
                .to_string_lossy()
        );
        let ty = e.file_type().map_err(crate::io(&path))?;
        if ty.is_dir() {
            walk(base, &path, ctx, out)?;
        } else if ty.is_file() {
            let text = std::fs::read_to_string(&path).map_err(crate::io(&path))?;
            let rendered = tera::Tera::one_off(&text, ctx, false)
                .map_err(|e| Error::Invalid(format!("{}: template: {e:?}", path.display())))?;
            let secret = SECRET_VALUES
                .iter()
                .any(|v| text.contains(&format!("{{{{ {v} }}}}")));
            out.push(Entry::root_file(
                rel,
                rendered,
                if secret { 0o600 } else { 0o644 },
            ));
        }
    }
    Ok(())
}

/// The values that are secrets: a file that renders one is readable by root only.
const SECRET_VALUES: &[&str] = &["cluster_key", "api_token"];

/// `seeds` as a TOML array.
pub fn seeds_toml(seeds: &[String]) -> String {
    let quoted: Vec<String> = seeds.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(", "))
}
