//! The one place that names the synchronisation primitives, so that the loom models run the
//! crate's real code: under `--cfg loom` every primitive below is swapped for a loom-visible
//! stand-in with the same calls (see `loom-tests/README.md` for what each stand-in assumes).

pub(crate) use crossbeam::utils::CachePadded;

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};

use std::time::Instant;

/// The calling thread's identity (loom's own under loom, whose threads share one OS thread).
#[cfg(not(loom))]
pub(crate) fn current_thread() -> std::thread::ThreadId {
    std::thread::current().id()
}

/// The calling thread's identity (loom's own under loom, whose threads share one OS thread).
#[cfg(loom)]
pub(crate) fn current_thread() -> loom::thread::ThreadId {
    loom::thread::current().id()
}

/// What [`current_thread`] returns.
#[cfg(not(loom))]
pub(crate) type ThreadId = std::thread::ThreadId;
/// What [`current_thread`] returns.
#[cfg(loom)]
pub(crate) type ThreadId = loom::thread::ThreadId;

#[cfg(not(loom))]
mod imp {
    use std::time::Instant;

    /// A mutex without poisoning: a panic while it is held must not make the pool unusable.
    #[derive(Debug, Default)]
    pub(crate) struct Mutex<T>(parking_lot::Mutex<T>);
    pub(crate) type MutexGuard<'a, T> = parking_lot::MutexGuard<'a, T>;

    impl<T> Mutex<T> {
        #[inline]
        pub(crate) fn new(value: T) -> Self {
            Mutex(parking_lot::Mutex::new(value))
        }
        #[inline]
        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            self.0.lock()
        }
        /// The lock if it is free now; `None` if another thread holds it.
        #[inline]
        pub(crate) fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
            self.0.try_lock()
        }
    }

    #[derive(Debug, Default)]
    pub(crate) struct Condvar(parking_lot::Condvar);

    impl Condvar {
        pub(crate) fn new() -> Self {
            Condvar(parking_lot::Condvar::new())
        }
        /// Waits for a notification or until `deadline` (`None`: no limit).
        /// Returns the guard and whether the deadline passed.
        pub(crate) fn wait_until<'a, T>(
            &self,
            mut guard: MutexGuard<'a, T>,
            deadline: Option<Instant>,
        ) -> (MutexGuard<'a, T>, bool) {
            let timed_out = match deadline {
                None => {
                    self.0.wait(&mut guard);
                    false
                }
                Some(deadline) => self.0.wait_until(&mut guard, deadline).timed_out(),
            };
            (guard, timed_out)
        }
        pub(crate) fn notify_one(&self) {
            self.0.notify_one();
        }
        pub(crate) fn notify_all(&self) {
            self.0.notify_all();
        }
    }

    /// The published snapshot: a lock-free `ArcSwap`.
    pub(crate) struct SnapshotCell<T>(arc_swap::ArcSwap<T>);
    pub(crate) type SnapshotGuard<T> = arc_swap::Guard<std::sync::Arc<T>>;

    impl<T> SnapshotCell<T> {
        pub(crate) fn new(value: std::sync::Arc<T>) -> Self {
            SnapshotCell(arc_swap::ArcSwap::new(value))
        }
        pub(crate) fn load(&self) -> SnapshotGuard<T> {
            self.0.load()
        }
        pub(crate) fn load_full(&self) -> std::sync::Arc<T> {
            self.0.load_full()
        }
        pub(crate) fn store(&self, value: std::sync::Arc<T>) {
            self.0.store(value);
        }
    }

    /// The free-slot queue: a bounded lock-free `ArrayQueue`.
    pub(crate) type FreeQueue<T> = crossbeam::queue::ArrayQueue<T>;

    /// A cell holding at most one value, taken and put with single atomic swaps (crossbeam's
    /// `AtomicCell`, lock-free for pointer-sized values such as `Option<Arc<W>>`).
    pub(crate) struct SwapCell<T>(crossbeam::atomic::AtomicCell<Option<T>>);

    impl<T> SwapCell<T> {
        pub(crate) fn new() -> Self {
            SwapCell(crossbeam::atomic::AtomicCell::new(None))
        }
        pub(crate) fn take(&self) -> Option<T> {
            self.0.take()
        }
        /// Puts `value` in, returning what was there.
        pub(crate) fn put(&self, value: T) -> Option<T> {
            self.0.swap(Some(value))
        }
    }
}

#[cfg(loom)]
mod imp {
    use std::collections::VecDeque;
    use std::time::Instant;

    #[derive(Debug, Default)]
    pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);
    pub(crate) type MutexGuard<'a, T> = loom::sync::MutexGuard<'a, T>;

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Self {
            Mutex(loom::sync::Mutex::new(value))
        }
        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            self.0
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        }
        #[allow(dead_code)] // Parity with the real build; the crate's one try_lock is on an `UnwindMutex`.
        pub(crate) fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
            match self.0.try_lock() {
                Ok(guard) => Some(guard),
                Err(std::sync::TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => None,
            }
        }
    }

    #[derive(Debug, Default)]
    pub(crate) struct Condvar(loom::sync::Condvar);

    impl Condvar {
        pub(crate) fn new() -> Self {
            Condvar(loom::sync::Condvar::new())
        }
        /// Loom has no clock: an untimed wait is loom's wait; a timed wait is modelled as one
        /// whose deadline has already passed, so every interleaving of a timeout with the
        /// other threads' steps is explored.
        pub(crate) fn wait_until<'a, T>(
            &self,
            guard: MutexGuard<'a, T>,
            deadline: Option<Instant>,
        ) -> (MutexGuard<'a, T>, bool) {
            match deadline {
                None => (
                    self.0
                        .wait(guard)
                        .unwrap_or_else(|poisoned| poisoned.into_inner()),
                    false,
                ),
                Some(_) => {
                    loom::thread::yield_now();
                    (guard, true)
                }
            }
        }
        pub(crate) fn notify_one(&self) {
            self.0.notify_one();
        }
        pub(crate) fn notify_all(&self) {
            self.0.notify_all();
        }
    }

    /// Stand-in for a mutex that a panic may unwind through while it is held (parking_lot's,
    /// which does not poison). Loom's `Mutex` keeps its data in a std mutex and panics at
    /// the next lock once a panic has poisoned it, so this one is a loom `AtomicBool` taken
    /// with a compare-and-swap (yielding while it is held: loom's way of modelling a
    /// blocking wait) and released with a store, over data in a std mutex whose poison is
    /// ignored. The std mutex is only ever locked by the holder of the flag, so it never
    /// blocks.
    #[derive(Debug, Default)]
    pub(crate) struct UnwindMutex<T> {
        held: loom::sync::atomic::AtomicBool,
        data: std::sync::Mutex<T>,
    }

    #[derive(Debug)]
    pub(crate) struct UnwindMutexGuard<'a, T> {
        data: Option<std::sync::MutexGuard<'a, T>>,
        held: &'a loom::sync::atomic::AtomicBool,
    }

    impl<T> UnwindMutex<T> {
        pub(crate) fn new(value: T) -> Self {
            UnwindMutex {
                held: loom::sync::atomic::AtomicBool::new(false),
                data: std::sync::Mutex::new(value),
            }
        }
        fn take(&self) -> Option<UnwindMutexGuard<'_, T>> {
            use loom::sync::atomic::Ordering::{Acquire, Relaxed};
            self.held
                .compare_exchange(false, true, Acquire, Relaxed)
                .ok()?;
            let data = self
                .data
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            Some(UnwindMutexGuard {
                data: Some(data),
                held: &self.held,
            })
        }
        pub(crate) fn lock(&self) -> UnwindMutexGuard<'_, T> {
            loop {
                if let Some(guard) = self.take() {
                    return guard;
                }
                loom::thread::yield_now();
            }
        }
        pub(crate) fn try_lock(&self) -> Option<UnwindMutexGuard<'_, T>> {
            self.take()
        }
    }

    impl<T> std::ops::Deref for UnwindMutexGuard<'_, T> {
        type Target = T;
        fn deref(&self) -> &T {
            self.data.as_ref().expect("held until dropped")
        }
    }

    impl<T> std::ops::DerefMut for UnwindMutexGuard<'_, T> {
        fn deref_mut(&mut self) -> &mut T {
            self.data.as_mut().expect("held until dropped")
        }
    }

    impl<T> Drop for UnwindMutexGuard<'_, T> {
        fn drop(&mut self) {
            // The data first: once the flag is down, another thread may lock it.
            self.data = None;
            self.held
                .store(false, loom::sync::atomic::Ordering::Release);
        }
    }

    /// Stand-in for `ArcSwap`: loads and stores are linearizable, as `ArcSwap`'s are.
    pub(crate) struct SnapshotCell<T>(loom::sync::Mutex<std::sync::Arc<T>>);
    pub(crate) type SnapshotGuard<T> = std::sync::Arc<T>;

    impl<T> SnapshotCell<T> {
        pub(crate) fn new(value: std::sync::Arc<T>) -> Self {
            SnapshotCell(loom::sync::Mutex::new(value))
        }
        pub(crate) fn load(&self) -> SnapshotGuard<T> {
            self.0.lock().unwrap().clone()
        }
        pub(crate) fn load_full(&self) -> std::sync::Arc<T> {
            self.load()
        }
        pub(crate) fn store(&self, value: std::sync::Arc<T>) {
            *self.0.lock().unwrap() = value;
        }
    }

    /// Stand-in for crossbeam's `AtomicCell<Option<T>>`: take and put are linearizable
    /// swaps, as `AtomicCell::swap` is (with acquire-release ordering).
    pub(crate) struct SwapCell<T>(loom::sync::Mutex<Option<T>>);

    impl<T> SwapCell<T> {
        pub(crate) fn new() -> Self {
            SwapCell(loom::sync::Mutex::new(None))
        }
        pub(crate) fn take(&self) -> Option<T> {
            self.0.lock().unwrap().take()
        }
        pub(crate) fn put(&self, value: T) -> Option<T> {
            self.0.lock().unwrap().replace(value)
        }
    }

    /// Stand-in for crossbeam's `ArrayQueue`: a bounded FIFO whose push and pop are
    /// linearizable, as `ArrayQueue`'s are. `ArrayQueue::push` claims its slot with a `SeqCst`
    /// read-modify-write of the tail, and `pop` decides "empty" only after a `SeqCst` fence;
    /// the pool relies on both (see `Shared::give_back`): the pop keeps its fence here, and
    /// the push's place in the `SeqCst` order is given to loom by `seqcst_point`.
    pub(crate) struct FreeQueue<T> {
        items: loom::sync::Mutex<VecDeque<T>>,
        capacity: usize,
    }

    impl<T> FreeQueue<T> {
        pub(crate) fn new(capacity: usize) -> Self {
            FreeQueue {
                items: loom::sync::Mutex::new(VecDeque::with_capacity(capacity)),
                capacity,
            }
        }
        pub(crate) fn push(&self, item: T) -> Result<(), T> {
            let mut items = self.items.lock().unwrap();
            if items.len() == self.capacity {
                return Err(item);
            }
            items.push_back(item);
            Ok(())
        }
        pub(crate) fn pop(&self) -> Option<T> {
            loom::sync::atomic::fence(loom::sync::atomic::Ordering::SeqCst);
            self.items.lock().unwrap().pop_front()
        }
        pub(crate) fn len(&self) -> usize {
            self.items.lock().unwrap().len()
        }
    }
}

pub(crate) use imp::{
    Condvar, FreeQueue, Mutex, MutexGuard, SnapshotCell, SnapshotGuard, SwapCell,
};

/// A mutex that a panic may unwind through while it is held (the actor's behaviour, held
/// across its handlers): in the real build it is [`Mutex`] (`parking_lot`'s does not poison).
#[cfg(not(loom))]
pub(crate) type UnwindMutex<T> = Mutex<T>;
#[cfg(loom)]
pub(crate) use imp::UnwindMutex;

/// Marks a point where the real code relies on the total order of `SeqCst` operations. Loom
/// treats `SeqCst` loads, stores and read-modify-writes as acquire-release (it models only
/// `SeqCst` fences fully), so under loom this is a `SeqCst` fence that gives the model the
/// same guarantee; in the real build it is nothing.
#[inline(always)]
pub(crate) fn seqcst_point() {
    #[cfg(loom)]
    fence(Ordering::SeqCst);
}

/// Threads: std's in the real build (plain re-exports). Under loom, loom's threads (which
/// share one OS thread and are scheduled by the model) with a park token of our own: loom's
/// `Thread::unpark` also wakes a thread blocked in `join` or on a mutex, which then trips an
/// assertion inside loom (tokio-rs/loom#249), whereas std's only makes the token available.
pub(crate) mod thread {
    #[cfg(not(loom))]
    pub(crate) use std::thread::{
        current, panicking, park, park_timeout, yield_now, Builder, JoinHandle, Thread,
    };

    #[cfg(loom)]
    pub(crate) use loom::thread::{panicking, yield_now};
    #[cfg(loom)]
    pub(crate) use model::{current, park, park_timeout, Builder, JoinHandle, Thread};

    #[cfg(loom)]
    mod model {
        use std::cell::RefCell;
        use std::sync::Arc;
        use std::time::Duration;

        /// A thread's park token, as std's: `unpark` makes it available, `park` waits for it
        /// and takes it.
        #[derive(Debug, Default)]
        struct Token {
            available: loom::sync::Mutex<bool>,
            given: loom::sync::Condvar,
        }

        impl Token {
            fn park(&self) {
                let mut available = self.available.lock().unwrap();
                while !*available {
                    available = self.given.wait(available).unwrap();
                }
                *available = false;
            }
            fn unpark(&self) {
                *self.available.lock().unwrap() = true;
                self.given.notify_one();
            }
        }

        loom::thread_local! {
            /// This thread's token: made at its first use, or by `Builder::spawn`.
            static TOKEN: RefCell<Option<Arc<Token>>> = RefCell::new(None);
        }

        fn my_token() -> Arc<Token> {
            TOKEN.with(|token| token.borrow_mut().get_or_insert_with(Arc::default).clone())
        }

        /// A thread's handle: loom's, and its park token. Public (unnamable) because
        /// `Actor::thread` returns it.
        #[derive(Clone, Debug)]
        #[allow(unreachable_pub)]
        pub struct Thread {
            thread: loom::thread::Thread,
            token: Arc<Token>,
        }

        #[allow(unreachable_pub)]
        impl Thread {
            /// The thread's id.
            pub fn id(&self) -> loom::thread::ThreadId {
                self.thread.id()
            }
            /// The thread's name.
            pub fn name(&self) -> Option<&str> {
                self.thread.name()
            }
            /// Makes the thread's park token available.
            pub fn unpark(&self) {
                self.token.unpark();
            }
        }

        pub(crate) fn current() -> Thread {
            Thread {
                thread: loom::thread::current(),
                token: my_token(),
            }
        }

        pub(crate) fn park() {
            my_token().park();
        }

        /// Loom has no clock: a timed park is modelled as one whose time ran out at once (a
        /// yield to the other threads), which a real `park_timeout` may also do (it may
        /// return early, spuriously or because the time passed). Its callers re-check what
        /// they wait for, and their deadline, after it returns. The token is left as it is.
        pub(crate) fn park_timeout(_timeout: Duration) {
            loom::thread::yield_now();
        }

        #[derive(Debug)]
        pub(crate) struct JoinHandle<T> {
            handle: loom::thread::JoinHandle<T>,
            thread: Thread,
        }

        impl<T> JoinHandle<T> {
            pub(crate) fn join(self) -> std::thread::Result<T> {
                self.handle.join()
            }
            pub(crate) fn thread(&self) -> &Thread {
                &self.thread
            }
        }

        #[derive(Debug)]
        pub(crate) struct Builder(loom::thread::Builder);

        impl Builder {
            pub(crate) fn new() -> Self {
                Builder(loom::thread::Builder::new())
            }
            pub(crate) fn name(self, name: String) -> Self {
                Builder(self.0.name(name))
            }
            pub(crate) fn spawn<F, T>(self, f: F) -> std::io::Result<JoinHandle<T>>
            where
                F: FnOnce() -> T + Send + 'static,
                T: Send + 'static,
            {
                let token = Arc::new(Token::default());
                let its_token = token.clone();
                let handle = self.0.spawn(move || {
                    TOKEN.with(|token| *token.borrow_mut() = Some(its_token));
                    f()
                })?;
                let thread = Thread {
                    thread: handle.thread().clone(),
                    token,
                };
                Ok(JoinHandle { handle, thread })
            }
        }
    }
}

/// `std::thread_local!` with a `const` initialiser, or under loom `loom::thread_local!`:
/// loom's threads share one OS thread, so a std thread-local would be shared by all of them
/// (and would outlive the execution that filled it).
#[cfg(not(loom))]
macro_rules! per_thread {
    ($(#[$attr:meta])* static $name:ident: $t:ty = $init:expr;) => {
        std::thread_local! {
            $(#[$attr])* static $name: $t = const { $init };
        }
    };
}

/// `std::thread_local!` with a `const` initialiser, or under loom `loom::thread_local!`:
/// loom's threads share one OS thread, so a std thread-local would be shared by all of them
/// (and would outlive the execution that filled it).
#[cfg(loom)]
macro_rules! per_thread {
    ($(#[$attr:meta])* static $name:ident: $t:ty = $init:expr;) => {
        loom::thread_local! {
            $(#[$attr])* static $name: $t = $init;
        }
    };
}

pub(crate) use per_thread;

/// `now + timeout`, or `None` (wait without limit) when that is past the end of time,
/// as it is for `Duration::MAX`.
pub(crate) fn deadline_after(timeout: std::time::Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}
