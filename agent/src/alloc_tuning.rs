//! Allocator tuning for the agent process: the one place the workspace
//! allows `unsafe`.
//!
//! Chunk traffic allocates and frees many buffers of a few hundred KiB
//! from several threads. glibc serves those from `mmap` at first, but
//! after the first free it raises its mmap threshold to that size and
//! serves the rest from its heaps, where freed memory stays resident: a
//! busy agent's RSS then runs at twice its live data. Pinning the
//! threshold keeps such buffers mmap-backed and returned when freed
//! (measured: peak RSS in a 10-agent swarm, 4 MiB chunks, 68 → 59 MiB).
//! A general-purpose replacement (mimalloc) measured worse, 160 MiB.

/// Buffers at least this large are mapped and unmapped individually.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 256 << 10;

/// Applies the tuning; call once at the start of `main`.
#[allow(unsafe_code)]
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; it is called
        // before other threads start and with a documented parameter.
        let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
        if ok != 1 {
            tracing::debug!("mallopt(M_MMAP_THRESHOLD) was refused; using glibc defaults");
        }
    }
}
