//! jemalloc as the global allocator of the long-running hosts (feature `jemalloc`, decision
//! 0026). A sync allocates a few values per source row on the reader's thread and frees them on
//! the diff's; glibc's malloc spent about a quarter of the workers' CPU on that (consolidating
//! and unlinking free chunks), jemalloc a small part of it: the onboarding's workers took 26–27
//! CPU s instead of 49.

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main` (the crate's symbols are prefixed, hence the name):
///
/// - `narenas:2`: by default four arenas per core, each keeping freed pages of its own; two
///   held a 1,000,000-row sync's worker at 118 MB instead of 136;
/// - `dirty_decay_ms:1000`: freed pages go back to the system within a second (ten by default)
///   — the onboarding's largest worker 128–137 MB, within the 150 MB bound; returning them at once
///   (`0`) cost as much CPU as glibc did, each reused page faulted in afresh;
/// - `muzzy_decay_ms:0`: pages are returned with `MADV_DONTNEED`, not left lazily freed
///   (`MADV_FREE`), so the resident set measured is the memory held.
///
/// `_RJEM_MALLOC_CONF` in the environment still wins, option by option.
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8; 47] = b"narenas:2,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// Keeps [`malloc_conf`] in the link: nothing else names it, and an object file nothing
/// references may be left out of a binary, jemalloc's own weak default taking its place.
pub(super) fn keep_options() {
    std::hint::black_box(&malloc_conf);
}

#[cfg(test)]
mod tests {
    /// An option as jemalloc read it at start-up.
    fn option<T: Copy>(name: &str) -> T {
        let name = std::ffi::CString::new(name).unwrap();
        let mut value = std::mem::MaybeUninit::<T>::uninit();
        let mut len = std::mem::size_of::<T>();
        // SAFETY: `value` has room for `len` bytes of the option's type, which the caller names.
        let rc = unsafe {
            tikv_jemalloc_sys::mallctl(
                name.as_ptr(),
                value.as_mut_ptr().cast(),
                &mut len,
                std::ptr::null_mut(),
                0,
            )
        };
        assert_eq!(rc, 0, "mallctl {name:?}");
        // SAFETY: mallctl succeeded and wrote `len` bytes of the option.
        unsafe { value.assume_init() }
    }

    #[test]
    fn jemalloc_runs_with_our_options() {
        super::keep_options();
        if std::env::var_os("_RJEM_MALLOC_CONF").is_some() {
            return; // an operator's options win; nothing of ours to check
        }
        assert_eq!(option::<u32>("opt.narenas"), 2);
        assert_eq!(option::<isize>("opt.dirty_decay_ms"), 1000);
        assert_eq!(option::<isize>("opt.muzzy_decay_ms"), 0);
    }
}
