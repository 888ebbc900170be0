//! CRC-32C of the chunks this agent verified, for checking them at rest.
//!
//! A chunk is verified against its BLAKE3 hash before it is stored. What
//! serving must catch after that is the disk changing the bytes, which a
//! CRC-32C of the verified bytes catches as well as the hash does (every
//! burst of up to 32 bits, anything else but for one in four billion), at
//! a fifth of the cost: on bytes just read from the disk (not in any CPU
//! cache) the folded CRC runs at about 20 GB/s here, BLAKE3 at 4 on one
//! core. Every agent serves about as much as it receives, so re-hashing
//! what it served was 4 % of a 30-host run's CPU. The receiving peer
//! verifies the hash in any case.
//!
//! Checksums live in memory. A chunk without one (held before a restart,
//! or seeded in place from a publisher's files, which people may edit) is
//! served with its BLAKE3 hash checked, and gets one when that passes.

use std::sync::atomic::{AtomicU64, Ordering};

/// Set flag above the 32-bit CRC in each slot.
const SET: u64 = 1 << 32;

/// One slot per chunk of a package.
#[derive(Debug)]
pub struct Checksums {
    slots: Box<[AtomicU64]>,
}

impl Checksums {
    pub fn new(chunks: usize) -> Self {
        Self {
            slots: (0..chunks).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The checksum recorded for `chunk`, if any.
    pub fn get(&self, chunk: u32) -> Option<u32> {
        let v = self.slots.get(chunk as usize)?.load(Ordering::Acquire);
        (v & SET != 0).then_some(v as u32)
    }

    /// Records the checksum of `chunk`'s verified bytes.
    pub fn set(&self, chunk: u32, crc: u32) {
        if let Some(s) = self.slots.get(chunk as usize) {
            s.store(SET | u64::from(crc), Ordering::Release);
        }
    }

    /// Forgets `chunk`'s checksum (its bytes are no longer trusted).
    pub fn clear(&self, chunk: u32) {
        if let Some(s) = self.slots.get(chunk as usize) {
            s.store(0, Ordering::Release);
        }
    }
}

/// A running CRC-32C (CRC-32/ISCSI).
#[derive(Debug, Clone, Copy)]
pub struct Crc(crc_fast::Digest);

impl Default for Crc {
    fn default() -> Self {
        Self(crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi))
    }
}

impl Crc {
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn value(&self) -> u32 {
        // A 32-bit CRC in the low half.
        self.0.finalize() as u32
    }

    /// The CRC-32C of `data`.
    pub fn of(data: &[u8]) -> u32 {
        let mut c = Self::default();
        c.update(data);
        c.value()
    }
}

/// A chunk's BLAKE3 hash and CRC-32C, computed together as it arrives.
#[derive(Debug, Default)]
pub struct HashAndCrc {
    pub hasher: blake3::Hasher,
    pub crc: Crc,
}

impl HashAndCrc {
    /// Adds `data` to both, in steps small enough that the second pass
    /// finds the bytes still in the CPU's cache.
    pub fn update(&mut self, data: &[u8]) {
        for part in data.chunks(64 << 10) {
            self.hasher.update(part);
            self.crc.update(part);
        }
    }
}

/// How a [`super::chunk_io::ChunkReader`] checks what it reads.
#[derive(Debug)]
pub enum ReadCheck {
    /// Against the recorded checksum (boxed: a CRC carries its tables).
    Crc { expected: u32, crc: Box<Crc> },
    /// Against the chunk's hash; the checksum is computed on the way, to
    /// be recorded if the hash matches.
    Hash {
        both: Box<HashAndCrc>,
        expected: blake3::Hash,
    },
}

impl ReadCheck {
    pub fn new(recorded: Option<u32>, expected: blake3::Hash) -> Self {
        match recorded {
            Some(expected) => Self::Crc {
                expected,
                crc: Box::default(),
            },
            None => Self::Hash {
                both: Box::default(),
                expected,
            },
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Self::Crc { crc, .. } => crc.update(data),
            Self::Hash { both, .. } => both.update(data),
        }
    }

    /// At the end of the chunk: whether it matched, and the checksum to
    /// record when it was checked against the hash.
    pub fn finish(&self) -> (bool, Option<u32>) {
        match self {
            Self::Crc { expected, crc } => (crc.value() == *expected, None),
            Self::Hash { both, expected } => {
                let ok = both.hasher.finalize() == *expected;
                (ok, ok.then(|| both.crc.value()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_hold_any_crc_including_zero() {
        let c = Checksums::new(3);
        assert_eq!(c.get(0), None);
        c.set(0, 0);
        c.set(2, u32::MAX);
        assert_eq!(
            (c.get(0), c.get(1), c.get(2)),
            (Some(0), None, Some(u32::MAX))
        );
        c.clear(2);
        assert_eq!(c.get(2), None);
        assert_eq!(c.get(9), None, "out of range");
    }

    #[test]
    fn a_read_check_catches_a_changed_byte_either_way() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let hash = blake3::hash(&data);
        let crc = Crc::of(&data);
        // The check value of CRC-32C.
        assert_eq!(Crc::of(b"123456789"), 0xe306_9283);
        let mut bad = data.clone();
        bad[54_321] ^= 0x10;
        for recorded in [None, Some(crc)] {
            let mut good = ReadCheck::new(recorded, hash);
            // In pieces, as chunks are served.
            for piece in data.chunks(30_000) {
                good.update(piece);
            }
            let (ok, learned) = good.finish();
            assert!(ok);
            assert_eq!(learned, recorded.is_none().then_some(crc));
            let mut check = ReadCheck::new(recorded, hash);
            check.update(&bad);
            assert_eq!(check.finish(), (false, None));
        }
    }
}
