//! Keeps the e2fsprogs tools from forcing the whole image to disk.
//!
//! `debugfs` (libext2fs's unix I/O manager) calls `fsync` on the image as it opens it, to clear stale
//! write-back errors, and again as it closes it. On a freshly copied image that writes every dirty page
//! of the copy (gigabytes) to the disk before the first command runs: half a second on this CI machine's
//! SSD, many seconds on a laptop's USB disk, for nothing, since the image is a build output that the
//! kernel writes back like any other (`cp` does not wait for the disk either). A seccomp filter installed
//! in the child between `fork` and `exec` turns `fsync`, `fdatasync`, `syncfs` and `sync` into no-ops
//! that return success; every other system call is untouched.

use std::os::unix::process::CommandExt;
use std::process::Command;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

fn target() -> Option<TargetArch> {
    if cfg!(target_arch = "x86_64") {
        Some(TargetArch::x86_64)
    } else if cfg!(target_arch = "aarch64") {
        Some(TargetArch::aarch64)
    } else if cfg!(target_arch = "riscv64") {
        Some(TargetArch::riscv64)
    } else {
        None
    }
}

/// The filter, or `None` where seccomp filters cannot be built (the tool then syncs as it likes).
fn program() -> Option<BpfProgram> {
    let mut rules = std::collections::BTreeMap::new();
    for nr in [
        libc::SYS_fsync,
        libc::SYS_fdatasync,
        libc::SYS_syncfs,
        libc::SYS_sync,
    ] {
        rules.insert(nr, vec![]);
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(0),
        target()?,
    )
    .ok()?;
    filter.try_into().ok()
}

/// Makes `cmd` run without syncing. Where the filter cannot be installed the child runs unchanged.
pub fn without_sync(cmd: &mut Command) -> &mut Command {
    let Some(program) = program() else {
        return cmd;
    };
    // SAFETY: the closure runs in the forked child before exec; it only makes the prctl and seccomp
    // system calls on a program built before the fork (no allocation, no locks).
    unsafe {
        cmd.pre_exec(move || {
            // A kernel without seccomp: run the tool as it is rather than not at all.
            let _ = seccompiler::apply_filter(&program);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsync_returns_success_without_reaching_the_kernel() {
        // fsync on a descriptor that is not open fails with EBADF in the kernel; under the filter the
        // call never gets there and succeeds. Both halves run, so a filter that does nothing fails here.
        let probe = "import os\ntry:\n    os.fsync(97)\n    print('ok')\nexcept OSError as e:\n    print(e.errno)";
        let plain = Command::new("python3")
            .args(["-c", probe])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&plain.stdout).trim(),
            libc::EBADF.to_string()
        );
        let filtered = without_sync(Command::new("python3").args(["-c", probe]))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&filtered.stdout).trim(),
            "ok",
            "{filtered:?}"
        );
    }

    #[test]
    fn everything_else_still_works() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        let out = without_sync(Command::new("sh").arg("-c").arg(format!(
            "echo hello > {0} && sync {0} && cat {0}",
            f.display()
        )))
        .output()
        .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(out.stdout, b"hello\n");
    }
}
