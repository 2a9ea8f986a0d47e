//! Wi-Fi baked into an image, as a Pi needs it on Raspberry Pi OS (Bookworm and Trixie alike): the
//! network's profile, the regulatory domain on the kernel command line (without one the kernel keeps the
//! radio blocked), NetworkManager's radio switch on, and the radio unblocked at boot. On a base that runs
//! cloud-init the network goes into its NoCloud `network-config` instead (as Imager writes it), never in
//! both places. The passphrase is never stored: only the WPA pre-shared key derived from it
//! (PBKDF2-HMAC-SHA1 over the SSID, 4096 rounds, as `wpa_passphrase` prints), which joins that one
//! network and no other.

use std::fmt;

use crate::{Error, Result};

/// A Wi-Fi network to join.
#[derive(Clone)]
pub struct Wifi {
    pub ssid: String,
    passphrase: String,
    /// ISO 3166-1 alpha-2, upper case.
    pub country: String,
    pub hidden: bool,
}

impl fmt::Debug for Wifi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wifi")
            .field("ssid", &self.ssid)
            .field("passphrase", &"***")
            .field("country", &self.country)
            .field("hidden", &self.hidden)
            .finish()
    }
}

/// Regulatory domains the kernel's wireless database knows: ISO 3166-1 alpha-2 country codes.
const COUNTRIES: &str = "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM \
    BN BO BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO \
    DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK \
    HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI \
    LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF \
    NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE \
    SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG \
    UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW";

impl Wifi {
    /// Checks what a network needs: an SSID of 1 to 32 bytes without control characters, a WPA2
    /// passphrase of 8 to 63 printable ASCII characters (or a 64-hex-digit key), a known country.
    pub fn new(ssid: &str, passphrase: &str, country: &str, hidden: bool) -> Result<Wifi> {
        if ssid.is_empty() || ssid.len() > 32 || ssid.chars().any(char::is_control) {
            return Err(Error::Invalid(format!(
                "Wi-Fi SSID {ssid:?}: 1 to 32 bytes, no control characters"
            )));
        }
        let hex_key = passphrase.len() == 64 && passphrase.bytes().all(|b| b.is_ascii_hexdigit());
        let printable = passphrase.bytes().all(|b| (0x20..0x7f).contains(&b));
        let passphrase_ok = printable && (8..=63).contains(&passphrase.len());
        if !(hex_key || passphrase_ok) {
            return Err(Error::Invalid(format!(
                "Wi-Fi password: WPA2 takes 8 to 63 printable ASCII characters (this one has {} \
                 characters{})",
                passphrase.chars().count(),
                if printable {
                    ""
                } else {
                    ", not all printable ASCII"
                }
            )));
        }
        let upper = country.to_ascii_uppercase();
        if upper.len() != 2 || !COUNTRIES.split_whitespace().any(|c| c == upper) {
            return Err(Error::Invalid(format!(
                "Wi-Fi country {country:?}: give the two-letter ISO 3166 code of the country the \
                 Pis are in (GB, DE, US, …); it sets which channels and power the radio may use"
            )));
        }
        Ok(Wifi {
            ssid: ssid.to_string(),
            passphrase: passphrase.to_string(),
            country: upper,
            hidden,
        })
    }

    /// The WPA pre-shared key, 64 hex digits.
    pub fn psk(&self) -> String {
        if self.passphrase.len() == 64 {
            return self.passphrase.to_ascii_lowercase();
        }
        let mut key = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<sha1::Sha1>(
            self.passphrase.as_bytes(),
            self.ssid.as_bytes(),
            4096,
            &mut key,
        );
        key.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The token that sets the regulatory domain on `cmdline.txt`.
    pub fn cmdline_token(&self) -> String {
        format!("cfg80211.ieee80211_regdom={}", self.country)
    }

    /// A NetworkManager keyfile for the network, as Imager writes one (`/etc/NetworkManager/
    /// system-connections/`, root, mode 0600, or NetworkManager ignores it). The UUID is derived from
    /// the SSID so that a rebuilt image keeps the same connection.
    pub fn nm_profile(&self) -> String {
        format!(
            "# Written by herd.\n[connection]\nid=herd-wifi\nuuid={}\ntype=wifi\nautoconnect=true\n\n\
             [wifi]\nmode=infrastructure\nssid={}\nhidden={}\n\n\
             [wifi-security]\nkey-mgmt=wpa-psk\npsk={}\n\n\
             [ipv4]\nmethod=auto\n\n[ipv6]\naddr-gen-mode=default\nmethod=auto\n",
            self.uuid(),
            keyfile_escape(&self.ssid),
            self.hidden,
            self.psk()
        )
    }

    /// cloud-init's NoCloud `network-config` (netplan v2) for the network, with Ethernet kept on DHCP
    /// beside it; both `optional`, so boot does not wait for the one that is absent. Both take IPv6 too:
    /// netplan writes `ipv6.method=ignore` for an interface without `dhcp6` or an IPv6 address (netplan
    /// `src/nm.c` lines 947-995, commit e9dd90a9), and the network-config replaces cloud-init's
    /// fallback, which has it (`dhcp4` and `dhcp6`).
    pub fn network_config(&self) -> String {
        let ssid = serde_json::to_string(&self.ssid).expect("a string");
        format!(
            "# Written by herd: Ethernet and Wi-Fi, both by DHCP and IPv6 autoconfiguration.\nnetwork:\n  \
             version: 2\n  ethernets:\n    eth0:\n      dhcp4: true\n      dhcp6: true\n      \
             optional: true\n  wifis:\n    wlan0:\n      dhcp4: true\n      dhcp6: true\n      \
             optional: true\n      \
             regulatory-domain: \"{}\"\n      access-points:\n        {ssid}:\n          \
             password: \"{}\"\n          hidden: {}\n",
            self.country,
            self.psk(),
            self.hidden
        )
    }

    fn uuid(&self) -> String {
        use sha2::{Digest, Sha256};
        let h = Sha256::digest(format!("herd-wifi:{}", self.ssid));
        let mut b: [u8; 16] = h[..16].try_into().expect("16 bytes");
        b[6] = (b[6] & 0x0f) | 0x50; // version 5-like: name-based
        b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
        let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
        format!(
            "{}-{}-{}-{}-{}",
            &hex[..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..]
        )
    }
}

/// A keyfile value: NetworkManager's keyfiles are GKeyFile, where `\`, leading spaces, newlines and `;`
/// need escapes.
fn keyfile_escape(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        match c {
            '\\' => out.push_str("\\\\"),
            ';' => out.push_str("\\;"),
            ' ' if i == 0 => out.push_str("\\s"),
            c => out.push(c),
        }
    }
    out
}

/// NetworkManager's state with the Wi-Fi radio switched on (Raspberry Pi OS ships it off until a country
/// is set).
pub const NM_STATE: &str =
    "[main]\nNetworkingEnabled=true\nWirelessEnabled=true\nWWANEnabled=true\n";
pub const NM_STATE_PATH: &str = "/var/lib/NetworkManager/NetworkManager.state";

/// How the radio gets unblocked, wherever and whenever it appears: Raspberry Pi OS keeps radios
/// soft-blocked until a country is set (the kernel's `rfkill.default_state=0`, and systemd-rfkill
/// restoring a blocked state saved in the image for the Pis' own Wi-Fi). A udev rule unblocks every
/// Wi-Fi radio as it appears (a Pi's loads its firmware late in boot, after any unit would have run);
/// systemd-rfkill then restores the state saved at the last shutdown, so a radio the user blocked stays
/// blocked.
pub const UNBLOCK_RULE_PATH: &str = "/etc/udev/rules.d/80-herd-wifi-unblock.rules";
pub const UNBLOCK_RULE: &str =
    "# Written by herd: Wi-Fi was configured when the image was built.\n\
ACTION==\"add\", SUBSYSTEM==\"rfkill\", ATTR{type}==\"wlan\", ATTR{soft}=\"0\"\n";

/// Once (on the first boot that finds Wi-Fi configured), before systemd-rfkill restores anything, the
/// blocked states the image carries are cleared (what `raspi-config` does when it sets a country); a
/// radio blocked later stays blocked.
pub const UNBLOCK_UNIT_PATH: &str = "/etc/systemd/system/herd-wifi-unblock.service";
pub const UNBLOCK_UNIT: &str = "# Written by herd: Wi-Fi was configured when the image was built.\n\
[Unit]\nDescription=Clear the Wi-Fi radio's saved blocked state (herd, once)\n\
DefaultDependencies=no\nConditionPathExists=!/var/lib/herd-wifi/unblocked\nAfter=local-fs.target\n\
Before=systemd-rfkill.service sysinit.target NetworkManager.service\n\n[Service]\nType=oneshot\n\
ExecStart=/bin/sh -c 'for f in /var/lib/systemd/rfkill/*:wlan; do [ -f \"$f\" ] && echo 0 > \"$f\"; done; \
for r in /sys/class/rfkill/rfkill*; do [ \"$(cat \"$r/type\" 2>/dev/null)\" = wlan ] && echo 0 > \"$r/soft\"; done; \
mkdir -p /var/lib/herd-wifi && touch /var/lib/herd-wifi/unblocked'\n\n\
[Install]\nWantedBy=sysinit.target\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_psk_is_wpa_passphrase_s() {
        // IEEE 802.11i-2004, H.4.1 test vectors.
        let w = Wifi::new("IEEE", "password", "gb", false).unwrap();
        assert_eq!(
            w.psk(),
            "f42c6fc52df0ebef9ebb4b90b38a5f902e83fe1b135a70e23aed762e9710a12e"
        );
        let w = Wifi::new("ThisIsASSID", "ThisIsAPassword", "DE", false).unwrap();
        assert_eq!(
            w.psk(),
            "0dc0d6eb90555ed6419756b9a15ec3e3209b63df707dd508d14581f8982721af"
        );
        assert_eq!(w.country, "DE");
        assert!(!w.nm_profile().contains("ThisIsAPassword"));
        assert!(!w.network_config().contains("ThisIsAPassword"));
        assert!(!format!("{w:?}").contains("ThisIsAPassword"));
    }

    #[test]
    fn bad_networks_are_named() {
        let e = |s: &str, p: &str, c: &str| Wifi::new(s, p, c, false).unwrap_err().to_string();
        assert!(e("", "password", "GB").contains("SSID"));
        assert!(e(&"x".repeat(33), "password", "GB").contains("SSID"));
        assert!(e("net", "short", "GB").contains("8 to 63"));
        assert!(e("net", &"p".repeat(64), "GB").contains("8 to 63"));
        assert!(e("net", "pässwörd1", "GB").contains("printable ASCII"));
        assert!(e("net", "password", "XX").contains("two-letter"));
        assert!(e("net", "password", "GBR").contains("two-letter"));
        assert!(Wifi::new("net", &"a".repeat(64), "us", true).is_ok());
    }

    #[test]
    fn profiles_carry_the_network() {
        let w = Wifi::new("lab net; 2", "correct horse", "FR", true).unwrap();
        let p = w.nm_profile();
        assert!(
            p.contains("ssid=lab net\\; 2\n") && p.contains("hidden=true\n"),
            "{p}"
        );
        assert!(p.contains(&format!("psk={}\n", w.psk())));
        let n = w.network_config();
        assert!(
            n.contains("\"lab net; 2\":") && n.contains("regulatory-domain: \"FR\""),
            "{n}"
        );
        assert_eq!(w.cmdline_token(), "cfg80211.ieee80211_regdom=FR");
        assert_eq!(
            w.uuid(),
            Wifi::new("lab net; 2", "other pass", "DE", false)
                .unwrap()
                .uuid()
        );
    }
}
