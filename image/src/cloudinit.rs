//! A cloud-init base as cloud-init itself will see it at first boot: its system configuration
//! (`cloud.cfg` merged with `cloud.cfg.d/*.cfg` the way cloud-init merges them) and whether the NoCloud
//! seed on the boot partition (`meta-data`, `user-data`, `network-config`) is read at all.

use yaml_rust2::{Yaml, YamlLoader};

use crate::{Boot, Result, Root};

/// Where cloud-init's system configuration lives on the root filesystem.
const CLOUD_CFG: &str = "/etc/cloud/cloud.cfg";
const CLOUD_CFG_D: &str = "/etc/cloud/cloud.cfg.d";

/// The boot partition, where Raspberry Pi OS points NoCloud (`seedfrom: file:///boot/firmware`).
const BOOT_SEED: &str = "/boot/firmware";

/// What a base with cloud-init will do with the files herd puts on it.
#[derive(Debug, Clone)]
pub struct CloudInit {
    /// cloud-init reads the boot partition's seed: `meta-data` is there and NoCloud is pointed at it.
    /// Without it (Raspberry Pi OS 2025-10-01, pi-gen e4640531), `network-config` is never read.
    pub seed: bool,
    /// The merged system configuration (a YAML mapping).
    config: Yaml,
    /// The `.cfg` files of `cloud.cfg.d`, in the order cloud-init reads them (byte order).
    pub drop_ins: Vec<String>,
}

impl CloudInit {
    /// Reads the base's configuration and seed; `None` when the base has no cloud-init.
    pub fn read(root: &Root, boot: &Boot) -> Result<Option<CloudInit>> {
        if !root.exists("/usr/bin/cloud-init") {
            return Ok(None);
        }
        let mut sources = Vec::new();
        for name in root.list(CLOUD_CFG_D)? {
            let path = format!("{CLOUD_CFG_D}/{name}");
            if !name.ends_with(".cfg") {
                continue;
            }
            // cloud-init takes regular files, following symlinks (os.path.isfile).
            if let Ok(text) = root.read_resolved(&path) {
                sources.push((name, String::from_utf8_lossy(&text).into_owned()));
            }
        }
        let base = root
            .read(CLOUD_CFG)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let cmdline = boot
            .read("cmdline.txt")
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        Ok(Some(CloudInit::from_sources(
            &base,
            sources,
            &Seed {
                meta_data: boot.exists("meta-data"),
                cmdline: &cmdline,
                boot_label: &boot.label(),
            },
        )))
    }

    /// From `cloud.cfg`'s text, the `cloud.cfg.d` files (name, text) in any order, and what the boot
    /// partition holds.
    ///
    /// cloud-init `cloudinit/util.py` (commit 04eacd06): `read_conf_d` (lines 1066-1095) reads the
    /// `.cfg` files in reverse byte order and `mergemanydict` (lines 823-877) lets the first source that
    /// sets a key win, recursing into mappings only; `read_conf_with_confd` (lines 1098-1142) puts
    /// `cloud.cfg.d` before `cloud.cfg`. So the byte-order-last file that sets a key wins, and a list is
    /// taken whole from one file, never joined. A file that is not YAML counts as empty (`load_yaml`).
    pub fn from_sources(
        cloud_cfg: &str,
        mut drop_ins: Vec<(String, String)>,
        boot: &Seed,
    ) -> CloudInit {
        drop_ins.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        let mut config = Yaml::Hash(Default::default());
        for text in drop_ins
            .iter()
            .rev()
            .map(|(_, t)| t.as_str())
            .chain([cloud_cfg])
        {
            if let Some(doc) = YamlLoader::load_from_str(text)
                .ok()
                .and_then(|d| d.into_iter().next())
            {
                merge_under(&mut config, doc);
            }
        }
        let mut ci = CloudInit {
            seed: false,
            config,
            drop_ins: drop_ins.into_iter().map(|(n, _)| n).collect(),
        };
        ci.seed = boot.meta_data && ci.nocloud_reads_boot(boot);
        ci
    }

    /// Whether the NoCloud datasource is enabled and pointed at the boot partition: by `seedfrom`
    /// (Raspberry Pi OS), by the label it looks for (`fs_label`, "cidata" unless set), or by
    /// `ds=nocloud;s=…` on the kernel command line.
    fn nocloud_reads_boot(&self, boot: &Seed) -> bool {
        // With no datasource_list, cloud-init tries every datasource it ships, NoCloud among them.
        let listed = match &self.config["datasource_list"] {
            Yaml::Array(list) => list.iter().any(|d| d.as_str() == Some("NoCloud")),
            Yaml::BadValue => true,
            _ => false,
        };
        let seed_dir = |s: &str| {
            let s = s.strip_prefix("file://").unwrap_or(s).trim_end_matches('/');
            s == BOOT_SEED
        };
        let nocloud = &self.config["datasource"]["NoCloud"];
        let seeded_from = nocloud["seedfrom"].as_str().is_some_and(seed_dir);
        // cloud-init `cloudinit/sources/DataSourceNoCloud.py` (commit 04eacd06): the label defaults to
        // "cidata" (line 131) and is matched in upper or lower case (lines 55-56).
        let label = nocloud["fs_label"].as_str().unwrap_or("cidata");
        let labelled = !boot.boot_label.is_empty() && label.eq_ignore_ascii_case(boot.boot_label);
        let configured = seeded_from || labelled;
        // `ds=nocloud;s=file:///boot/firmware/` on the kernel command line points it there too.
        let on_cmdline = boot.cmdline.split_whitespace().any(|t| {
            t.strip_prefix("ds=nocloud").is_some_and(|rest| {
                rest.split(';')
                    .filter_map(|kv| kv.strip_prefix("s=").or(kv.strip_prefix("seedfrom=")))
                    .any(seed_dir)
            })
        });
        listed && (configured || on_cmdline)
    }

    /// The effective value of a top-level setting (`BadValue` when none sets it).
    pub fn setting(&self, key: &str) -> &Yaml {
        &self.config[key]
    }

    /// The effective value of a list setting such as `cloud_init_modules`, each item as cloud-init
    /// would take it (a module name, or `[name, frequency]`).
    pub fn list(&self, key: &str) -> Option<Vec<ListItem>> {
        match &self.config[key] {
            Yaml::Array(items) => Some(items.iter().filter_map(ListItem::new).collect()),
            _ => None,
        }
    }
}

/// One item of a cloud-init module list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListItem {
    /// The module's name: the item itself, or the first element of `[name, frequency]`.
    pub name: String,
    /// The item as YAML flow text (JSON is YAML), to be written back into a drop-in unchanged.
    pub flow: String,
}

impl ListItem {
    /// A scalar or a list of scalars; `None` for anything else.
    fn new(y: &Yaml) -> Option<ListItem> {
        fn scalar(y: &Yaml) -> Option<serde_json::Value> {
            Some(match y {
                Yaml::String(s) => s.clone().into(),
                Yaml::Integer(i) => (*i).into(),
                Yaml::Boolean(b) => (*b).into(),
                Yaml::Real(r) => serde_json::Value::String(r.clone()),
                _ => return None,
            })
        }
        let (value, name) = match y {
            Yaml::Array(items) => (
                serde_json::Value::Array(items.iter().map(scalar).collect::<Option<_>>()?),
                items.first().and_then(|f| f.as_str()),
            ),
            other => (scalar(other)?, other.as_str()),
        };
        Some(ListItem {
            name: name.unwrap_or_default().to_string(),
            flow: value.to_string(),
        })
    }
}

/// What the boot partition shows cloud-init.
pub struct Seed<'a> {
    /// `meta-data` is there: NoCloud needs it to take the seed at all (pi-gen
    /// `stage2/04-cloud-init/01-run.sh` line 9: "install meta-data file for NoCloud data-source to work").
    pub meta_data: bool,
    /// `cmdline.txt`.
    pub cmdline: &'a str,
    /// The FAT's volume label (`bootfs` on Raspberry Pi OS).
    pub boot_label: &'a str,
}

/// Merges `doc` under `into`: keys `into` already has stay, mappings are merged recursively.
fn merge_under(into: &mut Yaml, doc: Yaml) {
    if let (Yaml::Hash(a), Yaml::Hash(b)) = (into, doc) {
        for (k, v) in b {
            match a.get_mut(&k) {
                Some(existing @ Yaml::Hash(_)) => merge_under(existing, v),
                Some(_) => {}
                None => {
                    a.insert(k, v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flows(list: Option<Vec<ListItem>>) -> Vec<String> {
        list.unwrap().into_iter().map(|i| i.flow).collect()
    }

    const NO_SEED: Seed = Seed {
        meta_data: false,
        cmdline: "",
        boot_label: "bootfs",
    };

    fn d(name: &str, text: &str) -> (String, String) {
        (name.into(), text.into())
    }

    /// Raspberry Pi OS's own drop-in (pi-gen `stage2/04-cloud-init/files/99_raspberry-pi.cfg` at tag
    /// 2025-10-01-raspios-trixie-arm64, lines 3-6): NoCloud only, seeded from the boot partition.
    const RPI: &str = "datasource_list: [ NoCloud, None ]\ndatasource:\n  NoCloud:\n    seedfrom: file:///boot/firmware\n";

    #[test]
    fn the_byte_order_last_drop_in_wins_and_lists_are_taken_whole() {
        let base = "cloud_init_modules:\n - seed_random\n - set_hostname\n - [ssh, always]\n\
                    preserve_hostname: false\nsystem_info:\n  distro: debian\n  default_user:\n    name: pi\n";
        let ci = CloudInit::from_sources(
            base,
            vec![
                // '_' (0x5f) sorts after '-' (0x2d): 99_raspberry-pi.cfg is read after 99-herd.cfg.
                d(
                    "99_b.cfg",
                    "preserve_hostname: true\ncloud_init_modules:\n - bootcmd\n",
                ),
                d(
                    "99-a.cfg",
                    "preserve_hostname: false\ncloud_init_modules:\n - write_files\n",
                ),
                d(
                    "05_logging.cfg",
                    "system_info:\n  default_user:\n    name: ops\n    shell: /bin/bash\n",
                ),
                d("50-bad.cfg", "key: [unclosed\n"),
            ],
            &NO_SEED,
        );
        assert_eq!(ci.config["preserve_hostname"].as_bool(), Some(true));
        assert_eq!(flows(ci.list("cloud_init_modules")), ["\"bootcmd\""]);
        // Mappings merge key by key; the drop-in's keys win.
        let user = &ci.config["system_info"]["default_user"];
        assert_eq!(user["name"].as_str(), Some("ops"));
        assert_eq!(user["shell"].as_str(), Some("/bin/bash"));
        assert_eq!(ci.config["system_info"]["distro"].as_str(), Some("debian"));
        assert_eq!(
            ci.drop_ins,
            ["05_logging.cfg", "50-bad.cfg", "99-a.cfg", "99_b.cfg"]
        );
        // Only cloud.cfg: its list, items as cloud-init takes them.
        let ci = CloudInit::from_sources(base, vec![], &NO_SEED);
        let list = ci.list("cloud_init_modules").unwrap();
        assert_eq!(
            flows(Some(list.clone())),
            [
                "\"seed_random\"",
                "\"set_hostname\"",
                "[\"ssh\",\"always\"]"
            ]
        );
        let names: Vec<_> = list.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["seed_random", "set_hostname", "ssh"]);
        assert_eq!(ci.list("cloud_final_modules"), None);
    }

    /// The seed is read when `meta-data` is on the boot partition and NoCloud looks there: pi-gen's
    /// `99_raspberry-pi.cfg` points it there, and Imager adds `ds=nocloud;i=…` to `cmdline.txt` beside
    /// the `meta-data` it writes (rpi-imager `src/downloadthread.cpp` lines 2604-2618, commit 72ad1179).
    #[test]
    fn the_seed_counts_only_with_meta_data_and_nocloud_pointed_at_the_boot_partition() {
        let seed = |drop_ins: Vec<(String, String)>, meta_data: bool, cmdline: &str| {
            let boot = Seed {
                meta_data,
                cmdline,
                boot_label: "bootfs",
            };
            CloudInit::from_sources("", drop_ins, &boot).seed
        };
        assert!(seed(
            vec![d("99_raspberry-pi.cfg", RPI)],
            true,
            "ds=nocloud;i=rpi-imager-1"
        ));
        assert!(seed(vec![d("99_raspberry-pi.cfg", RPI)], true, ""));
        // Raspberry Pi OS 2025-10-01: the settings, but no meta-data (pi-gen e4640531).
        assert!(!seed(vec![d("99_raspberry-pi.cfg", RPI)], false, ""));
        // meta-data, but NoCloud is not enabled, or looks elsewhere.
        let other = "datasource_list: [ NoCloud, None ]\ndatasource:\n  NoCloud:\n    seedfrom: file:///srv/seed/\n";
        assert!(!seed(vec![d("99_x.cfg", other)], true, ""));
        assert!(!seed(
            vec![d("99_x.cfg", "datasource_list: [ None ]\n")],
            true,
            ""
        ));
        assert!(!seed(vec![], true, ""));
        // The kernel command line can point it there instead.
        assert!(seed(
            vec![],
            true,
            "console=tty1 ds=nocloud;s=file:///boot/firmware/ quiet"
        ));
        assert!(!seed(
            vec![d("99_x.cfg", "datasource_list: [ None ]\n")],
            true,
            "ds=nocloud;s=file:///boot/firmware/"
        ));
        // By label: herd's QEMU Trixie base (fs_label: bootfs), or a card whose FAT is labelled cidata.
        let label = "datasource:\n  NoCloud:\n    fs_label: BOOTFS\n";
        assert!(seed(vec![d("90-herd-base.cfg", label)], true, ""));
        let cidata = |boot_label| Seed {
            meta_data: true,
            cmdline: "",
            boot_label,
        };
        assert!(CloudInit::from_sources("", vec![], &cidata("CIDATA")).seed);
        assert!(!CloudInit::from_sources("", vec![], &cidata("bootfs")).seed);
        // A later drop-in overrides the list.
        assert!(!seed(
            vec![
                d("99_raspberry-pi.cfg", RPI),
                d("zz.cfg", "datasource_list: [ None ]\n")
            ],
            true,
            ""
        ));
    }
}
