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

use std::cell::RefCell;

use crate::sync::{seqcst_point, AtomicBool, AtomicU64, Ordering};

crate::sync::per_thread! {
    /// The `LastWord`s this thread is writing now (by address), each with whether its round
    /// was asked to run again from within.
    static WRITING_HERE: RefCell<Vec<(usize, bool)>> = RefCell::new(Vec::new());
}

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
    /// one writing now. Called again from within `round` (user code that changes what is
    /// read), it asks that writer for one more round, once: a round that asked for another
    /// each time would never end.
    pub fn write(&self, mut round: impl FnMut()) {
        let me = self as *const LastWord as usize;
        let within = WRITING_HERE
            .try_with(|here| {
                let mut here = here.borrow_mut();
                let mine = here.iter_mut().find(|(w, _)| *w == me);
                mine.map(|(_, again)| *again = true).is_some()
            })
            .unwrap_or(true);
        if within {
            return;
        }
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
            let mut once_more = true;
            loop {
                seen = self.asked.load(Ordering::SeqCst);
                let here = WritingHere::begin(me);
                round();
                let asked_within = here.end();
                if asked_within && std::mem::take(&mut once_more) {
                    continue;
                }
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

/// Marks a `LastWord` as written on this thread while a round runs (unwinding included).
struct WritingHere(usize);

impl WritingHere {
    fn begin(me: usize) -> Self {
        let _ = WRITING_HERE.try_with(|here| here.borrow_mut().push((me, false)));
        WritingHere(me)
    }

    /// Ends the round: whether it was asked to run again from within.
    fn end(self) -> bool {
        let again = WRITING_HERE
            .try_with(|here| {
                let here = here.borrow();
                here.iter()
                    .rev()
                    .find(|(w, _)| *w == self.0)
                    .is_some_and(|(_, again)| *again)
            })
            .unwrap_or(false);
        drop(self);
        again
    }
}

impl Drop for WritingHere {
    fn drop(&mut self) {
        let _ = WRITING_HERE.try_with(|here| {
            let mut here = here.borrow_mut();
            if let Some(at) = here.iter().rposition(|(w, _)| *w == self.0) {
                here.swap_remove(at);
            }
        });
    }
}
