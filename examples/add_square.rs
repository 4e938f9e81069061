//! gruff's example application: an `add` pool of eight worker threads and a `square` pool of
//! four, queried through transactions, then stopped cleanly.
//!
//! Run it with `cargo run --example add_square`.

use cylinder::{Actor, Behaviour, Error, Pool};

/// `add_wrk`: replies to `{add, A, B}` with `A + B`.
struct AddWorker;

impl Behaviour for AddWorker {
    type Request = (i64, i64);
    type Reply = i64;
    fn handle_call(&mut self, (a, b): (i64, i64)) -> i64 {
        a + b
    }
}

/// `square_wrk`: replies to `{square, X}` with `X * X`.
struct SquareWorker;

impl Behaviour for SquareWorker {
    type Request = i64;
    type Reply = i64;
    fn handle_call(&mut self, x: i64) -> i64 {
        x * x
    }
}

/// The example application: its two pools.
struct Example {
    add: Pool<Actor<AddWorker>>,
    square: Pool<Actor<SquareWorker>>,
}

impl Example {
    fn start() -> Result<Example, Error> {
        Ok(Example {
            add: Pool::builder()
                .size(8)
                .name("add")
                // A pool of actors replaces one whose handler panicked: this line tells it
                // how to see that an actor died.
                .is_alive(Actor::is_alive)
                .build(|| Ok(Actor::spawn(AddWorker)?))?,
            square: Pool::builder()
                .size(4)
                .name("square")
                .is_alive(Actor::is_alive)
                .build(|| Ok(Actor::spawn(SquareWorker)?))?,
        })
    }

    fn add(&self, a: i64, b: i64) -> Result<i64, Error> {
        self.add.transaction(|worker| worker.call((a, b)))?
    }

    fn square(&self, x: i64) -> Result<i64, Error> {
        self.square.transaction(|worker| worker.call(x))?
    }
}

fn main() -> Result<(), Error> {
    let example = Example::start()?;
    println!("example:start().");
    println!(
        "ok  (add: {} workers, square: {} workers)",
        example.add.stats().size,
        example.square.stats().size
    );

    let sum = example.add(1, 2);
    println!("example:add( 1, 2 ).\n{sum:?}");
    assert_eq!(sum.as_ref().ok(), Some(&3));

    let squared = example.square(4);
    println!("example:square( 4 ).\n{squared:?}");
    assert_eq!(squared.as_ref().ok(), Some(&16));

    example.add.close();
    example.square.close();
    println!("example:stop().");
    println!(
        "ok  (add closed: {}, square closed: {})",
        example.add.is_closed(),
        example.square.is_closed()
    );
    assert!(matches!(example.add(1, 2), Err(Error::Closed)));
    Ok(())
}
