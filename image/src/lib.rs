//! Rootless editing of Raspberry Pi disk images (MBR, FAT boot partition, ext4 root partition).
//!
//! Empty on purpose: the image pipeline issue fills this crate. Nothing here claims to work yet.
