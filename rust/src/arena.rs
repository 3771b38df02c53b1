//! A per-thread bump arena behind the global allocator, for one parse + hash at a time.
//!
//! ruff's parser allocates a node per AST element (and a token vector, name
//! buffers, ...) and the hash frees all of it right after the walk. Served by
//! mimalloc that was ~16% of the hashing thread's CPU (malloc and free) plus ~3%
//! walking the tree to drop it (perf, 59,299 stdlib/EvalPlus functions,
//! 2026-11-26). Inside [`Arena::run`] the global allocator instead bumps a pointer
//! through a buffer the [`Arena`] owns, frees are no-ops, and the whole buffer is
//! reset when the scope ends.
//!
//! # Why this is sound
//!
//! - The scope is a thread-local flag (a `Cell` with a `const` initialiser and no
//!   destructor, so reading it from the allocator never allocates or registers
//!   anything). Only the thread that opened the scope bumps its buffer; other
//!   threads keep using the inner allocator.
//! - [`ScopedArena::dealloc`] (and `realloc`) tell the two kinds of pointer apart by
//!   address: a pointer inside the open buffer is the arena's, anything else goes to
//!   the inner allocator, including allocations made *before* the scope or *inside*
//!   it once the buffer was full (the fall-back: the arena never grows, so memory
//!   stays bounded by [`Arena::new`]'s size whatever the input).
//! - The one thing the allocator cannot check is a pointer that outlives the scope:
//!   once the buffer is reset such a pointer would be reused, and freeing it later
//!   would hand the inner allocator an address it never gave out. Hence
//!   [`Arena::run`] is `unsafe` and its caller promises that nothing allocated
//!   inside escapes: results are `Copy` values (digests, counts), the AST and
//!   tokens die inside, and no lazily initialised global is first touched inside.
//!   Audit of the code run inside (ruff_python_parser/ast 0.0.10 `parse_module`
//!   and our walk): the only lazy global on those crates' paths is
//!   `ruff_python_ast::str::PREFIX_MATCHER`, reached only through
//!   `str::leading_quote`, which neither the parser nor the walk calls; blake2b's
//!   CPU detection caches in an atomic, not on the heap; `stacker` (the parser's
//!   stack probe) keeps a `Cell` and maps its stacks with `mmap`.
//! - A panic inside the scope allocates its payload there. [`Arena::run`] catches
//!   it on this thread, copies its message out after closing the scope, forgets the
//!   arena payload and panics again with the copy: rayon and `join` carry a payload
//!   to another thread, whose free would hand the inner allocator an arena address.
//!   The buffer is then abandoned (leaked, never reused) in case anything else of
//!   the unwound scope survives.
//! - Debug builds fill a buffer with `0xA5` at every reset, so an escaped pointer
//!   shows up as garbage in `cargo test` rather than as silent reuse.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::ptr;

/// The global allocator: `A` outside any arena scope, the scope's buffer inside.
pub struct ScopedArena<A> {
    inner: A,
}

impl<A> ScopedArena<A> {
    pub const fn new(inner: A) -> Self {
        Self { inner }
    }
}

/// The open scope of the current thread: `[start, end)` is its buffer and `next`
/// the first free byte. All zero when no scope is open (so no pointer is inside).
#[derive(Clone, Copy)]
struct Bump {
    start: usize,
    next: usize,
    end: usize,
    /// Some allocation in this scope went to the inner allocator (buffer full).
    spilled: bool,
}

const CLOSED: Bump = Bump {
    start: 0,
    next: 0,
    end: 0,
    spilled: false,
};

thread_local! {
    static SCOPE: Cell<Bump> = const { Cell::new(CLOSED) };
}

impl Bump {
    fn owns(&self, p: *mut u8) -> bool {
        (p as usize).wrapping_sub(self.start) < self.end - self.start
    }

    /// Carve `layout` out of the buffer, or `None` when it does not fit.
    fn carve(&mut self, layout: Layout) -> Option<*mut u8> {
        if self.end == 0 {
            return None;
        }
        let at = self.next.checked_add(layout.align() - 1)? & !(layout.align() - 1);
        let stop = at.checked_add(layout.size())?;
        if stop > self.end {
            self.spilled = true;
            return None;
        }
        self.next = stop;
        Some(at as *mut u8)
    }
}

// SAFETY: every pointer handed out is either the inner allocator's (and goes back
// to it) or a fresh, suitably aligned, non-overlapping range of the current
// thread's open buffer, valid until that scope ends (see the module docs for why
// nothing outlives it).
unsafe impl<A: GlobalAlloc> GlobalAlloc for ScopedArena<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let mut b = SCOPE.get();
        if b.end != 0 {
            let p = b.carve(layout);
            SCOPE.set(b);
            if let Some(p) = p {
                return p;
            }
        }
        // SAFETY: forwarded with the caller's layout.
        unsafe { self.inner.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let mut b = SCOPE.get();
        if b.end != 0 {
            let p = b.carve(layout);
            SCOPE.set(b);
            if let Some(p) = p {
                // SAFETY: `p` starts `layout.size()` bytes of the buffer just carved.
                unsafe { ptr::write_bytes(p, 0, layout.size()) };
                return p;
            }
        }
        // SAFETY: forwarded with the caller's layout.
        unsafe { self.inner.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        let mut b = SCOPE.get();
        if b.owns(p) {
            // A no-op, except that freeing the latest allocation gives its bytes back
            // (a growing Vec's old buffer often is).
            if p as usize + layout.size() == b.next {
                b.next = p as usize;
                SCOPE.set(b);
            }
            return;
        }
        // SAFETY: not the arena's, so the inner allocator's, with this layout.
        unsafe { self.inner.dealloc(p, layout) }
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let mut b = SCOPE.get();
        if !b.owns(p) {
            // SAFETY: the inner allocator's pointer, forwarded as given.
            return unsafe { self.inner.realloc(p, layout, new_size) };
        }
        if new_size <= layout.size() {
            return p; // shrinking in place; the tail stays unused until the reset
        }
        // The latest allocation grows in place when the buffer has room.
        if p as usize + layout.size() == b.next && p as usize + new_size <= b.end {
            b.next = p as usize + new_size;
            SCOPE.set(b);
            return p;
        }
        // SAFETY: same alignment as the caller's layout, and `new_size` is valid for
        // it (the `realloc` contract).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: a fresh allocation (arena or inner) that the old bytes are copied to.
        let q = unsafe { self.alloc(new_layout) };
        if !q.is_null() {
            // SAFETY: both ranges are valid for the smaller size and do not overlap.
            unsafe { ptr::copy_nonoverlapping(p, q, layout.size().min(new_size)) };
        }
        q
    }
}

/// A buffer one thread lends to the global allocator for one scope at a time.
///
/// Not `Send`: a buffer belongs to the thread that runs its scopes.
pub struct Arena {
    buf: *mut u8,
    size: usize,
}

impl Arena {
    /// An arena of `size` bytes (allocated on first use); allocations beyond it in a
    /// scope fall back to the inner allocator.
    pub fn new(size: usize) -> Self {
        Self {
            buf: ptr::null_mut(),
            size: size.max(64),
        }
    }

    fn layout(&self) -> Layout {
        Layout::from_size_align(self.size, 64).expect("arena size fits a layout")
    }

    /// Run `f` with the thread's allocations served from this arena, then reset it.
    /// A scope opened inside another runs `f` in the outer one.
    ///
    /// # Safety
    ///
    /// Nothing allocated while `f` runs may be used, freed or reallocated after `run`
    /// returns, nor leave this thread: `R` must own no heap memory allocated inside,
    /// `f` must drop (or forget) everything it allocates, and must not be the first
    /// to initialise a lazily allocated global. See the module docs.
    pub unsafe fn run<R>(&mut self, f: impl FnOnce() -> R) -> R {
        if SCOPE.get().end != 0 {
            return f();
        }
        if self.buf.is_null() {
            // SAFETY: the layout has a non-zero size; no scope is open on this thread,
            // so this is the inner allocator's memory.
            self.buf = unsafe { std::alloc::alloc(self.layout()) };
            if self.buf.is_null() {
                return f();
            }
        }
        let start = self.buf as usize;
        SCOPE.set(Bump {
            start,
            next: start,
            end: start + self.size,
            spilled: false,
        });
        let close = Close(self);
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            Ok(value) => value,
            Err(payload) => {
                close.abandon();
                // The scope is closed: the message is copied to the inner allocator.
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic inside an arena scope".to_owned());
                // Arena memory (or, after a spill, a leak): never freed outside the scope.
                std::mem::forget(payload);
                std::panic::resume_unwind(Box::new(message))
            }
        }
    }
}

/// Whether the current scope has had to fall back to the inner allocator, i.e.
/// not everything allocated in it lives in the arena (so forgetting a value
/// instead of dropping it could leak). `false` outside a scope.
pub fn spilled() -> bool {
    SCOPE.get().spilled
}

/// Whether a scope is open on this thread.
pub fn in_scope() -> bool {
    SCOPE.get().end != 0
}

/// Closes the scope when `run` returns.
struct Close<'a>(&'a mut Arena);

impl Close<'_> {
    /// Close the scope after a panic and abandon the buffer: what the unwound code
    /// left behind may still point into it, so it is leaked, never reused.
    fn abandon(self) {
        SCOPE.set(CLOSED);
        self.0.buf = ptr::null_mut();
        std::mem::forget(self);
    }
}

impl Drop for Close<'_> {
    fn drop(&mut self) {
        SCOPE.set(CLOSED);
        if cfg!(debug_assertions) {
            // SAFETY: the buffer is ours and `size` bytes long.
            unsafe { ptr::write_bytes(self.0.buf, 0xA5, self.0.size) };
        }
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        if !self.buf.is_null() {
            // SAFETY: allocated in `run` with this layout outside any scope, so the
            // inner allocator's (a scope open now does not own it either).
            unsafe { std::alloc::dealloc(self.buf, self.layout()) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The crate's global allocator is `ScopedArena<MiMalloc>` (lib.rs), so these
    // tests exercise the real allocator.

    #[test]
    fn scope_serves_small_allocations_and_resets() {
        let mut arena = Arena::new(1 << 16);
        // SAFETY: only Copy values leave the scope.
        let (first, inside) = unsafe {
            arena.run(|| {
                let v = vec![1u64; 100];
                (v.as_ptr() as usize, in_scope() && !spilled())
            })
        };
        assert!(inside);
        assert!(!in_scope());
        // SAFETY: as above.
        let second = unsafe { arena.run(|| std::ptr::from_ref(Box::new(7u64).as_ref()) as usize) };
        // Reset: the next scope starts at the same address.
        assert_eq!(first, second);
        // Outside a scope the inner allocator serves, and its memory outlives scopes.
        let outside = vec![3u8; 10];
        // SAFETY: as above.
        unsafe { arena.run(|| drop(vec![0u8; 1000])) };
        assert_eq!(outside, vec![3u8; 10]);
    }

    #[test]
    fn big_allocations_spill_and_grow_correctly() {
        let mut arena = Arena::new(4096);
        // SAFETY: only a Copy value leaves the scope.
        let (sum, spilled_now) = unsafe {
            arena.run(|| {
                let mut v: Vec<u32> = Vec::new();
                for i in 0..100_000u32 {
                    v.push(i); // grows in the arena, then moves to the inner allocator
                }
                let z = vec![0u8; 10_000];
                let s: u64 = v.iter().map(|&x| u64::from(x)).sum::<u64>() + z.len() as u64;
                (s, spilled())
            })
        };
        assert_eq!(sum, (0..100_000u64).sum::<u64>() + 10_000);
        assert!(spilled_now);
    }

    #[test]
    fn zeroed_and_realloc_keep_contents() {
        let mut arena = Arena::new(1 << 16);
        // SAFETY: only a Copy value leaves the scope.
        let ok = unsafe {
            arena.run(|| {
                // Dirty the buffer, free it, then ask for zeroed memory at the same spot.
                drop(vec![0xFFu8; 4096]);
                let z = vec![0u8; 4096];
                let mut s = String::from("abc");
                let _other = String::from("x"); // `s` is no longer the latest allocation
                s.push_str(&"d".repeat(500));
                z.iter().all(|&b| b == 0) && s.len() == 503 && s.starts_with("abcd")
            })
        };
        assert!(ok);
    }

    #[test]
    fn threads_keep_their_own_scopes() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        // The other thread is spawned outside the scope (spawning allocates what both
        // threads share) and allocates while this thread's scope is open.
        static GO: AtomicBool = AtomicBool::new(false);
        static THEIRS: AtomicUsize = AtomicUsize::new(0);
        let other = std::thread::spawn(|| {
            while !GO.load(Ordering::Acquire) {
                std::hint::spin_loop();
            }
            assert!(!in_scope());
            let v = vec![5u8; 1000];
            THEIRS.store(v.as_ptr() as usize, Ordering::Release);
            v.len()
        });
        let mut arena = Arena::new(1 << 16);
        // SAFETY: only Copy values leave the scope.
        let (start, theirs) = unsafe {
            arena.run(|| {
                let start = SCOPE.get().start;
                GO.store(true, Ordering::Release);
                while THEIRS.load(Ordering::Acquire) == 0 {
                    std::hint::spin_loop();
                }
                (start, THEIRS.load(Ordering::Acquire))
            })
        };
        assert!(
            theirs.wrapping_sub(start) >= 1 << 16,
            "the other thread used this arena"
        );
        assert_eq!(other.join().unwrap(), 1000);
    }

    #[test]
    fn a_panic_payload_leaves_as_the_inner_allocators() {
        // The payload crosses to another thread and is freed there, as rayon does.
        let payload = std::thread::scope(|s| {
            s.spawn(|| {
                let mut arena = Arena::new(1 << 16);
                // SAFETY: `run` copies the payload out of the arena before re-raising.
                unsafe { arena.run(|| panic!("boom {}", std::hint::black_box(2))) }
            })
            .join()
            .unwrap_err()
        });
        assert_eq!(payload.downcast_ref::<String>().unwrap(), "boom 2");
        drop(payload);
    }

    #[test]
    fn a_panic_abandons_the_buffer() {
        let mut arena = Arena::new(1 << 16);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: the payload escapes, which is why the buffer is abandoned.
            unsafe { arena.run(|| panic!("boom {}", std::hint::black_box(1))) }
        }));
        let payload = r.unwrap_err();
        assert!(!in_scope());
        assert!(arena.buf.is_null());
        // SAFETY: as above.
        unsafe { arena.run(|| drop(vec![0u8; 60_000])) };
        assert_eq!(payload.downcast_ref::<String>().unwrap(), "boom 1");
    }
}
