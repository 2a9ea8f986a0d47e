//! Every Debian package a task uses, in one place: the lists (each names every package whose files the
//! task uses, since packages are installed without their recommends), and `cargo xtask deps`, which
//! installs them all as the tasks do (the bare-root test runs it to prove the lists). How a list is
//! checked and installed is `deps`.

use crate::deps::{ensure_packages, need, need_python, Need};

/// What the image pipeline runs: debugfs for the root, xz, curl for a base by URL, openssl for the
/// password hash, and CA certificates for curl's HTTPS.
pub const IMAGE_NEEDS: &[Need] = &[
    need("debugfs", "e2fsprogs"),
    need("xz", "xz-utils"),
    need("curl", "curl"),
    need("/etc/ssl/certs/ca-certificates.crt", "ca-certificates"),
    need("openssl", "openssl"),
];

/// What installs the ARMv6 agent's linker (zig from PyPI): Debian's python3 has no venv (nor pip)
/// without python3-venv.
pub const ZIG_NEEDS: &[Need] = &[
    need("python3", "python3"),
    need_python("ensurepip", "python3-venv"),
];

/// What the bare-root test makes its Debian root with and runs in it.
pub const BARE_NEEDS: &[Need] = &[
    need("mmdebstrap", "mmdebstrap"),
    need(
        "/usr/share/keyrings/debian-archive-keyring.gpg",
        "debian-archive-keyring",
    ),
    need("git", "git"),
    need("chroot", "coreutils"),
];

/// What the multi-host tests (`ci/tests/lan.rs`) run inside network namespaces.
pub const LAN_TEST_NEEDS: &[Need] = &[
    need("ip", "iproute2"),
    need("unshare", "util-linux"),
    need("nsenter", "util-linux"),
    need("avahi-daemon", "avahi-daemon"),
    need("avahi-browse", "avahi-utils"),
    need("dbus-daemon", "dbus-daemon"),
    need("dbus-send", "dbus-bin"),
];

/// What the image tests (`image/tests/`) check their results with.
pub const IMAGE_TEST_NEEDS: &[Need] = &[
    need("debugfs", "e2fsprogs"),
    need("e2fsck", "e2fsprogs"),
    need("mke2fs", "e2fsprogs"),
    need("fsck.fat", "dosfstools"),
    need("sfdisk", "fdisk"),
    need("systemd-analyze", "systemd"),
    need("qemu-aarch64-static", "qemu-user-static"),
    need("qemu-arm-static", "qemu-user-static"),
    need("xz", "xz-utils"),
    need("curl", "curl"),
    need("openssl", "openssl"),
    need("python3", "python3"),
    // The real netplan renders the cloud-init network-config herd writes.
    need("netplan", "netplan.io"),
];

/// What the tests of the shipped agents (`ci/tests/agents.rs`) run them with.
pub const AGENT_TEST_NEEDS: &[Need] = &[
    need("readelf", "binutils"),
    need("qemu-aarch64-static", "qemu-user-static"),
    need("qemu-arm-static", "qemu-user-static"),
];

/// What the operations tests (`agent/tests/ops.rs`) run: the real Ansible.
pub const ANSIBLE_TEST_NEEDS: &[Need] = &[
    need("ansible-playbook", "ansible"),
    need("ansible-inventory", "ansible"),
];

/// What the logs test (`agent/tests/logs.rs`) reads and writes journals with: the real journalctl, and
/// systemd-journal-remote, which writes journal files from the export format without a journald.
pub const LOGS_TEST_NEEDS: &[Need] = &[
    need("journalctl", "systemd"),
    need(
        "/usr/lib/systemd/systemd-journal-remote",
        "systemd-journal-remote",
    ),
];

/// What the dashboard test (`agent/tests/dashboard.rs`) drives: a real browser.
pub const BROWSER_TEST_NEEDS: &[Need] = &[need("chromium", "chromium")];

/// What the harness runs: the VMs, their bridge and DHCP.
pub const E2E_NEEDS: &[Need] = &[
    need("qemu-system-aarch64", "qemu-system-arm"),
    need("qemu-system-arm", "qemu-system-arm"),
    need("dnsmasq", "dnsmasq-base"),
    need("ip", "iproute2"),
    need("ssh-keyscan", "openssh-client"),
    need("ssh-keygen", "openssh-client"),
    need("ssh", "openssh-client"),
    // Takes the Wi-Fi test's access point programs out of their packages.
    need("dpkg-deb", "dpkg"),
    // The ROM of the VMs' virtio NIC: a recommends of qemu-system-arm, without which QEMU refuses to
    // start a VM with that NIC.
    need("/usr/lib/ipxe/qemu/efi-virtio.rom", "ipxe-qemu"),
];

/// What building a base runs. mmdebstrap's recommends are listed where we use them: `arch-test` (it
/// refuses a foreign architecture without it), `gpg` (keyrings), and `dpkg-dev`, whose
/// `dpkg-architecture` the eatmydata hook calls.
pub const BASE_NEEDS: &[Need] = &[
    need("mmdebstrap", "mmdebstrap"),
    need("arch-test", "arch-test"),
    need("gpg", "gpg"),
    need("dpkg-architecture", "dpkg-dev"),
    need("qemu-aarch64-static", "qemu-user-static"),
    need("qemu-arm-static", "qemu-user-static"),
    need("update-binfmts", "binfmt-support"),
    need("mke2fs", "e2fsprogs"),
    need("mkfs.vfat", "dosfstools"),
    need("mcopy", "mtools"),
    need("sfdisk", "fdisk"),
    need("systemctl", "systemd"),
    need("mount", "mount"),
    need(
        "/usr/share/keyrings/debian-archive-keyring.gpg",
        "debian-archive-keyring",
    ),
];

/// The image pipeline's packages (`cargo xtask image`).
pub fn ensure_image() -> anyhow::Result<()> {
    ensure_packages("building images", IMAGE_NEEDS)
}

/// What the test suite (`cargo xtask ci`) uses, by purpose.
pub const TEST_GROUPS: &[(&str, &[Need])] = &[
    ("multi-host tests", LAN_TEST_NEEDS),
    ("dashboard test", BROWSER_TEST_NEEDS),
    ("logs test", LOGS_TEST_NEEDS),
    ("image tests", IMAGE_TEST_NEEDS),
    ("agent tests", AGENT_TEST_NEEDS),
    ("operations tests", ANSIBLE_TEST_NEEDS),
    ("boot-and-join test", E2E_NEEDS),
    ("Debian base image", BASE_NEEDS),
];

/// Every Debian package the test suite uses.
pub fn ensure_tests() -> anyhow::Result<()> {
    for (purpose, needs) in TEST_GROUPS {
        ensure_packages(purpose, needs)?;
    }
    Ok(())
}

/// `cargo xtask deps`: every Debian package that `cargo xtask ci` and `cargo xtask image` use, installed
/// as they install them.
pub fn run() -> anyhow::Result<()> {
    ensure_image()?;
    ensure_packages("the ARMv6 agent's linker (zig from PyPI)", ZIG_NEEDS)?;
    ensure_tests()?;
    println!("==> deps: every package is installed");
    Ok(())
}
