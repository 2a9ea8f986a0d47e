//! The release artifact that `herd upgrade` spreads over a cluster: the agent binary of each CPU family,
//! its size and SHA-256, the version and the cluster's name, in a manifest signed with the cluster's
//! signing key (Ed25519; its private half stays in `secrets/CLUSTER.toml` on the operator's machine, its
//! public half is in every card's configuration).
//!
//! Layout: `HERDREL1`, the manifest's length (u32, little-endian), the manifest (JSON), the 64-byte
//! signature of everything before it, then the binaries one after the other in the manifest's order.
//! A card takes its binary only after every check passed, in this order: format and lengths, signature,
//! cluster, version (newer than the one it runs unless the operator signed a downgrade permit), size and
//! hash. Nothing of an artifact is trusted before its signature is: the manifest is parsed only once it
//! verified.
//!
//! A downgrade permit is the operator's word, signed with the same key, that cards of the cluster
//! running one version may install one artifact (by its SHA-256) though it is older: nothing a card's
//! agent or a token holder can write makes one.
//!
//! A crate of its own, small and without I/O beyond reading the system's randomness, because three
//! others need the same facts: the agent checks artifacts, `cargo xtask release` packs them, and the
//! image pipeline builds the agent of a CPU family ([`Arch`]) for its base. The manifest of the packages
//! an image carries for its first boot ([`packages`]) is here for the same reason.

pub mod packages;

use std::cmp::Ordering;
use std::fmt;

use base64::Engine;
use ed25519_dalek::Signer;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The first bytes of every artifact (and the format's version).
pub const MAGIC: &[u8; 8] = b"HERDREL1";
/// The largest manifest read: a few binaries' entries take a few hundred bytes.
pub const MAX_MANIFEST: usize = 16 * 1024;
/// The largest binary an artifact may carry (today's agent: about 3 MB).
pub const MAX_BINARY: u64 = 64 << 20;
const SIGNATURE_LEN: usize = 64;
const HEADER_LEN: usize = MAGIC.len() + 4;

/// A CPU family, named as Debian names it (the images' `--arch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// 64-bit ARM: Pi 3, 4, 5, Zero 2 W on a 64-bit OS.
    Arm64,
    /// 32-bit ARM (ARMv6 code, so every Pi): Raspberry Pi OS 32-bit.
    Armhf,
    /// x86-64: the operator's laptop and the test machines.
    Amd64,
}

impl Arch {
    /// The family of the machine this binary runs on.
    pub fn this_machine() -> Option<Arch> {
        Arch::from_rust_arch(std::env::consts::ARCH)
    }

    /// The family of Rust's name for a CPU (`std::env::consts::ARCH`, what agents report in `facts.arch`).
    pub fn from_rust_arch(rust_arch: &str) -> Option<Arch> {
        match rust_arch {
            "aarch64" => Some(Arch::Arm64),
            "arm" => Some(Arch::Armhf),
            "x86_64" => Some(Arch::Amd64),
            _ => None,
        }
    }

    /// Debian's name (the images' `--arch`, the artifact's key).
    pub fn name(self) -> &'static str {
        match self {
            Arch::Arm64 => "arm64",
            Arch::Armhf => "armhf",
            Arch::Amd64 => "amd64",
        }
    }

    /// The Rust target the agent for this family is built for. All are static musl builds, so the agent
    /// depends on no C library of the card (Raspberry Pi OS Bullseye has glibc 2.31, Bookworm 2.36,
    /// Trixie 2.41). The 32-bit one is ARMv6 with VFPv2, the baseline of Raspberry Pi OS's armhf
    /// (Raspbian) userland: it runs on a Pi Zero, Zero W and Pi 1 as well as on every later board.
    pub fn agent_target(self) -> &'static str {
        match self {
            Arch::Arm64 => "aarch64-unknown-linux-musl",
            Arch::Armhf => "arm-unknown-linux-musleabihf",
            Arch::Amd64 => "x86_64-unknown-linux-musl",
        }
    }

    /// The families a Raspberry Pi runs (what an image's base can be).
    pub const PI: [Arch; 2] = [Arch::Arm64, Arch::Armhf];
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What an artifact says of itself, signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub cluster: String,
    pub version: String,
    pub binaries: Vec<Binary>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binary {
    pub arch: Arch,
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
}

/// Why an artifact was refused. Every message names what is wrong; none carries a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("not a herd release artifact (it does not start with {:?})", std::str::from_utf8(MAGIC).unwrap_or(""))]
    NotAnArtifact,
    #[error("the artifact is cut short: {0}")]
    Truncated(&'static str),
    #[error("the artifact's manifest is {0} bytes, more than {MAX_MANIFEST}")]
    ManifestTooLarge(usize),
    #[error("the artifact is not signed by this cluster's signing key")]
    BadSignature,
    #[error("the artifact's manifest is not valid: {0}")]
    BadManifest(String),
    #[error("the artifact is for cluster {offered:?}, this is cluster {ours:?}")]
    WrongCluster { offered: String, ours: String },
    #[error("the artifact's version {offered} is older than the running {running} (allow it with --allow-downgrade, which signs a permit with the key in --secrets)")]
    Downgrade { offered: String, running: String },
    #[error("the downgrade permit is not signed by this cluster's signing key for this artifact and a card running {running}")]
    BadPermit { running: String },
    #[error("the artifact's version {0} is the one running: nothing to do")]
    SameVersion(String),
    #[error("the artifact has no binary for {0}")]
    NoBinary(Arch),
    #[error("the artifact's {arch} binary does not match its SHA-256 (corrupted or altered)")]
    HashMismatch { arch: Arch },
    #[error("the artifact is {actual} bytes, its manifest says {expected}")]
    WrongLength { expected: u64, actual: u64 },
}

/// The cluster's signing key (its private half). `Debug` shows the public half only.
pub struct SigningKey(ed25519_dalek::SigningKey);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey(public {})", self.public().to_base64())
    }
}

impl SigningKey {
    /// A new key from 32 bytes of the operating system's randomness.
    pub fn generate() -> std::io::Result<Self> {
        let mut seed = [0u8; 32];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut seed)?;
        Ok(SigningKey(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }

    /// Reads the base64 seed kept in a secrets file.
    pub fn from_base64(text: &str) -> Result<Self, String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| "the signing key is not base64".to_string())?;
        let seed: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "the signing key is not 32 bytes".to_string())?;
        Ok(SigningKey(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }

    /// The base64 seed, for the secrets file only.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0.to_bytes())
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// A downgrade permit: cards of `cluster` running `running` may install the artifact `sha256`
    /// though it is older (base64 of the signature).
    pub fn permit_downgrade(&self, cluster: &str, sha256: &str, running: &str) -> String {
        let signature = self.0.sign(&permit_text(cluster, sha256, running));
        base64::engine::general_purpose::STANDARD.encode(signature.to_bytes())
    }
}

/// What a downgrade permit signs: a text no artifact's signed part can be (those start with [`MAGIC`]).
fn permit_text(cluster: &str, sha256: &str, running: &str) -> Vec<u8> {
    format!("herd downgrade permit 1\ncluster {cluster}\nartifact {sha256}\nrunning {running}\n")
        .into_bytes()
}

/// The public half, baked into every card's configuration.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(ed25519_dalek::VerifyingKey);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl PublicKey {
    pub fn from_base64(text: &str) -> Result<Self, String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| format!("public key {text:?} is not base64"))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| format!("public key {text:?} is not 32 bytes"))?;
        ed25519_dalek::VerifyingKey::from_bytes(&bytes)
            .map(PublicKey)
            .map_err(|_| format!("public key {text:?} is not an Ed25519 key"))
    }

    pub fn to_base64(self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0.as_bytes())
    }
}

/// Builds a signed artifact of `binaries` (at most one per CPU family).
pub fn pack(
    key: &SigningKey,
    cluster: &str,
    version: &str,
    binaries: &[(Arch, &[u8])],
) -> Result<Vec<u8>, String> {
    check_version_text(version)?;
    let mut entries = Vec::new();
    for (arch, bytes) in binaries {
        if entries.iter().any(|b: &Binary| b.arch == *arch) {
            return Err(format!("two binaries for {arch}"));
        }
        if bytes.len() as u64 > MAX_BINARY {
            return Err(format!(
                "the {arch} binary is {} bytes, more than {MAX_BINARY}",
                bytes.len()
            ));
        }
        entries.push(Binary {
            arch: *arch,
            size: bytes.len() as u64,
            sha256: hex(&Sha256::digest(bytes)),
        });
    }
    if entries.is_empty() {
        return Err("an artifact needs at least one binary".into());
    }
    let manifest = serde_json::to_vec(&Manifest {
        cluster: cluster.to_string(),
        version: version.to_string(),
        binaries: entries,
    })
    .map_err(|e| e.to_string())?;
    if manifest.len() > MAX_MANIFEST {
        return Err(format!(
            "the manifest is {} bytes, more than {MAX_MANIFEST}",
            manifest.len()
        ));
    }
    let mut out = Vec::with_capacity(
        HEADER_LEN
            + manifest.len()
            + SIGNATURE_LEN
            + binaries.iter().map(|b| b.1.len()).sum::<usize>(),
    );
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(manifest.len() as u32).to_le_bytes());
    out.extend_from_slice(&manifest);
    let signature = key.0.sign(&out);
    out.extend_from_slice(&signature.to_bytes());
    for (_, bytes) in binaries {
        out.extend_from_slice(bytes);
    }
    Ok(out)
}

/// An artifact whose format, signature, cluster and length were checked.
#[derive(Debug)]
pub struct Artifact<'a> {
    pub manifest: Manifest,
    /// Where each binary starts in the artifact, in the manifest's order.
    offsets: Vec<usize>,
    bytes: &'a [u8],
    /// The key it was checked with, which also checks a downgrade permit.
    key: PublicKey,
}

/// The manifest's length, once the magic and the length field checked out.
fn manifest_len(bytes: &[u8]) -> Result<usize, Refusal> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(Refusal::NotAnArtifact);
    }
    if bytes.len() < HEADER_LEN {
        return Err(Refusal::Truncated("no manifest length"));
    }
    let len =
        u32::from_le_bytes(bytes[MAGIC.len()..HEADER_LEN].try_into().expect("4 bytes")) as usize;
    if len > MAX_MANIFEST {
        return Err(Refusal::ManifestTooLarge(len));
    }
    Ok(len)
}

/// The manifest of an artifact, unverified: what the operator's CLI shows before any node checked it.
pub fn peek(bytes: &[u8]) -> Result<Manifest, Refusal> {
    let len = manifest_len(bytes)?;
    let manifest = bytes
        .get(HEADER_LEN..HEADER_LEN + len)
        .ok_or(Refusal::Truncated("no room for the manifest"))?;
    serde_json::from_slice(manifest).map_err(|e| Refusal::BadManifest(e.to_string()))
}

/// Checks an artifact received from anyone: its format, that `key` signed it, that it is for `cluster`,
/// and that its length is what the manifest says. The binaries are checked by [`Artifact::binary`].
pub fn open<'a>(bytes: &'a [u8], key: &PublicKey, cluster: &str) -> Result<Artifact<'a>, Refusal> {
    let len = manifest_len(bytes)?;
    let signed_end = HEADER_LEN + len;
    if bytes.len() < signed_end + SIGNATURE_LEN {
        return Err(Refusal::Truncated(
            "no room for the manifest and its signature",
        ));
    }
    let signature = ed25519_dalek::Signature::from_bytes(
        bytes[signed_end..signed_end + SIGNATURE_LEN]
            .try_into()
            .expect("64 bytes"),
    );
    key.0
        .verify_strict(&bytes[..signed_end], &signature)
        .map_err(|_| Refusal::BadSignature)?;
    // Signed by the cluster: only now is the manifest read.
    let manifest: Manifest = serde_json::from_slice(&bytes[HEADER_LEN..signed_end])
        .map_err(|e| Refusal::BadManifest(e.to_string()))?;
    check_version_text(&manifest.version).map_err(Refusal::BadManifest)?;
    if manifest.cluster != cluster {
        return Err(Refusal::WrongCluster {
            offered: manifest.cluster,
            ours: cluster.to_string(),
        });
    }
    let mut offsets = Vec::with_capacity(manifest.binaries.len());
    let mut at = (signed_end + SIGNATURE_LEN) as u64;
    for (i, b) in manifest.binaries.iter().enumerate() {
        if manifest.binaries[..i].iter().any(|o| o.arch == b.arch) {
            return Err(Refusal::BadManifest(format!("two binaries for {}", b.arch)));
        }
        if b.size > MAX_BINARY {
            return Err(Refusal::BadManifest(format!(
                "the {} binary is {} bytes, more than {MAX_BINARY}",
                b.arch, b.size
            )));
        }
        if b.sha256.len() != 64
            || !b
                .sha256
                .bytes()
                .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(Refusal::BadManifest(format!(
                "the {} binary's sha256 is not 64 hex digits",
                b.arch
            )));
        }
        offsets.push(at as usize);
        at += b.size;
    }
    if at != bytes.len() as u64 {
        return Err(Refusal::WrongLength {
            expected: at,
            actual: bytes.len() as u64,
        });
    }
    Ok(Artifact {
        manifest,
        offsets,
        bytes,
        key: *key,
    })
}

impl<'a> Artifact<'a> {
    /// The binary for `arch`, once its hash matched.
    pub fn binary(&self, arch: Arch) -> Result<&'a [u8], Refusal> {
        let (i, b) = self
            .manifest
            .binaries
            .iter()
            .enumerate()
            .find(|(_, b)| b.arch == arch)
            .ok_or(Refusal::NoBinary(arch))?;
        let start = self.offsets[i];
        let bytes = &self.bytes[start..start + b.size as usize];
        if hex(&Sha256::digest(bytes)) != b.sha256 {
            return Err(Refusal::HashMismatch { arch });
        }
        Ok(bytes)
    }

    /// Checks every binary's hash (a node keeps and serves artifacts for CPU families other than its own).
    pub fn check_binaries(&self) -> Result<(), Refusal> {
        for b in &self.manifest.binaries {
            self.binary(b.arch)?;
        }
        Ok(())
    }

    /// Whether a card running `running` takes this artifact's version: a newer one, or an older one
    /// with a `permit` ([`SigningKey::permit_downgrade`]) for this artifact and `running`.
    pub fn check_version(&self, running: &str, permit: Option<&str>) -> Result<(), Refusal> {
        let offered = &self.manifest.version;
        match (compare_versions(offered, running), permit) {
            (Ordering::Greater, _) => Ok(()),
            (Ordering::Equal, _) => Err(Refusal::SameVersion(offered.clone())),
            (Ordering::Less, None) => Err(Refusal::Downgrade {
                offered: offered.clone(),
                running: running.to_string(),
            }),
            (Ordering::Less, Some(permit)) => {
                let text = permit_text(&self.manifest.cluster, &sha256_hex(self.bytes), running);
                let signature = base64::engine::general_purpose::STANDARD
                    .decode(permit)
                    .ok()
                    .and_then(|b| <[u8; SIGNATURE_LEN]>::try_from(b).ok())
                    .map(|b| ed25519_dalek::Signature::from_bytes(&b));
                match signature {
                    Some(sig) if self.key.0.verify_strict(&text, &sig).is_ok() => Ok(()),
                    _ => Err(Refusal::BadPermit {
                        running: running.to_string(),
                    }),
                }
            }
        }
    }
}

/// Versions are dot-separated parts compared part by part, runs of digits as numbers (`0.10.0` > `0.9.1`,
/// `rc10` > `rc2`), with a `-suffix` (a pre-release) before the version without it and `+build`
/// metadata compared last: a build of the same code with another version string is another version.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    fn split(v: &str) -> (&str, Option<&str>, Option<&str>) {
        let (v, build) = match v.split_once('+') {
            Some((v, b)) => (v, Some(b)),
            None => (v, None),
        };
        let (core, pre) = match v.split_once('-') {
            Some((c, p)) => (c, Some(p)),
            None => (v, None),
        };
        (core, pre, build)
    }
    /// Runs of digits compare as numbers, the rest as text: `rc2` < `rc10`.
    fn natural(a: &str, b: &str) -> Ordering {
        fn runs(s: &str) -> Vec<&str> {
            let mut out = Vec::new();
            let mut start = 0;
            let b = s.as_bytes();
            for i in 1..=b.len() {
                if i == b.len() || b[i].is_ascii_digit() != b[i - 1].is_ascii_digit() {
                    out.push(&s[start..i]);
                    start = i;
                }
            }
            out
        }
        let (x, y) = (runs(a), runs(b));
        for (p, q) in x.iter().zip(&y) {
            let o = match (p.parse::<u128>(), q.parse::<u128>()) {
                (Ok(m), Ok(n)) => m.cmp(&n),
                _ => p.cmp(q),
            };
            if o != Ordering::Equal {
                return o;
            }
        }
        x.len().cmp(&y.len())
    }
    fn parts(a: &str, b: &str) -> Ordering {
        let (mut x, mut y) = (a.split('.'), b.split('.'));
        loop {
            match (x.next(), y.next()) {
                (None, None) => return Ordering::Equal,
                (None, Some(_)) => return Ordering::Less,
                (Some(_), None) => return Ordering::Greater,
                (Some(p), Some(q)) => {
                    let o = natural(p, q);
                    if o != Ordering::Equal {
                        return o;
                    }
                }
            }
        }
    }
    let (ac, ap, ab) = split(a);
    let (bc, bp, bb) = split(b);
    parts(ac, bc)
        .then_with(|| match (ap, bp) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Greater,
            (Some(_), None) => Ordering::Less,
            (Some(p), Some(q)) => parts(p, q),
        })
        .then_with(|| parts(ab.unwrap_or(""), bb.unwrap_or("")))
}

/// A version is what the gossip accepts as one: 1 to 64 of a-z, A-Z, 0-9, '.', '_', '+', '-'.
pub fn check_version_text(v: &str) -> Result<(), String> {
    if v.is_empty()
        || v.len() > 64
        || !v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
    {
        return Err(format!(
            "version {v:?} must be 1 to 64 characters of a-z, A-Z, 0-9, '.', '_', '+', '-'"
        ));
    }
    Ok(())
}

/// The SHA-256 of `bytes` in lower-case hex: how artifacts and binaries are named.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey(ed25519_dalek::SigningKey::from_bytes(&[seed; 32]))
    }

    fn sample() -> (SigningKey, Vec<u8>) {
        let k = key(7);
        let a = pack(
            &k,
            "pis",
            "0.2.0",
            &[
                (Arch::Arm64, b"arm64 agent"),
                (Arch::Armhf, b"armhf agent!"),
            ],
        )
        .unwrap();
        (k, a)
    }

    #[test]
    fn a_packed_artifact_opens_and_gives_each_binary() {
        let (k, a) = sample();
        let art = open(&a, &k.public(), "pis").unwrap();
        assert_eq!(art.manifest.version, "0.2.0");
        assert_eq!(art.binary(Arch::Arm64).unwrap(), b"arm64 agent");
        assert_eq!(art.binary(Arch::Armhf).unwrap(), b"armhf agent!");
        assert_eq!(art.binary(Arch::Amd64), Err(Refusal::NoBinary(Arch::Amd64)));
        art.check_version("0.1.0", None).unwrap();
    }

    #[test]
    fn another_clusters_key_is_refused() {
        let (_, a) = sample();
        assert_eq!(
            open(&a, &key(8).public(), "pis").unwrap_err(),
            Refusal::BadSignature
        );
    }

    #[test]
    fn every_altered_signed_byte_is_refused() {
        let (k, a) = sample();
        let signed_end = HEADER_LEN + u32::from_le_bytes(a[8..12].try_into().unwrap()) as usize;
        for i in 0..signed_end + SIGNATURE_LEN {
            let mut b = a.clone();
            b[i] ^= 0x01;
            let err = open(&b, &k.public(), "pis").unwrap_err();
            assert!(
                matches!(
                    err,
                    Refusal::NotAnArtifact
                        | Refusal::BadSignature
                        | Refusal::Truncated(_)
                        | Refusal::ManifestTooLarge(_)
                ),
                "byte {i}: {err:?}"
            );
        }
    }

    #[test]
    fn an_altered_binary_is_refused_by_its_hash() {
        let (k, a) = sample();
        let mut b = a.clone();
        let last = b.len() - 1;
        b[last] ^= 0x20;
        let art = open(&b, &k.public(), "pis").unwrap();
        assert_eq!(art.binary(Arch::Arm64).unwrap(), b"arm64 agent");
        assert_eq!(
            art.binary(Arch::Armhf),
            Err(Refusal::HashMismatch { arch: Arch::Armhf })
        );
    }

    #[test]
    fn cut_or_padded_artifacts_are_refused() {
        let (k, a) = sample();
        for cut in [0, 4, 8, 11, 12, 40, a.len() - 1] {
            let err = open(&a[..cut], &k.public(), "pis").unwrap_err();
            assert!(
                matches!(
                    err,
                    Refusal::NotAnArtifact | Refusal::Truncated(_) | Refusal::WrongLength { .. }
                ),
                "cut at {cut}: {err:?}"
            );
        }
        let mut padded = a.clone();
        padded.push(0);
        assert_eq!(
            open(&padded, &k.public(), "pis").unwrap_err(),
            Refusal::WrongLength {
                expected: a.len() as u64,
                actual: a.len() as u64 + 1
            }
        );
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            open(&huge, &k.public(), "pis").unwrap_err(),
            Refusal::ManifestTooLarge(u32::MAX as usize)
        );
    }

    #[test]
    fn another_cluster_is_refused() {
        let (k, a) = sample();
        assert_eq!(
            open(&a, &k.public(), "other").unwrap_err(),
            Refusal::WrongCluster {
                offered: "pis".into(),
                ours: "other".into()
            }
        );
    }

    /// A manifest the key holder signed but that breaks the format's rules (the signature proves who
    /// wrote it, not that it is sane).
    fn signed_with_manifest(k: &SigningKey, manifest: &str, tail: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&(manifest.len() as u32).to_le_bytes());
        out.extend_from_slice(manifest.as_bytes());
        let s = k.0.sign(&out);
        out.extend_from_slice(&s.to_bytes());
        out.extend_from_slice(tail);
        out
    }

    #[test]
    fn signed_but_malformed_manifests_are_refused() {
        let k = key(7);
        let h = hex(&Sha256::digest(b"x"));
        for (manifest, what) in [
            ("not json", "expected"),
            (
                r#"{"cluster":"pis","version":"1","binaries":[],"extra":1}"#,
                "unknown field",
            ),
            (
                r#"{"cluster":"pis","version":"1 rm -rf","binaries":[]}"#,
                "version",
            ),
            (
                r#"{"cluster":"pis","version":"1","binaries":[{"arch":"mips","size":1,"sha256":"00"}]}"#,
                "unknown variant",
            ),
            (
                &format!(
                    r#"{{"cluster":"pis","version":"1","binaries":[{{"arch":"arm64","size":1,"sha256":"{h}"}},{{"arch":"arm64","size":1,"sha256":"{h}"}}]}}"#
                ),
                "two binaries",
            ),
            (
                r#"{"cluster":"pis","version":"1","binaries":[{"arch":"arm64","size":1,"sha256":"XYZ"}]}"#,
                "64 hex",
            ),
            (
                &format!(
                    r#"{{"cluster":"pis","version":"1","binaries":[{{"arch":"arm64","size":99999999999,"sha256":"{h}"}}]}}"#
                ),
                "more than",
            ),
        ] {
            let a = signed_with_manifest(&k, manifest, b"xx");
            match open(&a, &k.public(), "pis") {
                Err(Refusal::BadManifest(m)) => assert!(m.contains(what), "{manifest}: {m}"),
                other => panic!("{manifest}: {other:?}"),
            }
        }
    }

    #[test]
    fn older_versions_need_the_operators_permit_for_that_artifact_and_running_version() {
        let k = key(7);
        let a = pack(&k, "pis", "0.9.1", &[(Arch::Arm64, b"x")]).unwrap();
        let sha = sha256_hex(&a);
        let art = open(&a, &k.public(), "pis").unwrap();
        assert_eq!(
            art.check_version("0.10.0", None),
            Err(Refusal::Downgrade {
                offered: "0.9.1".into(),
                running: "0.10.0".into()
            })
        );
        let msg = art.check_version("0.10.0", None).unwrap_err().to_string();
        assert!(msg.contains("--allow-downgrade"), "{msg}");
        let permit = k.permit_downgrade("pis", &sha, "0.10.0");
        art.check_version("0.10.0", Some(&permit)).unwrap();
        let refused = Err(Refusal::BadPermit {
            running: "0.10.0".into(),
        });
        // Another key, another artifact, another running version, another cluster, not a signature.
        let other = [
            key(8).permit_downgrade("pis", &sha, "0.10.0"),
            k.permit_downgrade("pis", &"0".repeat(64), "0.10.0"),
            k.permit_downgrade("pis", &sha, "0.11.0"),
            k.permit_downgrade("cows", &sha, "0.10.0"),
            "true".into(),
            String::new(),
        ];
        for p in &other {
            assert_eq!(art.check_version("0.10.0", Some(p)), refused, "{p}");
        }
        assert_eq!(
            art.check_version("0.11.0", Some(&permit)),
            Err(Refusal::BadPermit {
                running: "0.11.0".into()
            })
        );
        // A permit does not make the same version installable again.
        assert_eq!(
            art.check_version("0.9.1", Some(&permit)),
            Err(Refusal::SameVersion("0.9.1".into()))
        );
    }

    #[test]
    fn versions_compare_as_people_read_them() {
        use Ordering::*;
        for (a, b, o) in [
            ("0.10.0", "0.9.9", Greater),
            ("1.0.0", "1.0.0", Equal),
            ("1.0.0-rc1", "1.0.0", Less),
            ("1.0.0-rc2", "1.0.0-rc10", Less),
            ("1.0.0+e2e", "1.0.0", Greater),
            ("1.0", "1.0.1", Less),
            ("2", "10", Less),
        ] {
            assert_eq!(compare_versions(a, b), o, "{a} vs {b}");
            assert_eq!(compare_versions(b, a), o.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn the_public_half_is_what_another_implementation_computes() {
        // Seed [7; 32], public key as Python's `cryptography` (OpenSSL) derives it (RFC 8032).
        assert_eq!(
            key(7).public().to_base64(),
            "6kpsY+KcUgq+9VB7Ey7F+ZVHdq6+vnuSQh7qaRRG0iw="
        );
    }

    #[test]
    fn keys_round_trip_and_never_show_the_private_half() {
        let k = key(9);
        let text = k.to_base64();
        let back = SigningKey::from_base64(&text).unwrap();
        assert_eq!(back.public(), k.public());
        let shown = format!("{k:?} {:?}", k.public());
        assert!(!shown.contains(&text), "{shown}");
        assert!(shown.contains(&k.public().to_base64()));
        assert_eq!(
            PublicKey::from_base64(&k.public().to_base64()).unwrap(),
            k.public()
        );
        assert!(PublicKey::from_base64("AAAA").is_err());
        assert!(SigningKey::from_base64("not base64!").is_err());
        let err = pack(&k, "pis", "bad version", &[(Arch::Arm64, b"x")]).unwrap_err();
        assert!(err.contains("version"), "{err}");
        assert!(pack(&k, "pis", "1", &[]).is_err());
        assert!(pack(&k, "pis", "1", &[(Arch::Arm64, b"x"), (Arch::Arm64, b"y")]).is_err());
    }
}
