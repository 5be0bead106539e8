//! Transparent huge pages for the KV buffers (Linux). A sparse decode step reads rows
//! scattered over the whole context: with 2 MiB pages their addresses translate through a
//! few TLB entries instead of a page walk per row, which after a cold start costs memory
//! accesses of its own.

/// Bytes of a transparent huge page on x86-64 and aarch64 Linux.
#[cfg(target_os = "linux")]
const HUGE_PAGE: usize = 2 << 20;

/// Advises the kernel to back the whole 2 MiB pages inside the allocation of `buf` (its
/// capacity, used or not) with huge pages. Best effort: where transparent huge pages are
/// off, or on other systems, nothing changes.
pub(crate) fn advise<T>(buf: &Vec<T>) {
    #[cfg(target_os = "linux")]
    {
        let start = buf.as_ptr() as usize;
        let end = start + buf.capacity() * std::mem::size_of::<T>();
        let (first, last) = (start.next_multiple_of(HUGE_PAGE), end / HUGE_PAGE * HUGE_PAGE);
        if last > first {
            // SAFETY: [first, last) lies inside the allocation `buf` owns; MADV_HUGEPAGE only
            // changes how the kernel backs those pages, never their contents or mapping.
            #[allow(unsafe_code)]
            unsafe {
                libc::madvise(first as *mut libc::c_void, last - first, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = buf;
}
