//! The memory a script run holds, for `limits.max_memory`.
//!
//! A script runs on one thread from start to end, so the memory it holds is what that
//! thread has allocated and not yet freed since the run started. jemalloc, the process's
//! allocator, counts both per thread; reading a count is one load from a thread-local
//! pointer, cheap enough to check at every operation of the script.
//!
//! Where the counts cannot be read (another allocator, a platform without jemalloc), a
//! run goes on without the limit, and the service says so once.

use std::sync::OnceLock;

/// Measures what the current thread holds from one moment on. Read it on the thread
/// that started it: an engine built for a run is evaluated on the thread that built it.
#[derive(Debug, Clone, Copy)]
pub struct Meter {
    start: u64,
}

impl Meter {
    /// Starts measuring on this thread, or `None` when memory cannot be measured here.
    pub fn start() -> Option<Meter> {
        if !available() {
            return None;
        }
        counters::net().map(|start| Meter { start })
    }

    /// Bytes held now beyond what was held at the start; negative when the thread has
    /// freed more than it allocated meanwhile (values made elsewhere and dropped here).
    pub fn grown(&self) -> i64 {
        match counters::net() {
            // Both counters only ever grow and wrap together, so their difference (and
            // its change) is exact in wrapping arithmetic.
            Some(now) => now.wrapping_sub(self.start) as i64,
            None => 0,
        }
    }
}

/// Whether the counts are the allocator's, checked once: an allocation of a known size
/// must show in this thread's count. Logs once when they are not.
fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        const PROBE: usize = 1 << 20;
        let verdict = match counters::allocated() {
            Err(reason) => Err(reason),
            Ok(before) => {
                let probe: Vec<u8> = Vec::with_capacity(PROBE);
                let probe = std::hint::black_box(probe);
                let after = counters::allocated().unwrap_or(before);
                drop(probe);
                if after.wrapping_sub(before) >= PROBE as u64 {
                    Ok(())
                } else {
                    Err("the allocator does not count allocations per thread".to_owned())
                }
            }
        };
        match verdict {
            Ok(()) => true,
            Err(reason) => {
                tracing::warn!(
                    reason = %reason,
                    "the memory of script runs cannot be measured; limits.max_memory is not enforced"
                );
                false
            }
        }
    })
}

#[cfg(not(target_env = "msvc"))]
mod counters {
    use std::cell::Cell;

    use tikv_jemalloc_ctl::thread::{ThreadLocal, allocatedp, deallocatedp};

    type Pointers = (ThreadLocal<u64>, ThreadLocal<u64>);

    thread_local! {
        /// This thread's pointers to its two counts, looked up on first use.
        static POINTERS: Cell<Option<Result<Pointers, ()>>> = const { Cell::new(None) };
    }

    fn pointers() -> Result<Pointers, String> {
        let allocated = allocatedp::read().map_err(|e| format!("thread.allocatedp: {e}"))?;
        let deallocated = deallocatedp::read().map_err(|e| format!("thread.deallocatedp: {e}"))?;
        Ok((allocated, deallocated))
    }

    fn cached() -> Option<Pointers> {
        POINTERS.with(|cell| {
            if let Some(known) = cell.get() {
                return known.ok();
            }
            let found = pointers().map_err(|_| ());
            cell.set(Some(found));
            found.ok()
        })
    }

    /// Bytes this thread ever allocated.
    pub(super) fn allocated() -> Result<u64, String> {
        let (allocated, _) = pointers()?;
        Ok(allocated.get())
    }

    /// Bytes this thread allocated minus bytes it freed, in wrapping arithmetic.
    pub(super) fn net() -> Option<u64> {
        let (allocated, deallocated) = cached()?;
        Some(allocated.get().wrapping_sub(deallocated.get()))
    }
}

#[cfg(target_env = "msvc")]
mod counters {
    pub(super) fn allocated() -> Result<u64, String> {
        Err("jemalloc is not the allocator on this platform".to_owned())
    }

    pub(super) fn net() -> Option<u64> {
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_meter_sees_what_its_thread_holds() {
        let meter = Meter::start().expect("jemalloc is the allocator of the tests");
        let held: Vec<u8> = std::hint::black_box(vec![1; 8 << 20]);
        assert!(meter.grown() >= 8 << 20, "{}", meter.grown());
        drop(held);
        assert!(meter.grown() < 1 << 20, "{}", meter.grown());
    }
}
