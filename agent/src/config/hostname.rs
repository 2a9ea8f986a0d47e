//! Host name templates (`hostname_template`): checked when the configuration loads, rendered from the node
//! id when the card names itself.

use anyhow::{bail, Context};

use crate::gossip::NodeId;

/// A host name template: `{id}` is the node id's 16 hex digits, `{id:N}` its first N (1 to 16).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostnameTemplate(String);

impl HostnameTemplate {
    /// Checks that `text` only uses the known placeholders and always renders a valid host name.
    pub fn parse(text: &str) -> anyhow::Result<HostnameTemplate> {
        let t = HostnameTemplate(text.to_string());
        // Render with the extreme ids: what is valid for them is valid for every id.
        t.render(NodeId(0))?;
        t.render(NodeId(u64::MAX))?;
        Ok(t)
    }

    pub fn render(&self, id: NodeId) -> anyhow::Result<String> {
        let hex = id.to_string();
        let mut out = String::new();
        let mut rest = self.0.as_str();
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let close = rest[open..]
                .find('}')
                .map(|c| open + c)
                .with_context(|| format!("{:?}: a '{{' is not closed", self.0))?;
            let digits = match &rest[open + 1..close] {
                "id" => 16,
                p => match p.strip_prefix("id:").map(str::parse::<usize>) {
                    Some(Ok(n)) if (1..=16).contains(&n) => n,
                    _ => bail!(
                        "{:?}: unknown placeholder {{{p}}}; use {{id}} or {{id:N}} with N from 1 to 16",
                        self.0
                    ),
                },
            };
            out.push_str(&hex[..digits]);
            rest = &rest[close + 1..];
        }
        out.push_str(rest);
        check_hostname(&out).with_context(|| format!("{:?}", self.0))?;
        Ok(out)
    }
}

/// A host name that works as an mDNS `.local` name and in DHCP: one label of a-z, 0-9 and '-'.
pub(crate) fn check_hostname(name: &str) -> anyhow::Result<()> {
    if name.is_empty() || name.len() > 63 {
        bail!("host name {name:?} must be 1 to 63 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        bail!("host name {name:?} may only hold a-z, 0-9 and '-'");
    }
    if name.starts_with('-') || name.ends_with('-') {
        bail!("host name {name:?} must not start or end with '-'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_render_and_bad_ones_are_named() {
        let id = NodeId(0x3f2a_9c00_1122_3344);
        let t = HostnameTemplate::parse("herd-{id:4}").unwrap();
        assert_eq!(t.render(id).unwrap(), "herd-3f2a");
        assert_eq!(
            HostnameTemplate::parse("pi{id}")
                .unwrap()
                .render(id)
                .unwrap(),
            "pi3f2a9c0011223344"
        );
        for (bad, why) in [
            ("herd-{name}", "unknown placeholder {name}"),
            ("herd-{id:0}", "unknown placeholder {id:0}"),
            ("herd-{id:17}", "unknown placeholder {id:17}"),
            ("herd-{id", "not closed"),
            ("Herd-{id:4}", "may only hold"),
            ("herd_{id:4}", "may only hold"),
            ("-{id:4}", "must not start or end"),
            ("", "1 to 63"),
        ] {
            let e = format!("{:#}", HostnameTemplate::parse(bad).unwrap_err());
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }
}
