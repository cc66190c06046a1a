//! [`ListenWatch`]: learns when rumqttd's listeners are up, or why one
//! failed, from rumqttd's own log events.
//!
//! rumqttd binds each listener in a thread of its own and reports neither
//! success nor failure to its caller; it only logs. Its events "Listening
//! for remote connections" (after a successful bind) and "Server error"
//! (a failed bind) are emitted on the listener's thread, which rumqttd
//! names after the listener. The [`ListenWatchLayer`] catches them, so the
//! sandbox reports ready only when rumqttd really listens, and fails with
//! rumqttd's reason otherwise. The binary installs the layer next to its
//! log output; the events are logged as usual.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use tracing::{
    Event, Subscriber,
    field::{Field, Visit},
};
use tracing_subscriber::{Layer, layer::Context};

/// What rumqttd said about one listener.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ListenState {
    /// It is accepting connections.
    Listening,
    /// Its thread ended with this error.
    Failed(String),
}

/// Shared between the layer (writer) and the watch (reader).
#[derive(Debug, Default)]
struct Shared {
    /// Listener name → state.
    states: Mutex<HashMap<String, ListenState>>,
    /// Signalled on every change.
    changed: Condvar,
}

/// Waits for rumqttd's listeners; see the module docs.
#[derive(Debug, Clone)]
pub struct ListenWatch {
    /// What the layer has seen.
    shared: Arc<Shared>,
}

/// The `tracing` layer feeding a [`ListenWatch`]; install it in the global
/// subscriber (rumqttd's threads log through the global dispatcher only).
#[derive(Debug)]
pub struct ListenWatchLayer {
    /// Where seen states go.
    shared: Arc<Shared>,
}

/// A watch and the layer that feeds it.
pub fn listen_watch() -> (ListenWatchLayer, ListenWatch) {
    let shared = Arc::new(Shared::default());
    (
        ListenWatchLayer {
            shared: Arc::clone(&shared),
        },
        ListenWatch { shared },
    )
}

impl ListenWatch {
    /// Waits until the listener `name` listens; `Err` with rumqttd's
    /// reason if it failed, or with a timeout message.
    pub fn wait(&self, name: &str, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut states = self
            .shared
            .states
            .lock()
            .map_err(|_| "listen watch poisoned".to_owned())?;
        loop {
            match states.get(name) {
                Some(ListenState::Listening) => return Ok(()),
                Some(ListenState::Failed(reason)) => return Err(reason.clone()),
                None => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "rumqttd did not report listener {name} up within {timeout:?} \
                     (is the ListenWatchLayer installed in the global subscriber?)"
                ));
            }
            states = self
                .shared
                .changed
                .wait_timeout(states, left)
                .map_err(|_| "listen watch poisoned".to_owned())?
                .0;
        }
    }
}

impl<S: Subscriber> Layer<S> for ListenWatchLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if !event.metadata().target().starts_with("rumqttd") {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let state = if fields.message == "Listening for remote connections" {
            ListenState::Listening
        } else if fields.message.starts_with("Server error") {
            ListenState::Failed(fields.error)
        } else {
            return;
        };
        let thread = std::thread::current();
        let Some(name) = fields.config.or_else(|| thread.name().map(str::to_owned)) else {
            return;
        };
        if let Ok(mut states) = self.shared.states.lock() {
            states.insert(name, state);
            self.shared.changed.notify_all();
        }
    }
}

/// The fields of a rumqttd event that matter here.
#[derive(Default)]
struct Fields {
    /// The event's message.
    message: String,
    /// `config`: the listener name, on the "Listening" event.
    config: Option<String>,
    /// `error`: why a server thread ended.
    error: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "config" => self.config = Some(value.to_owned()),
            "message" => self.message = value.to_owned(),
            "error" => self.error = value.to_owned(),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "config" => self.config = Some(format!("{value:?}").trim_matches('"').to_owned()),
            "error" => self.error = format!("{value:?}"),
            _ => {}
        }
    }
}
