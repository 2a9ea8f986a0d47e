//! The payload's compact binary codec: messages to bytes and back, every length checked against the
//! bytes that remain before anything is allocated, and every inconsistency an error, never a panic.

use super::*;

pub(super) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn put_digest(out: &mut Vec<u8>, d: &Digest) {
    out.extend_from_slice(&d.start.0.to_le_bytes());
    out.extend_from_slice(&d.end.0.to_le_bytes());
    put_varint(out, d.known);
    put_entries(out, &d.entries);
}

fn put_entries(out: &mut Vec<u8>, entries: &[DigestEntry]) {
    put_varint(out, entries.len() as u64);
    for e in entries {
        out.extend_from_slice(&e.node.0.to_le_bytes());
        put_varint(out, e.generation);
        put_varint(out, e.heartbeat);
        put_varint(out, e.max_version);
    }
}

fn put_deltas(out: &mut Vec<u8>, deltas: &[NodeDelta]) {
    put_varint(out, deltas.len() as u64);
    for d in deltas {
        put_delta(out, d);
    }
}

fn put_delta(out: &mut Vec<u8>, d: &NodeDelta) {
    out.extend_from_slice(&d.node.0.to_le_bytes());
    put_varint(out, d.generation);
    put_varint(out, d.heartbeat);
    put_varint(out, d.from_version);
    if d.from_version == 0 {
        // A delta from version 0 without keys is a bug of the caller: zeros name no node, and the
        // receiver refuses them.
        debug_assert!(d.keys.is_some(), "a delta from version 0 carries its keys");
        out.extend_from_slice(&d.keys.unwrap_or([0; PUBLIC_KEY_LEN]));
    }
    put_varint(out, d.kvs.len() as u64);
    for kv in &d.kvs {
        put_str(out, &kv.key);
        put_varint(out, kv.version);
        match &kv.value {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                put_str(out, v);
            }
        }
        out.extend_from_slice(&kv.signature);
    }
}

pub(super) const KIND_SYN: u8 = 1;
const KIND_ACK: u8 = 2;
const KIND_ACK2: u8 = 3;
const KIND_LEAVE: u8 = 4;
const KIND_HEARTBEAT: u8 = 5;
const KIND_PING: u8 = 6;
const KIND_PING_REQ: u8 = 7;
const KIND_PING_ACK: u8 = 8;

impl Packet {
    /// The payload bytes of this packet (to be sealed; the sender goes in the datagram's header).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(&self.to.0.to_le_bytes());
        put_varint(&mut out, self.generation);
        put_varint(&mut out, self.seq);
        match &self.message {
            Message::Syn { digest } => {
                out.push(KIND_SYN);
                put_digest(&mut out, digest);
            }
            Message::Ack {
                known,
                entries,
                deltas,
            } => {
                out.push(KIND_ACK);
                put_varint(&mut out, *known);
                put_entries(&mut out, entries);
                put_deltas(&mut out, deltas);
            }
            Message::Ack2 { deltas } => {
                out.push(KIND_ACK2);
                put_deltas(&mut out, deltas);
            }
            Message::Leave { delta } => {
                out.push(KIND_LEAVE);
                put_delta(&mut out, delta);
            }
            Message::Heartbeat => out.push(KIND_HEARTBEAT),
            Message::Ping { target } => {
                out.push(KIND_PING);
                out.extend_from_slice(&target.0.to_le_bytes());
            }
            Message::PingReq { target } => {
                out.push(KIND_PING_REQ);
                out.extend_from_slice(&target.0.to_le_bytes());
            }
            Message::PingAck { target } => {
                out.push(KIND_PING_ACK);
                out.extend_from_slice(&target.0.to_le_bytes());
            }
        }
        out
    }

    /// Decodes the payload of a datagram from `sender` (its header's); any garbage is an error.
    pub fn decode(sender: NodeId, bytes: &[u8]) -> Result<Packet, WireError> {
        let mut r = Reader { bytes, pos: 0 };
        let to = NodeId(r.u64()?);
        let generation = r.varint()?;
        check_ranges(generation, 0)?;
        let seq = r.varint()?;
        let message = match r.u8()? {
            KIND_SYN => Message::Syn {
                digest: r.digest()?,
            },
            KIND_ACK => Message::Ack {
                known: r.varint()?,
                entries: r.entries()?,
                deltas: r.deltas()?,
            },
            KIND_ACK2 => Message::Ack2 {
                deltas: r.deltas()?,
            },
            KIND_LEAVE => Message::Leave { delta: r.delta()? },
            KIND_HEARTBEAT => Message::Heartbeat,
            KIND_PING => Message::Ping {
                target: NodeId(r.u64()?),
            },
            KIND_PING_REQ => Message::PingReq {
                target: NodeId(r.u64()?),
            },
            KIND_PING_ACK => Message::PingAck {
                target: NodeId(r.u64()?),
            },
            _ => return Err(WireError::Malformed("unknown message kind")),
        };
        if r.pos != bytes.len() {
            return Err(WireError::Malformed("trailing bytes"));
        }
        Ok(Packet {
            sender,
            to,
            generation,
            seq,
            message,
        })
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&[u8], WireError> {
        if self.remaining() < n {
            return Err(WireError::Malformed("truncated"));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn varint(&mut self) -> Result<u64, WireError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.u8()?;
            if i == 9 && b > 1 {
                return Err(WireError::Malformed("varint overflows 64 bits"));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(WireError::Malformed("varint longer than 10 bytes"))
    }

    /// A count of items each at least `min_len` bytes long, checked against what remains.
    fn count(&mut self, min_len: usize) -> Result<usize, WireError> {
        let n = self.varint()?;
        if n > (self.remaining() / min_len) as u64 {
            return Err(WireError::Malformed("count exceeds the datagram"));
        }
        Ok(n as usize)
    }

    fn string(&mut self, max: usize) -> Result<String, WireError> {
        let len = self.varint()?;
        if len > max as u64 {
            return Err(WireError::Malformed("string too long"));
        }
        let bytes = self.take(len as usize)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| WireError::Malformed("string is not UTF-8"))
    }

    fn digest(&mut self) -> Result<Digest, WireError> {
        let start = NodeId(self.u64()?);
        let end = NodeId(self.u64()?);
        let known = self.varint()?;
        let entries = self.entries()?;
        Ok(Digest {
            start,
            end,
            known,
            entries,
        })
    }

    fn entries(&mut self) -> Result<Vec<DigestEntry>, WireError> {
        let n = self.count(11)?;
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            let e = DigestEntry {
                node: NodeId(self.u64()?),
                generation: self.varint()?,
                heartbeat: self.varint()?,
                max_version: self.varint()?,
            };
            check_ranges(e.generation, e.heartbeat)?;
            entries.push(e);
        }
        Ok(entries)
    }

    fn deltas(&mut self) -> Result<Vec<NodeDelta>, WireError> {
        let n = self.count(12)?;
        let mut deltas = Vec::with_capacity(n);
        for _ in 0..n {
            deltas.push(self.delta()?);
        }
        Ok(deltas)
    }

    fn delta(&mut self) -> Result<NodeDelta, WireError> {
        let node = NodeId(self.u64()?);
        let generation = self.varint()?;
        let heartbeat = self.varint()?;
        let from_version = self.varint()?;
        check_ranges(generation, heartbeat)?;
        let keys = if from_version == 0 {
            Some(
                self.take(PUBLIC_KEY_LEN)?
                    .try_into()
                    .expect("PUBLIC_KEY_LEN bytes"),
            )
        } else {
            None
        };
        // A key/value is at least a key length, a version, a tag and a signature.
        let k = self.count(3 + SIGNATURE_LEN)?;
        let mut kvs = Vec::with_capacity(k);
        let mut last = from_version;
        for _ in 0..k {
            let key = self.string(MAX_KEY_LEN)?;
            let version = self.varint()?;
            if version <= last {
                return Err(WireError::Malformed("key/values out of version order"));
            }
            last = version;
            let value = match self.u8()? {
                0 => None,
                1 => Some(self.string(MAX_VALUE_LEN)?),
                _ => return Err(WireError::Malformed("bad value tag")),
            };
            let signature = self
                .take(SIGNATURE_LEN)?
                .try_into()
                .expect("SIGNATURE_LEN bytes");
            kvs.push(KeyValue {
                key,
                version,
                value,
                signature,
            });
        }
        Ok(NodeDelta {
            node,
            generation,
            heartbeat,
            from_version,
            keys,
            kvs,
        })
    }
}
