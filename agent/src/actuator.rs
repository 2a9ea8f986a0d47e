//! The card's root side of `herd reboot|shutdown|identify|restart`: `herd-action.path` starts `herd
//! action-apply` (root, sandboxed) when the agent, which stays an unprivileged dynamic user, writes
//! `action/request.json` in its state directory. The request is taken (removed) before anything is done,
//! so a reboot cannot loop, and trusted for nothing but its action's name: a regular file, never through
//! a link, of at most 4 KiB, whose action is one of four. Reboot and shutdown ask systemd, which stops
//! herd.service first (its agent says goodbye); identify blinks the activity LED and puts it back.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::config::Config;
use crate::model::actions::{Action, ActionRequest, IDENTIFY_SECONDS};

/// Where the agent writes its request, under its state directory.
pub const REQUEST: &str = "action/request.json";
/// The kernel's LED class (sysfs).
pub const LEDS: &str = "/sys/class/leds";

/// The board's activity LED under `leds`: `ACT` (Raspberry Pi OS kernels since 6.1), else `led0`
/// (older ones); one whose `trigger` the kernel exposes.
pub fn activity_led(leds: &Path) -> Option<PathBuf> {
    ["ACT", "led0"]
        .iter()
        .map(|n| leds.join(n))
        .find(|d| d.join("trigger").is_file())
}

/// Takes the agent's request (removing it) and does what it asks.
pub fn apply(config: &Config) -> anyhow::Result<()> {
    let path = config.state_dir.join(REQUEST);
    let request = take(&path)?;
    eprintln!(
        "herd action-apply: {} asked by {} at {}",
        request.action.as_str(),
        request.from,
        request.at
    );
    let systemctl = |args: &[&str]| -> anyhow::Result<()> {
        let status = std::process::Command::new("systemctl")
            .args(args)
            .status()
            .context("cannot run systemctl")?;
        if !status.success() {
            bail!("systemctl {}: {status}", args.join(" "));
        }
        Ok(())
    };
    match request.action {
        Action::Reboot => systemctl(&["reboot"]),
        Action::Shutdown => systemctl(&["poweroff"]),
        Action::Restart => systemctl(&["restart", "herd.service"]),
        Action::Identify => match activity_led(Path::new(LEDS)) {
            Some(led) => identify(&led, Duration::from_secs(IDENTIFY_SECONDS)),
            None => bail!("this board has no activity LED ({LEDS}/ACT or led0)"),
        },
    }
}

/// Reads and removes the request at `path`.
fn take(path: &Path) -> anyhow::Result<ActionRequest> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .with_context(|| format!("cannot open {} (a link, or none)", path.display()))?;
    let meta = file.metadata()?;
    std::fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()))?;
    if !meta.is_file() {
        bail!("{}: not a regular file", path.display());
    }
    let mut text = String::new();
    file.take(4097).read_to_string(&mut text)?;
    if text.len() > 4096 {
        bail!("{}: larger than 4 KiB", path.display());
    }
    serde_json::from_str(&text)
        .with_context(|| format!("{}: not an action request", path.display()))
}

/// Blinks the LED at `led` (the kernel's `timer` trigger, 100 ms on and off) for `time`, then puts back
/// the trigger it had (and its brightness, which a `none` trigger keeps), whatever happened meanwhile.
pub fn identify(led: &Path, time: Duration) -> anyhow::Result<()> {
    let read = |f: &str| {
        std::fs::read_to_string(led.join(f))
            .with_context(|| format!("cannot read {}", led.join(f).display()))
    };
    let write = |f: &str, v: &str| {
        std::fs::write(led.join(f), v)
            .with_context(|| format!("cannot write {v:?} to {}", led.join(f).display()))
    };
    let triggers = read("trigger")?;
    // The trigger in use is the one in brackets: "none [mmc0] timer heartbeat".
    let was = triggers
        .split_whitespace()
        .find_map(|t| t.strip_prefix('[').and_then(|t| t.strip_suffix(']')))
        .unwrap_or("none")
        .to_string();
    let brightness = read("brightness").unwrap_or_default();
    let blinked = write("trigger", "timer").map(|()| {
        // The timer trigger makes these; a kernel without them blinks at its own pace.
        let _ = write("delay_on", "100");
        let _ = write("delay_off", "100");
        std::thread::sleep(time);
    });
    let restored = write("trigger", &was).and_then(|()| {
        if was == "none" && !brightness.trim().is_empty() {
            write("brightness", brightness.trim())
        } else {
            Ok(())
        }
    });
    blinked.and(restored)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn led(dir: &Path, name: &str, trigger: &str, brightness: &str) -> PathBuf {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("trigger"), trigger).unwrap();
        std::fs::write(d.join("brightness"), brightness).unwrap();
        d
    }

    #[test]
    fn the_activity_led_is_act_then_led0_and_none_elsewhere() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(activity_led(d.path()), None);
        led(d.path(), "PWR", "none [default-on]", "1");
        led(d.path(), "mmc0::", "none [mmc0]", "0");
        assert_eq!(activity_led(d.path()), None, "PWR is not the activity LED");
        let old = led(d.path(), "led0", "none [mmc0] timer", "0");
        assert_eq!(activity_led(d.path()), Some(old));
        let act = led(d.path(), "ACT", "none [mmc0] timer", "0");
        assert_eq!(activity_led(d.path()), Some(act));
    }

    #[test]
    fn identify_blinks_then_puts_the_trigger_and_brightness_back() {
        let d = tempfile::tempdir().unwrap();
        // A Pi 5's ACT as the kernel lists it (sysfs rewrites the file on write; here the last write
        // stays, which is what is checked).
        let act = led(
            d.path(),
            "ACT",
            "none timer heartbeat [mmc0] default-on",
            "0",
        );
        identify(&act, Duration::from_millis(10)).unwrap();
        assert_eq!(
            std::fs::read_to_string(act.join("trigger")).unwrap(),
            "mmc0"
        );
        assert_eq!(
            std::fs::read_to_string(act.join("delay_on")).unwrap(),
            "100"
        );
        let manual = led(d.path(), "led0", "[none] timer heartbeat", "255\n");
        std::fs::write(manual.join("brightness"), "0").unwrap();
        std::fs::write(manual.join("brightness"), "255\n").unwrap();
        identify(&manual, Duration::from_millis(10)).unwrap();
        assert_eq!(
            std::fs::read_to_string(manual.join("trigger")).unwrap(),
            "none"
        );
        assert_eq!(
            std::fs::read_to_string(manual.join("brightness")).unwrap(),
            "255"
        );
    }

    #[test]
    fn a_request_is_taken_once_and_only_as_a_small_regular_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("request.json");
        std::fs::write(&p, r#"{"action":"restart","from":"10.0.0.5","at":1}"#).unwrap();
        assert_eq!(take(&p).unwrap().action, Action::Restart);
        assert!(!p.exists(), "taken, so a reboot cannot loop");
        assert!(take(&p).is_err());
        std::fs::write(&p, r#"{"action":"format","from":"x","at":1}"#).unwrap();
        assert!(take(&p).is_err());
        assert!(!p.exists());
        let target = d.path().join("elsewhere.json");
        std::fs::write(&target, r#"{"action":"reboot","from":"x","at":1}"#).unwrap();
        std::os::unix::fs::symlink(&target, &p).unwrap();
        let e = take(&p).unwrap_err();
        assert!(format!("{e:#}").contains("a link"), "{e:#}");
        std::fs::remove_file(&p).unwrap();
        std::fs::write(
            &p,
            format!(
                "{{\"action\":\"reboot\",\"from\":\"{}\",\"at\":1}}",
                "x".repeat(5000)
            ),
        )
        .unwrap();
        assert!(format!("{:#}", take(&p).unwrap_err()).contains("4 KiB"));
    }
}
