//! A compact set of chunk indices: bit i (LSB-first in each byte) = chunk i.

/// Which chunks are held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitfield {
    bits: Vec<u8>,
    len: u32,
    count: u32,
}

impl Bitfield {
    pub fn new(len: u32) -> Self {
        Self {
            bits: vec![0; len.div_ceil(8) as usize],
            len,
            count: 0,
        }
    }

    /// All chunks held.
    pub fn full(len: u32) -> Self {
        let mut b = Self::new(len);
        for i in 0..len {
            b.set(i);
        }
        b
    }

    /// From wire or disk bytes; `None` if the length is wrong or bits past
    /// the end are set.
    pub fn from_bytes(len: u32, bytes: &[u8]) -> Option<Self> {
        if bytes.len() != len.div_ceil(8) as usize {
            return None;
        }
        if !len.is_multiple_of(8) {
            let last = bytes[bytes.len() - 1];
            if last >> (len % 8) != 0 {
                return None;
            }
        }
        let count = bytes.iter().map(|b| b.count_ones()).sum();
        Some(Self {
            bits: bytes.to_vec(),
            len,
            count,
        })
    }

    pub fn len(&self) -> u32 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    pub fn is_complete(&self) -> bool {
        self.count == self.len
    }

    pub fn get(&self, i: u32) -> bool {
        i < self.len && self.bits[(i / 8) as usize] & (1 << (i % 8)) != 0
    }

    /// Sets bit `i`; returns whether it was newly set.
    pub fn set(&mut self, i: u32) -> bool {
        if i >= self.len || self.get(i) {
            return false;
        }
        self.bits[(i / 8) as usize] |= 1 << (i % 8);
        self.count += 1;
        true
    }

    /// Clears bit `i`; returns whether it was set.
    pub fn clear(&mut self, i: u32) -> bool {
        if !self.get(i) {
            return false;
        }
        self.bits[(i / 8) as usize] &= !(1 << (i % 8));
        self.count -= 1;
        true
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bits
    }

    pub fn iter_set(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).filter(|&i| self.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_clear_round_trip() {
        let mut b = Bitfield::new(11);
        assert!(b.set(0) && b.set(10) && !b.set(10) && !b.set(11));
        assert_eq!(b.count(), 2);
        let c = Bitfield::from_bytes(11, b.as_bytes()).expect("valid");
        assert_eq!(c, b);
        assert!(c.get(10) && !c.get(9));
        assert!(Bitfield::from_bytes(11, &[0, 0, 0]).is_none());
        assert!(
            Bitfield::from_bytes(11, &[0, 0x08]).is_none(),
            "bit 11 set past the end"
        );
        let mut f = Bitfield::full(9);
        assert!(f.is_complete());
        assert!(f.clear(3) && !f.is_complete());
        assert_eq!(f.iter_set().count(), 8);
    }
}
