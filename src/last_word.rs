//! One value written from many threads through slow user code (a metrics gauge set from a
//! reading of the pool): each writer reads, then writes; a reading taken before a change
//! must never be written after the reading taken after it.
//!
//! One thread writes at a time; a thread that finds another writing only asks for another
//! round and leaves (it never waits on the user code the writer runs); the writer reads and
//! writes again while rounds were asked meanwhile. So the last change's reading is written
//! last.

// Public (re-exported) only under `--cfg loom`, for the models.
#![cfg_attr(not(loom), allow(unreachable_pub))]

use crate::sync::{seqcst_point, AtomicBool, AtomicU64, Ordering};

/// See the module docs. (Public only for the loom models, under `--cfg loom`.)
#[derive(Debug)]
pub struct LastWord {
    /// Rounds asked for so far.
    asked: AtomicU64,
    /// Whether a thread is writing now.
    writing: AtomicBool,
}

impl LastWord {
    /// Nothing asked for, no one writing.
    #[must_use]
    pub fn new() -> Self {
        LastWord {
            asked: AtomicU64::new(0),
            writing: AtomicBool::new(false),
        }
    }

    /// Runs `round` (read, then write) once after this call began, on this thread or on the
    /// one writing now.
    pub fn write(&self, mut round: impl FnMut()) {
        // `SeqCst` (ask, then a look at the flag; the writer: lets go of the flag, then looks
        // at the asks): a thread that finds the flag held has its ask seen by the writer's
        // last look. A failed attempt writes nothing.
        self.asked.fetch_add(1, Ordering::SeqCst);
        seqcst_point();
        while self
            .writing
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            let mut seen;
            loop {
                seen = self.asked.load(Ordering::SeqCst);
                round();
                if self.asked.load(Ordering::SeqCst) == seen {
                    break;
                }
            }
            self.writing.store(false, Ordering::SeqCst);
            seqcst_point();
            // Asked between the last look and letting go: that thread found the flag held.
            if self.asked.load(Ordering::SeqCst) == seen {
                return;
            }
        }
    }
}
