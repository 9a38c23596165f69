//! The allocator's one setting the gateway changes: freed memory goes back to the OS at
//! once. mimalloc 3 keeps freed pages resident for a second in case they are needed
//! again; under a steady load that is a standing 4-5 MB of a 40 MB process, for a
//! `madvise` call every ~50 requests (docs/benchmarks.md, "Memory at the maximum rate").

/// mimalloc's `mi_option_purge_delay` (index 15 of `mi_option_t` in mimalloc 3's
/// `mimalloc.h`; libmimalloc-sys names no constant for it).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Purges freed memory without delay, unless `MIMALLOC_PURGE_DELAY` is set (an operator's
/// setting wins). Call first thing in `main`.
pub fn purge_freed_memory_at_once() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets an integer option; mimalloc reads options atomically.
        unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, 0) };
    }
}

/// The purge delay mimalloc uses now, in milliseconds.
pub fn purge_delay_ms() -> std::os::raw::c_long {
    // SAFETY: reads an integer option.
    unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_memory_is_purged_at_once_after_the_call() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return; // the operator's value stands; nothing of ours to check
        }
        // mimalloc 3's default purge delay (`options.c`): the index names that option.
        assert_eq!(purge_delay_ms(), 1000);
        purge_freed_memory_at_once();
        assert_eq!(purge_delay_ms(), 0);
    }
}
