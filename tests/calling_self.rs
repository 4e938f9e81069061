//! A handler that calls its own actor gets `Error::CallingSelf` at once (Erlang's
//! `calling_self`), whether the call runs inline on the caller's thread or on the actor's
//! own thread; it neither hangs nor wedges the actor for other callers.

mod common;

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use common::within;
use cylinder::{Actor, Behaviour, Error};

enum Ask {
    /// Calls the actor itself with `Inner`, and answers what that call returned.
    Outer,
    Inner,
}

/// A behaviour whose `Outer` handler calls its own actor. `INLINE` is its `INLINE_CALLS`.
struct CallsItself<const INLINE: bool> {
    me: Arc<OnceLock<Weak<Actor<CallsItself<INLINE>>>>>,
}

impl<const INLINE: bool> Behaviour for CallsItself<INLINE> {
    type Request = Ask;
    type Reply = Result<u32, Error>;
    const INLINE_CALLS: bool = INLINE;

    fn handle_call(&mut self, ask: Ask) -> Result<u32, Error> {
        match ask {
            Ask::Outer => {
                let me = self
                    .me
                    .get()
                    .and_then(Weak::upgrade)
                    .expect("the actor is known");
                me.call(Ask::Inner)?
            }
            Ask::Inner => Ok(1),
        }
    }
}

fn spawn<const INLINE: bool>() -> Arc<Actor<CallsItself<INLINE>>> {
    let me = Arc::new(OnceLock::new());
    let actor = Arc::new(Actor::spawn(CallsItself { me: me.clone() }).unwrap());
    me.set(Arc::downgrade(&actor)).ok().unwrap();
    actor
}

/// Makes the outer call (through the mailbox if `mailbox`, else with `call`), and checks
/// that the handler's call to its own actor was refused with `CallingSelf` and that the
/// actor still serves.
fn refused<const INLINE: bool>(mailbox: bool) {
    let actor = spawn::<INLINE>();
    let caller = actor.clone();
    let got = within(Duration::from_secs(3), move || {
        if mailbox {
            caller.call_timeout(Ask::Outer, Duration::from_secs(10))
        } else {
            caller.call(Ask::Outer)
        }
    });
    assert!(
        matches!(got, Some(Ok(Err(Error::CallingSelf)))),
        "INLINE_CALLS {INLINE}, through the mailbox: {mailbox}: a handler calling its own actor \
         got {got:?} (None: it hung)"
    );
    let caller = actor.clone();
    let next = within(Duration::from_secs(3), move || caller.call(Ask::Inner));
    assert!(
        matches!(next, Some(Ok(Ok(1)))),
        "the actor after its handler called it: {next:?} (None: wedged)"
    );
}

#[test]
fn a_handler_calling_its_own_actor_inline_gets_calling_self() {
    refused::<true>(false);
}

#[test]
fn a_handler_calling_its_own_actor_on_the_actors_thread_gets_calling_self() {
    refused::<true>(true);
}

#[test]
fn a_handler_of_an_actor_without_inline_calls_calling_its_own_actor_gets_calling_self() {
    refused::<false>(false);
}
