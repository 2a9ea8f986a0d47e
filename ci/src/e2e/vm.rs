//! The virtual machines of the boot-and-join harness: a kernel and initrd taken out of an image, a sparse
//! copy of its disk, QEMU (`-M virt`, virtio disk and NIC on a tap of the LAN's bridge, serial console to a
//! file, a QMP socket for the power button), dnsmasq for their addresses, and reading their consoles.

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use herd_image::Arch;

use crate::netns::Lan;

/// One virtual machine.
pub(super) struct Vm {
    pub(super) name: String,
    pub(super) ip: Ipv4Addr,
    pub(super) child: Child,
    pub(super) console: PathBuf,
    pub(super) qmp: PathBuf,
    pub(super) started: Instant,
    pub(super) up: Option<Duration>,
    pub(super) joined: Option<Duration>,
    pub(super) id: String,
    pub(super) hostname: String,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A kernel and initrd taken out of an image's root file system.
pub(super) struct Boot {
    pub(super) kernel: PathBuf,
    pub(super) initrd: PathBuf,
}

pub(super) fn extract_boot(image: &Path, out: &Path, tag: &str) -> anyhow::Result<Boot> {
    let img = herd_image::Image::open(image)?;
    let root = img.root();
    let find = |names: &[&str]| -> anyhow::Result<Vec<u8>> {
        for n in names {
            if root.exists(n) {
                return root
                    .read_resolved(n)
                    .with_context(|| format!("{}: cannot read {n}", image.display()));
            }
        }
        bail!(
            "{}: none of {names:?} in the root file system",
            image.display()
        )
    };
    let kernel = out.join(format!("{tag}-vmlinuz"));
    let initrd = out.join(format!("{tag}-initrd.img"));
    std::fs::write(&kernel, find(&["/vmlinuz", "/boot/vmlinuz"])?)?;
    std::fs::write(&initrd, find(&["/initrd.img", "/boot/initrd.img"])?)?;
    Ok(Boot { kernel, initrd })
}

/// Copies `image` for one VM (sparse, or a reflink where the file system can).
pub(super) fn disk_copy(image: &Path, to: &Path) -> anyhow::Result<()> {
    let status = Command::new("cp")
        .args(["--sparse=always", "--reflink=auto"])
        .arg(image)
        .arg(to)
        .status()
        .context("cannot run cp")?;
    if !status.success() {
        bail!("cannot copy {} to {}", image.display(), to.display());
    }
    Ok(())
}

pub(super) fn mac(i: usize) -> String {
    format!("52:54:00:e2:e0:{i:02x}")
}

pub(super) fn vm_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 99, 0, 10 + i as u8)
}

/// The kernel command line a Pi's firmware would pass: the card's `cmdline.txt` (with what herd baked
/// there, such as the Wi-Fi regulatory domain), its consoles left out for the VM's serial port.
fn card_cmdline(disk: &Path) -> anyhow::Result<String> {
    let img = herd_image::Image::open(disk)?;
    let text = img
        .boot()?
        .read("cmdline.txt")
        .with_context(|| format!("{}: no cmdline.txt on the boot partition", disk.display()))?;
    let text = String::from_utf8_lossy(&text);
    let tokens: Vec<&str> = text
        .split_whitespace()
        .filter(|t| !t.starts_with("console="))
        .collect();
    if !tokens.iter().any(|t| t.starts_with("root=")) {
        bail!("{}: cmdline.txt has no root=: {text:?}", disk.display());
    }
    Ok(tokens.join(" "))
}

#[allow(clippy::too_many_arguments)]
pub(super) fn start_vm(
    lan: &Lan,
    i: usize,
    arch: Arch,
    boot: &Boot,
    disk: &Path,
    out: &Path,
    name: &str,
) -> anyhow::Result<Vm> {
    let tap = format!("e2e{i}");
    lan.add_tap(&tap)?;
    let console = out.join(format!("{name}-console.log"));
    let qmp = out.join(format!("{name}.qmp"));
    let _ = std::fs::remove_file(&qmp);
    let (program, machine, cpu, serial) = match arch {
        Arch::Amd64 => bail!("{name}: the harness boots Pi images (arm64, armhf) only"),
        Arch::Arm64 => ("qemu-system-aarch64", "virt", "cortex-a72", "ttyAMA0"),
        Arch::Armhf => (
            "qemu-system-arm",
            "virt,highmem=off",
            "cortex-a15",
            "ttyAMA0",
        ),
    };
    let mut c = lan.switch_command(program);
    c.args(["-M", machine, "-cpu", cpu, "-smp", "1", "-m", "512"])
        .args(["-display", "none", "-no-reboot", "-monitor", "none"])
        .arg("-kernel")
        .arg(&boot.kernel)
        .arg("-initrd")
        .arg(&boot.initrd)
        .arg("-append")
        // A guest emulated by TCG beside two others on two cores runs far slower than a Pi: udev's
        // coldplug took 124 s in one fresh-clone run, and systemd gives up on a device after its default
        // 90 s; the boot partition is not "nofail" (as on Raspberry Pi OS), so that boot would end in
        // emergency mode. The card's own command line is unchanged; only the VM waits longer for
        // devices: systemd 254+ (Trixie) by the device timeout, Bookworm's 252 by the start timeout,
        // which its device units take as theirs.
        .arg(format!(
            "{} console={serial} systemd.journald.forward_to_console=1 \
             systemd.mask=serial-getty@{serial}.service systemd.default_device_timeout_sec=600 \
             systemd.default_timeout_start_sec=600",
            card_cmdline(disk)?
        ))
        .arg("-drive")
        .arg(format!(
            "file={},if=none,format=raw,id=disk,cache=unsafe",
            disk.display()
        ))
        .args(["-device", "virtio-blk-pci,drive=disk"])
        .arg("-netdev")
        .arg(format!("tap,id=net,ifname={tap},script=no,downscript=no"))
        .arg("-device")
        .arg(format!("virtio-net-pci,netdev=net,mac={}", mac(i)))
        .args(["-device", "virtio-rng-pci"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = c
        .spawn()
        .with_context(|| format!("cannot start {program} (apt-get install qemu-system-arm)"))?;
    Ok(Vm {
        name: name.to_string(),
        ip: vm_ip(i),
        child,
        console,
        qmp,
        started: Instant::now(),
        up: None,
        joined: None,
        id: String::new(),
        hostname: String::new(),
    })
}

/// Starts dnsmasq on the LAN's host 0: every VM gets its address by its MAC, no router, no DNS.
pub(super) fn start_dhcp(lan: &Lan, out: &Path, vms: usize) -> anyhow::Result<Child> {
    let mut c = lan.command(0, "dnsmasq");
    c.args([
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--port=0",
        "--interface=eth0",
        "--bind-interfaces",
        "--dhcp-range=10.99.0.100,10.99.0.199,255.255.255.0,1h",
        "--dhcp-option=3",
        "--dhcp-option=6",
        "--log-dhcp",
    ])
    .arg(format!(
        "--dhcp-leasefile={}",
        out.join("dnsmasq.leases").display()
    ))
    .arg(format!(
        "--log-facility={}",
        out.join("dnsmasq.log").display()
    ));
    for i in 0..vms {
        c.arg(format!("--dhcp-host={},{}", mac(i), vm_ip(i)));
    }
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start dnsmasq (apt-get install dnsmasq-base)")
}

/// Asks QEMU to press the power button (an ACPI / GPIO power-off the guest handles as a clean shutdown).
pub(super) fn power_button(qmp: &Path) -> anyhow::Result<()> {
    qmp_command(qmp, "system_powerdown")
}

/// Stops the VM at once, as pulling its power cable would: QEMU quits, the guest flushes nothing.
pub(super) fn power_cut(qmp: &Path) -> anyhow::Result<()> {
    qmp_command(qmp, "quit")
}

/// Runs one QMP command (after the capabilities handshake).
fn qmp_command(qmp: &Path, command: &str) -> anyhow::Result<()> {
    let stream = UnixStream::connect(qmp)
        .with_context(|| format!("cannot connect to QMP at {}", qmp.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut w = stream;
    let mut line = String::new();
    reader.read_line(&mut line)?; // greeting
    for cmd in ["qmp_capabilities", command] {
        writeln!(w, "{{\"execute\":\"{cmd}\"}}")?;
        loop {
            line.clear();
            let n = match reader.read_line(&mut line) {
                Ok(n) => n,
                // QEMU may close the socket before it answers `quit`.
                Err(_) if cmd == "quit" => 0,
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                if cmd == "quit" {
                    break;
                }
                bail!("QMP closed during {cmd}");
            }
            if line.contains("\"return\"") {
                break;
            }
            if line.contains("\"error\"") {
                bail!("QMP {cmd}: {}", line.trim());
            }
        }
    }
    Ok(())
}

/// The last line of the VM's serial console (what it was doing when it went quiet).
pub(super) fn console_tail(vm: &Vm) -> String {
    let text = std::fs::read(&vm.console).unwrap_or_default();
    String::from_utf8_lossy(&text)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .chars()
        .take(160)
        .collect()
}

/// Whether the VM's serial console (colours stripped) shows `needle`. The harness boots with the journal
/// forwarded to the console and no getty on it, so systemd's own "Started …" lines land there.
pub(super) fn console_has(vm: &Vm, needle: &str) -> bool {
    let Ok(bytes) = std::fs::read(&vm.console) else {
        return false;
    };
    let text = String::from_utf8_lossy(&bytes);
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters final-letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain.contains(needle)
}

/// Fails if the VM's QEMU has exited, with what it said.
pub(super) fn check_running(vm: &mut Vm) -> anyhow::Result<()> {
    if let Some(status) = vm.child.try_wait()? {
        let mut err = String::new();
        if let Some(mut e) = vm.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        bail!("{}: QEMU exited ({status}): {}", vm.name, err.trim());
    }
    Ok(())
}
