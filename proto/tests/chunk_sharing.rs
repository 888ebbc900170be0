//! Content-defined chunking survives an insertion; fixed chunking does not.
//!
//! 1 GiB of pseudo-random bytes, then the same with 100 bytes inserted near
//! the start. With CDC at least 95 % of the new version's bytes are in
//! chunks the old version already has; with fixed chunks almost none are.

use std::collections::HashSet;
use std::io::Read;

use shoal_proto::chunking::{ChunkingSpec, chunk_stream};

const LEN: u64 = 1 << 30;
const INSERT_AT: u64 = 1000;

fn xof_from(pos: u64) -> blake3::OutputReader {
    let mut r = blake3::Hasher::new()
        .update(b"shoal chunk sharing")
        .finalize_xof();
    r.set_position(pos);
    r
}

fn old_version() -> impl Read + Send {
    xof_from(0).take(LEN)
}

fn new_version() -> impl Read + Send {
    xof_from(0)
        .take(INSERT_AT)
        .chain(&[0x5a; 100][..])
        .chain(xof_from(INSERT_AT).take(LEN - INSERT_AT))
}

fn shared_fraction(spec: ChunkingSpec) -> f64 {
    let threads = shoal_proto::package::default_threads();
    let old = chunk_stream(old_version(), spec, threads, &()).expect("chunks");
    let new = chunk_stream(new_version(), spec, threads, &()).expect("chunks");
    let have: HashSet<_> = old.iter().map(|c| c.hash).collect();
    let total: u64 = new.iter().map(|c| u64::from(c.length)).sum();
    assert_eq!(total, LEN + 100);
    let shared: u64 = new
        .iter()
        .filter(|c| have.contains(&c.hash))
        .map(|c| u64::from(c.length))
        .sum();
    shared as f64 / total as f64
}

#[test]
fn cdc_shares_almost_everything_fixed_almost_nothing() {
    let cdc = shared_fraction(ChunkingSpec::cdc(1 << 20).expect("valid"));
    let fixed = shared_fraction(ChunkingSpec::fixed(4 << 20).expect("valid"));
    println!(
        "after a 100-byte insertion: CDC shares {:.2} %, fixed shares {:.2} %",
        cdc * 100.0,
        fixed * 100.0
    );
    assert!(cdc >= 0.95, "CDC shared only {:.2} %", cdc * 100.0);
    assert!(fixed < 0.05, "fixed shared {:.2} %", fixed * 100.0);
}
