//! Allocator tuning for the agent process: the one place the workspace
//! allows `unsafe`.
//!
//! glibc raises its mmap threshold to the size of any mapped buffer that
//! is freed, up to 32 MiB; after that, large buffers (end-game chunk
//! copies, HTTP/2 batches) come from its heaps, where freed memory stays
//! resident and the agent's RSS runs well above its live data. Pinning
//! the threshold keeps those mapped and returned when freed. Measured in a
//! 10-agent swarm with 4 MiB chunks: peak RSS 68 → 59 MiB. At 1 MiB the
//! 512 KiB frame buffers still come from the heap and are reused: a
//! 256 KiB threshold mapped and faulted in every frame and cost about a
//! fifth of loopback throughput. A general-purpose replacement (mimalloc)
//! measured worse: 160 MiB.

/// Buffers at least this large are mapped and unmapped individually.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 1 << 20;

/// Free memory at the top of a heap is returned to the system only past
/// this much. Pinning the mmap threshold also pins this at glibc's 128 KiB
/// default, and then each 512 KiB frame buffer freed at the top of a heap
/// went back to the kernel and came back as fresh pages, one page fault
/// per 4 KiB (costly on virtual machines that hand freed memory back to
/// the host).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = 8 << 20;

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
        // SAFETY: as above.
        let ok = unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) };
        if ok != 1 {
            tracing::debug!("mallopt(M_TRIM_THRESHOLD) was refused; using glibc defaults");
        }
    }
}
