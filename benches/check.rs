//! `check`: what the checkout check costs. Checkout + drop of a real connection with no
//! check, and with `test_on_checkout` running `SELECT 1`: on SQLite (in memory, always) and
//! on PostgreSQL (a round trip to the server, when `CYLINDER_POSTGRES_URL` names one).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use cylinder::Pool;

fn check(c: &mut Criterion) {
    let mut group = c.benchmark_group("check");
    group
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    let sqlite = |checked: bool| {
        let builder = Pool::builder().size(2);
        let builder = if checked {
            builder
                .test_on_checkout(|conn: &mut rusqlite::Connection| conn.execute_batch("SELECT 1"))
        } else {
            builder
        };
        builder
            .build(|| Ok(rusqlite::Connection::open_in_memory()?))
            .expect("SQLite opens in memory")
    };
    for (name, pool) in [
        ("sqlite-unchecked", sqlite(false)),
        ("sqlite-select-1", sqlite(true)),
    ] {
        group.bench_function(name, |b| b.iter(|| drop(pool.checkout().unwrap())));
    }
    if let Ok(url) = std::env::var("CYLINDER_POSTGRES_URL") {
        let postgres = |checked: bool| {
            let url = url.clone();
            let builder = Pool::builder().size(2);
            let builder = if checked {
                builder.test_on_checkout(|client: &mut postgres::Client| {
                    client.simple_query("SELECT 1").map(|_| ())
                })
            } else {
                builder
            };
            builder
                .build(move || Ok(postgres::Client::connect(&url, postgres::NoTls)?))
                .expect("the PostgreSQL server answers")
        };
        for (name, pool) in [
            ("postgres-unchecked", postgres(false)),
            ("postgres-select-1", postgres(true)),
        ] {
            group.bench_function(name, |b| b.iter(|| drop(pool.checkout().unwrap())));
        }
    }
    group.finish();
}

criterion_group!(benches, check);
criterion_main!(benches);
