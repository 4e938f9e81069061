//! `check`: what the checkout check costs, and what `check_after_idle` saves. Checkout + drop
//! of a real connection with no check, with `test_on_checkout` running `SELECT 1` before
//! every lease (`check_after_idle(0)`), and with the default window of 500 ms (the connection
//! used a moment ago is not checked): on SQLite (in memory, always) and on PostgreSQL (a
//! round trip to the server, when `CYLINDER_POSTGRES_URL` names one).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use cylinder::{Pool, PoolBuilder};

/// How the pool checks: not at all, before every lease, or only after 500 ms idle.
#[derive(Clone, Copy)]
enum Checked {
    No,
    Always,
    AfterIdle,
}

fn with_check<W: Send + 'static>(
    builder: PoolBuilder<W>,
    checked: Checked,
    check: impl Fn(&mut W) -> Result<(), cylinder::BoxError> + Send + Sync + 'static,
) -> PoolBuilder<W> {
    match checked {
        Checked::No => builder,
        Checked::Always => builder
            .check_after_idle(Duration::ZERO)
            .test_on_checkout(check),
        Checked::AfterIdle => builder.test_on_checkout(check),
    }
}

const ROWS: [(&str, Checked); 3] = [
    ("unchecked", Checked::No),
    ("select-1-every-checkout", Checked::Always),
    ("select-1-used-within-500ms", Checked::AfterIdle),
];

fn check(c: &mut Criterion) {
    let mut group = c.benchmark_group("check");
    group
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    for (name, checked) in ROWS {
        let pool = with_check(
            Pool::builder().size(2),
            checked,
            |conn: &mut rusqlite::Connection| Ok(conn.execute_batch("SELECT 1")?),
        )
        .build(|| Ok(rusqlite::Connection::open_in_memory()?))
        .expect("SQLite opens in memory");
        group.bench_function(format!("sqlite-{name}"), |b| {
            b.iter(|| drop(pool.checkout().unwrap()))
        });
    }
    if let Ok(url) = std::env::var("CYLINDER_POSTGRES_URL") {
        for (name, checked) in ROWS {
            let url = url.clone();
            let pool = with_check(
                Pool::builder().size(2),
                checked,
                |client: &mut postgres::Client| Ok(client.simple_query("SELECT 1").map(|_| ())?),
            )
            .build(move || Ok(postgres::Client::connect(&url, postgres::NoTls)?))
            .expect("the PostgreSQL server answers");
            group.bench_function(format!("postgres-{name}"), |b| {
                b.iter(|| drop(pool.checkout().unwrap()))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, check);
criterion_main!(benches);
