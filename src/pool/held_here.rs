//! The workers this thread holds while it runs user code with them (a checkout's check, a
//! return's hooks, `map`'s callback, a keepalive check, a worker's `Drop`): only this thread
//! can give them back, once that code returns, so a `drain` called from it does not wait for
//! them (they are closed as soon as it returns).

use std::cell::Cell;

crate::sync::per_thread! {
    /// The pool (its address) whose workers this thread holds now, and how many.
    static HELD: Cell<(usize, usize)> = Cell::new((0, 0));
}

/// `n` workers of a pool held by this thread, until dropped. Nested holds of one pool add
/// up; a hold of another pool inside hides the outer one until it ends.
pub(crate) struct HeldHere {
    outer: Option<(usize, usize)>,
}

impl HeldHere {
    pub(crate) fn new<T>(pool: &T, n: usize) -> HeldHere {
        let this = pool as *const T as usize;
        let outer = HELD
            .try_with(|held| {
                let outer = held.get();
                let count = if outer.0 == this { outer.1 + n } else { n };
                held.set((this, count));
                outer
            })
            .ok();
        HeldHere { outer }
    }

    /// How many workers of `pool` this thread holds now.
    pub(crate) fn of<T>(pool: &T) -> usize {
        let this = pool as *const T as usize;
        HELD.try_with(|held| match held.get() {
            (pool, n) if pool == this => n,
            _ => 0,
        })
        .unwrap_or(0)
    }
}

impl Drop for HeldHere {
    fn drop(&mut self) {
        if let Some(outer) = self.outer {
            let _ = HELD.try_with(|held| held.set(outer));
        }
    }
}
