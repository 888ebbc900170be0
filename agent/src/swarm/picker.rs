//! Choosing which chunks to ask a peer for: rarest first.
//!
//! Rarity is how many connected peers other than the origin hold a chunk
//! (the origin holds everything; counting it tells nothing). The origin is
//! asked for chunks no other peer has, so its upload goes to new chunks and
//! peers spread the rest. A peer across a router is asked only for chunks
//! no peer on our own subnet holds (none, while the origin is on our
//! subnet: it holds everything), so chunks cross between labs towards the
//! lab without the origin and spread inside each; ordering peers by subnet
//! alone still let every remote peer with a free window be asked. Ties break by a hash
//! seeded per agent, so agents starting together ask the seed for
//! different chunks and the swarm diversifies at once. The order is rebuilt
//! lazily (at most every [`REORDER_INTERVAL`]) so picking stays cheap with
//! 100,000 chunks and many peers. Near the end (nothing left unrequested)
//! chunks already in flight may be asked of a second peer: end game.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::store::Bitfield;

/// Rebuilding the rarity order costs O(n log n); once per this interval
/// is plenty, as availability changes gradually.
pub const REORDER_INTERVAL: Duration = Duration::from_millis(250);

/// A chunk asked of at most this many peers at once in end game.
pub const ENDGAME_DUPLICATES: usize = 2;

/// Which chunks a pick is restricted to, besides "not held, not in
/// flight, not avoided".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Only {
    /// Chunks no counted peer holds (the origin, while peers are busy).
    pub unique: bool,
    /// Chunks no counted peer on our subnet holds (a peer across a router).
    pub not_local: bool,
}

#[derive(Debug)]
pub struct Picker {
    rarity: Vec<u16>,
    /// Like `rarity`, counting only peers on our subnet.
    local: Vec<u16>,
    /// The origin is connected and on our subnet.
    local_origin: bool,
    lengths: Vec<u32>,
    seed: u64,
    order: Vec<u32>,
    dirty: bool,
    built: Option<Instant>,
}

fn mix(seed: u64, i: u32) -> u64 {
    // SplitMix64 step: a cheap, well-spread tiebreak.
    let mut z = seed ^ u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Picker {
    /// `lengths[i]` is chunk i's length; `seed` varies per agent.
    pub fn new(lengths: Vec<u32>, seed: u64) -> Self {
        Self {
            rarity: vec![0; lengths.len()],
            local: vec![0; lengths.len()],
            local_origin: false,
            lengths,
            seed,
            order: Vec::new(),
            dirty: true,
            built: None,
        }
    }

    /// A counted peer joined holding `have`; `local`: it is on our subnet.
    pub fn add_peer(&mut self, have: &Bitfield, local: bool) {
        for i in have.iter_set() {
            self.add_chunk(i, local);
        }
    }

    pub fn remove_peer(&mut self, have: &Bitfield, local: bool) {
        for i in have.iter_set() {
            if let Some(r) = self.rarity.get_mut(i as usize) {
                *r = r.saturating_sub(1);
            }
            if local && let Some(r) = self.local.get_mut(i as usize) {
                *r = r.saturating_sub(1);
            }
        }
        self.dirty = true;
    }

    /// A counted peer announced a new chunk.
    pub fn add_chunk(&mut self, i: u32, local: bool) {
        if let Some(r) = self.rarity.get_mut(i as usize) {
            *r = r.saturating_add(1);
            self.dirty = true;
        }
        if local && let Some(r) = self.local.get_mut(i as usize) {
            *r = r.saturating_add(1);
        }
    }

    /// Chunks we hold were dropped (they failed re-verification): the
    /// order, which leaves held chunks out, must be rebuilt.
    pub fn held_changed(&mut self) {
        self.dirty = true;
    }

    /// The origin, on our subnet, joined (`true`) or left.
    pub fn set_local_origin(&mut self, local: bool) {
        self.local_origin = local;
    }

    /// Whether `only` rules out chunk `i` by where it is held.
    fn excluded(&self, i: u32, only: Only) -> bool {
        only.not_local && (self.local_origin || self.local.get(i as usize).is_some_and(|&n| n > 0))
    }

    fn reorder(&mut self, have: &Bitfield, now: Instant) {
        let due = self
            .built
            .is_none_or(|t| now.saturating_duration_since(t) >= REORDER_INTERVAL);
        if !(self.dirty && due) {
            return;
        }
        let mut order: Vec<u32> = (0..self.lengths.len() as u32)
            .filter(|&i| !have.get(i))
            .collect();
        order.sort_by_key(|&i| (self.rarity[i as usize], mix(self.seed, i)));
        self.order = order;
        self.dirty = false;
        self.built = Some(now);
    }

    /// Chunks to ask a peer holding `peer_has` for: not held, not in
    /// flight, rarest first, up to `max_bytes` (at least one chunk) and
    /// `max_chunks`. Empty when the peer has nothing new to offer.
    /// `only` restricts the choice further; chunks in `avoid` are skipped.
    #[allow(clippy::too_many_arguments)]
    pub fn pick(
        &mut self,
        peer_has: &Bitfield,
        have: &Bitfield,
        inflight: &HashMap<u32, Vec<String>>,
        avoid: &HashMap<u32, std::time::Instant>,
        max_bytes: u64,
        max_chunks: usize,
        only: Only,
    ) -> Vec<u32> {
        self.pick_at(
            Instant::now(),
            peer_has,
            have,
            inflight,
            avoid,
            max_bytes,
            max_chunks,
            only,
        )
    }

    /// [`Picker::pick`] on a given clock (the fleet simulation's).
    #[allow(clippy::too_many_arguments)]
    pub fn pick_at(
        &mut self,
        now: Instant,
        peer_has: &Bitfield,
        have: &Bitfield,
        inflight: &HashMap<u32, Vec<String>>,
        avoid: &HashMap<u32, std::time::Instant>,
        max_bytes: u64,
        max_chunks: usize,
        only: Only,
    ) -> Vec<u32> {
        if only.not_local && self.local_origin {
            // Everything is on our subnet: no need to scan.
            return Vec::new();
        }
        self.reorder(have, now);
        let mut out = Vec::new();
        let mut bytes = 0u64;
        for &i in &self.order {
            if have.get(i)
                || !peer_has.get(i)
                || inflight.contains_key(&i)
                || avoid.contains_key(&i)
                || self.excluded(i, only)
            {
                continue;
            }
            if only.unique && self.rarity[i as usize] > 0 {
                // Sorted by rarity: nothing unique is left.
                break;
            }
            let len = u64::from(self.lengths[i as usize]);
            if !out.is_empty() && bytes + len > max_bytes {
                break;
            }
            out.push(i);
            bytes += len;
            if out.len() >= max_chunks || bytes >= max_bytes {
                break;
            }
        }
        out
    }

    /// End game: one in-flight chunk this peer could also send, that it is
    /// not already sending, that fewer than [`ENDGAME_DUPLICATES`] peers
    /// are sending, and that is not in `avoid` (what the origin declined)
    /// or ruled out by `only.not_local`.
    pub fn pick_endgame(
        &self,
        peer: &str,
        peer_has: &Bitfield,
        have: &Bitfield,
        inflight: &HashMap<u32, Vec<String>>,
        avoid: &HashMap<u32, Instant>,
        only: Only,
    ) -> Option<u32> {
        inflight
            .iter()
            .filter(|(i, who)| {
                !have.get(**i)
                    && peer_has.get(**i)
                    && !avoid.contains_key(*i)
                    && who.len() < ENDGAME_DUPLICATES
                    && !who.iter().any(|w| w == peer)
                    && !self.excluded(**i, only)
            })
            .map(|(i, _)| *i)
            .min_by_key(|&i| mix(self.seed, i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(n: u32, set: &[u32]) -> Bitfield {
        let mut b = Bitfield::new(n);
        for &i in set {
            b.set(i);
        }
        b
    }

    #[test]
    fn rarest_first_and_respects_held_and_inflight() {
        let mut p = Picker::new(vec![10; 6], 7);
        let a = bits(6, &[0, 1, 2, 3, 4, 5]);
        let b = bits(6, &[0, 1, 2, 3]);
        p.add_peer(&a, true);
        p.add_peer(&b, true);
        let have = bits(6, &[0]);
        let mut inflight = HashMap::new();
        inflight.insert(5u32, vec!["x".to_owned()]);
        // Chunk 4 is rarest (only on a); 5 is in flight; 0 is held.
        let got = p.pick(
            &a,
            &have,
            &inflight,
            &HashMap::new(),
            10,
            8,
            Only::default(),
        );
        assert_eq!(got, vec![4]);
        let got = p.pick(
            &a,
            &have,
            &inflight,
            &HashMap::new(),
            1000,
            8,
            Only::default(),
        );
        assert_eq!(got.len(), 4);
        assert!(!got.contains(&0) && !got.contains(&5));
        assert_eq!(got[0], 4);
    }

    #[test]
    fn different_seeds_spread_the_first_picks() {
        let seed_has = Bitfield::full(64);
        let firsts: std::collections::HashSet<u32> = (0..16u64)
            .map(|seed| {
                let mut p = Picker::new(vec![1; 64], seed);
                p.add_peer(&seed_has, true);
                p.pick(
                    &seed_has,
                    &Bitfield::new(64),
                    &HashMap::new(),
                    &HashMap::new(),
                    1,
                    1,
                    Only::default(),
                )[0]
            })
            .collect();
        assert!(firsts.len() >= 10, "{firsts:?}");
    }

    #[test]
    fn unique_only_skips_chunks_other_peers_hold() {
        let mut p = Picker::new(vec![1; 4], 3);
        p.add_peer(&bits(4, &[0, 1]), true);
        let origin = Bitfield::full(4);
        let unique = Only {
            unique: true,
            not_local: false,
        };
        let mut got = p.pick(
            &origin,
            &Bitfield::new(4),
            &HashMap::new(),
            &HashMap::new(),
            10,
            10,
            unique,
        );
        got.sort();
        assert_eq!(got, vec![2, 3]);
    }

    #[test]
    fn endgame_duplicates_in_flight_chunks_once() {
        let p = Picker::new(vec![1; 3], 1);
        let has = Bitfield::full(3);
        let have = bits(3, &[0]);
        let mut inflight = HashMap::new();
        inflight.insert(1u32, vec!["a".to_owned()]);
        inflight.insert(2u32, vec!["a".to_owned(), "b".to_owned()]);
        let none = HashMap::new();
        let any = Only::default();
        assert_eq!(
            p.pick_endgame("b", &has, &have, &inflight, &none, any),
            Some(1)
        );
        assert_eq!(
            p.pick_endgame("a", &has, &have, &inflight, &none, any),
            None
        );
        // The origin declined chunk 1: not asked again in end game either.
        let declined = HashMap::from([(1u32, Instant::now())]);
        assert_eq!(
            p.pick_endgame("b", &has, &have, &inflight, &declined, any),
            None
        );
    }

    #[test]
    fn a_peer_across_a_router_is_asked_only_for_what_our_subnet_lacks() {
        let mut p = Picker::new(vec![1; 6], 5);
        // A peer on our subnet holds 0 and 1; one across the router all.
        let near = bits(6, &[0, 1]);
        let far = Bitfield::full(6);
        p.add_peer(&near, true);
        p.add_peer(&far, false);
        let across = Only {
            unique: false,
            not_local: true,
        };
        let (none, no_avoid) = (HashMap::new(), HashMap::new());
        let mut got = p.pick(&far, &Bitfield::new(6), &none, &no_avoid, 100, 100, across);
        got.sort();
        assert_eq!(got, vec![2, 3, 4, 5]);
        // The near peer still gets everything it holds.
        let mut got = p.pick(
            &near,
            &Bitfield::new(6),
            &none,
            &no_avoid,
            100,
            100,
            Only::default(),
        );
        got.sort();
        assert_eq!(got, vec![0, 1]);
        // In end game too: chunk 0 is in flight from the near peer.
        let inflight = HashMap::from([(0u32, vec!["near".to_owned()])]);
        assert_eq!(
            p.pick_endgame(
                "far",
                &far,
                &bits(6, &[1, 2, 3, 4, 5]),
                &inflight,
                &no_avoid,
                across
            ),
            None
        );
        // Once the near peer is gone, the far one is asked for 0 and 1 too.
        p.remove_peer(&near, true);
        let mut got = p.pick(&far, &Bitfield::new(6), &none, &no_avoid, 100, 100, across);
        got.sort();
        assert_eq!(got, vec![0, 1, 2, 3, 4, 5]);
        // With the origin on our subnet nothing need cross the router.
        p.set_local_origin(true);
        assert!(
            p.pick(&far, &Bitfield::new(6), &none, &no_avoid, 100, 100, across)
                .is_empty()
        );
    }
}
