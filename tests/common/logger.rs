//! The application's logger as the tests play it: the crate's log lines are user code (the
//! logger may block, panic or call back into the pool), so tests arm hooks on them.
//!
//! One logger per process (`logging` installs it once): it records every line, and for a
//! line containing every `|`-separated part of a text a test armed (`on_log`, `on_each_log`)
//! it runs that test's hook. Tests name their own pool in the text, so they do not meet.

use std::sync::{Arc, Mutex, Once};

type LogHook = Arc<dyn Fn() + Send + Sync>;

/// A hook armed for the lines containing `wanted`.
struct Armed {
    wanted: String,
    /// Runs for every such line, not just the next one.
    sticky: bool,
    hook: LogHook,
}

struct Hooked;

static LOGGER: Hooked = Hooked;
static INSTALL: Once = Once::new();
static ARMED: Mutex<Vec<Armed>> = Mutex::new(Vec::new());
/// Every line written so far (tests wait on them).
static WRITTEN: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn matches(wanted: &str, text: &str) -> bool {
    wanted.split('|').all(|part| text.contains(part))
}

impl log::Log for Hooked {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        let text = record.args().to_string();
        // Taken out (or cloned) before it runs: a hook may arm, disarm or log itself.
        let hook = {
            let mut armed = ARMED.lock().unwrap();
            let at = armed.iter().position(|a| matches(&a.wanted, &text));
            at.map(|at| {
                if armed[at].sticky {
                    armed[at].hook.clone()
                } else {
                    armed.swap_remove(at).hook
                }
            })
        };
        WRITTEN.lock().unwrap().push(text);
        if let Some(hook) = hook {
            hook();
        }
    }

    fn flush(&self) {}
}

/// Installs the logger, at every level (once per process).
pub fn logging() {
    INSTALL.call_once(|| {
        log::set_logger(&LOGGER).unwrap();
        log::set_max_level(log::LevelFilter::Trace);
    });
}

fn arm(wanted: &str, sticky: bool, hook: impl Fn() + Send + Sync + 'static) {
    ARMED.lock().unwrap().push(Armed {
        wanted: wanted.to_string(),
        sticky,
        hook: Arc::new(hook),
    });
}

/// Runs `hook` for the next line containing every `|`-separated part of `wanted`.
pub fn on_log(wanted: &str, hook: impl Fn() + Send + Sync + 'static) {
    arm(wanted, false, hook);
}

/// Runs `hook` for every line containing every `|`-separated part of `wanted`, until
/// `disarm`.
pub fn on_each_log(wanted: &str, hook: impl Fn() + Send + Sync + 'static) {
    arm(wanted, true, hook);
}

/// Disarms every hook whose text starts with `pool` (a pool's name).
pub fn disarm(pool: &str) {
    ARMED
        .lock()
        .unwrap()
        .retain(|a| !a.wanted.starts_with(pool));
}

/// How many lines written so far contain every `|`-separated part of `wanted`.
pub fn written(wanted: &str) -> usize {
    WRITTEN
        .lock()
        .unwrap()
        .iter()
        .filter(|text| matches(wanted, text))
        .count()
}
