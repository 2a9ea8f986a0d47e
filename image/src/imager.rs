//! What Raspberry Pi Imager is given: the os-list manifest of a herd image, with the device list its
//! "Select your device" step is built from, and the customisation policy it carries.

use crate::Arch;

/// A board in Imager's device step (the `imager.devices` of an os-list). Imager shows an OS entry for
/// the selected board when one of the entry's `devices` is among the board's `tags`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Device {
    pub name: &'static str,
    pub description: &'static str,
    pub tags: &'static [&'static str],
}

/// Every board a Raspberry Pi OS image runs on, with the tags Imager's own catalogue gives it (the Zero
/// 2 W shares the Pi 3's; the Zero and Zero W the Pi 1's). The 64-bit image runs on the first four.
pub const DEVICES: &[Device] = &[
    Device {
        name: "Raspberry Pi 5",
        description: "Raspberry Pi 5, 500 / 500+ and Compute Module 5",
        tags: &["pi5-64bit", "pi5-32bit"],
    },
    Device {
        name: "Raspberry Pi 4",
        description: "Raspberry Pi 4 Model B, 400 and Compute Module 4",
        tags: &["pi4-64bit", "pi4-32bit"],
    },
    Device {
        name: "Raspberry Pi 3",
        description: "Raspberry Pi 3 Model A+, B, B+ and Compute Module 3 / 3+",
        tags: &["pi3-64bit", "pi3-32bit"],
    },
    Device {
        name: "Raspberry Pi Zero 2 W",
        description: "Raspberry Pi Zero 2 W (no Ethernet: the card needs a Wi-Fi network)",
        tags: &["pi3-64bit", "pi3-32bit"],
    },
    Device {
        name: "Raspberry Pi 2",
        description: "Raspberry Pi 2 Model B",
        tags: &["pi2-32bit"],
    },
    Device {
        name: "Raspberry Pi 1 and Zero",
        description: "Raspberry Pi 1 Model A+, B+, Compute Module 1, Zero and Zero W",
        tags: &["pi1-32bit"],
    },
];

/// The architecture's name in Imager's os-list schema (`armv8`, `armhf`, `armel`; no image is made for
/// the laptop's `x86_64`).
pub fn architecture(arch: Arch) -> &'static str {
    match arch {
        Arch::Arm64 => "armv8",
        Arch::Armhf => "armhf",
        Arch::Amd64 => "x86_64",
    }
}

/// Imager's device tags for the boards the agent of `arch` runs on (a Pi Zero 2 W counts as a Pi 3; a
/// Pi Zero and Zero W as a Pi 1); none for a family no Pi runs.
pub fn device_tags(arch: Arch) -> &'static [&'static str] {
    match arch {
        Arch::Arm64 => &["pi5-64bit", "pi4-64bit", "pi3-64bit"],
        Arch::Armhf => &[
            "pi5-32bit",
            "pi4-32bit",
            "pi3-32bit",
            "pi2-32bit",
            "pi1-32bit",
        ],
        Arch::Amd64 => &[],
    }
}

/// The boards an image of `arch` runs on: those sharing a tag with the image's own `devices`.
pub fn devices_for(arch: Arch) -> Vec<&'static Device> {
    DEVICES
        .iter()
        .filter(|d| d.tags.iter().any(|t| device_tags(arch).contains(t)))
        .collect()
}

/// How Imager may customise a card written from the manifest (its `init_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Customisation {
    /// herd baked the user, keys, Wi-Fi and name: Imager offers no customisation (`none`), so nothing it
    /// writes can fight what the image's maker set.
    Off,
    /// Imager customises the card, the way the base expects: cloud-init files (`cloudinit-rpi`) on a
    /// base that reads its seed, else its `firstrun.sh` (`systemd`).
    Imager { cloud_init: bool },
}

impl Customisation {
    pub fn init_format(self) -> &'static str {
        match self {
            Customisation::Off => "none",
            Customisation::Imager { cloud_init: true } => "cloudinit-rpi",
            Customisation::Imager { cloud_init: false } => "systemd",
        }
    }
}

/// What one manifest describes.
pub struct Entry<'a> {
    pub cluster: &'a str,
    pub arch: Arch,
    pub icon_url: &'a str,
    pub url: &'a str,
    pub extract_size: u64,
    pub extract_sha256: &'a str,
    pub download_size: u64,
    pub download_sha256: &'a str,
    pub release_date: &'a str,
    pub customisation: Customisation,
}

/// The manifest: one os-list entry, and the device list Imager needs to get past its first step.
pub fn manifest(e: &Entry) -> serde_json::Value {
    let devices: Vec<serde_json::Value> = devices_for(e.arch)
        .iter()
        .map(|d| {
            serde_json::json!({
                "name": d.name,
                "description": d.description,
                "tags": d.tags,
                "icon": e.icon_url,
                // Entries without `devices` are hidden for an exclusive board; ours always have them.
                "matching_type": "exclusive",
            })
        })
        .collect();
    serde_json::json!({
        "imager": { "devices": devices },
        "os_list": [{
            "name": format!("herd: {}", e.cluster),
            "description": format!(
                "Raspberry Pi OS with the herd agent for cluster {} ({})",
                e.cluster,
                e.arch.name()
            ),
            "icon": e.icon_url,
            "url": e.url,
            "extract_size": e.extract_size,
            "extract_sha256": e.extract_sha256,
            "image_download_size": e.download_size,
            "image_download_sha256": e.download_sha256,
            "release_date": e.release_date,
            "devices": device_tags(e.arch),
            "init_format": e.customisation.init_format(),
            "architecture": architecture(e.arch),
        }]
    })
}

/// Checks a user name as Raspberry Pi OS's first-boot user setup (userconf-pi's `validate_user`) does,
/// before anything is written: a name it refuses makes it rename `userconf.txt` to
/// `failed_userconf.txt` and wait at a prompt on tty8, and the card never reaches multi-user. The
/// error repeats userconf-pi's own wording of the rule. (Its bracket expression also lets a backslash
/// through; no account tool takes one, so neither does herd.)
pub fn check_user_name(name: &str) -> std::result::Result<(), String> {
    let mut why = Vec::new();
    if name.is_empty() || name.len() > 32 {
        why.push("Length be between 1 and 32 characters.");
    }
    let mut bytes = name.bytes();
    let shape = bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !shape {
        why.push(
            "Must only contain lower-case letters, digits and hyphens, and must start with a letter.",
        );
    }
    if name == "root" {
        why.push("Cannot be root.");
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "user name {name:?} is refused by Raspberry Pi OS's first-boot user setup (userconf-pi), \
             which would then stop the card at a prompt: {}",
            why.join(" ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// userconf-pi `userconf-service`, `validate_user` (lines 7-25 at commit 1e8dc53f): 1 to 32
    /// characters (line 10), `^[a-z]\{1\}[a-z0-9\-]*$` (line 14), not `root` (line 18); a name it
    /// refuses sends `userconf.txt` to `failed_userconf.txt` (lines 48-52) and the interactive setup.
    #[test]
    fn user_names_are_checked_as_userconf_pi_checks_them() {
        for ok in ["a", "alice", "pi", "ops-1", "a1", &"a".repeat(32), "rooted"] {
            assert_eq!(check_user_name(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("", "Length be between 1 and 32"),
            (&"a".repeat(33) as &str, "Length be between 1 and 32"),
            ("ops_1", "lower-case letters, digits and hyphens"),
            ("_ops", "must start with a letter"),
            ("1ops", "must start with a letter"),
            ("-ops", "must start with a letter"),
            ("Alice", "lower-case letters"),
            ("al ice", "lower-case letters"),
            ("al\\ice", "lower-case letters"),
            ("alice:x", "lower-case letters"),
            ("élise", "lower-case letters"),
            ("root", "Cannot be root."),
        ] {
            let e = check_user_name(bad).unwrap_err();
            assert!(e.contains(why) && e.contains("userconf-pi"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn the_64_bit_image_lists_the_boards_that_run_it_and_the_32_bit_one_every_board() {
        let names = |a| devices_for(a).iter().map(|d| d.name).collect::<Vec<_>>();
        assert_eq!(
            names(Arch::Arm64),
            [
                "Raspberry Pi 5",
                "Raspberry Pi 4",
                "Raspberry Pi 3",
                "Raspberry Pi Zero 2 W"
            ]
        );
        assert_eq!(names(Arch::Armhf).len(), DEVICES.len());
    }
}
