// SENTINEL PATCH: the keep-alive pool of idle upstream connections (replaces the use of
// `pingora_pool::ConnectionPool` by `TransportConnector`).
//
// Licensed under the Apache License, Version 2.0, like the rest of this crate. Tested through
// the public `TransportConnector` API in Sentinel's tests/upstream_pool.rs.

//! Idle upstream connections kept for reuse.
//!
//! Pingora's pool cost every request a spawned watcher task, a oneshot channel, an LRU
//! entry, an `Arc<Mutex<Stream>>` and a `getpeername` before reuse. Here a connection is
//! parked in a per-connector map under its peer's reuse hash, and one watcher task per
//! connector looks after all of them: the readiness check that already runs when a
//! connection is released registers the watcher's waker with the socket, so the watcher
//! only runs when an idle socket turns readable (the server closed it or sent bytes out of
//! turn: it is dropped, as Envoy closes such a connection at once) or when an idle timeout
//! is due. Releasing and reusing a connection is one short critical section each.
//!
//! Connections are kept per thread, as Envoy keeps a pool per worker: a socket is registered
//! with the event loop of the thread that connected it, and a request served on another
//! thread would have every one of its wake-ups cross threads.

use super::ConnectorMetrics;
use crate::protocols::Stream;
use futures::task::noop_waker_ref;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Instant;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::Sleep;

struct Idle {
    stream: Stream,
    since: Instant,
    deadline: Option<Instant>,
}

#[derive(Default)]
struct State {
    /// Idle connections per (reuse hash, thread), the most recently released last.
    by_key: HashMap<(u64, u32), Vec<Idle>>,
    total: usize,
    /// The watcher's waker, once it has run.
    watcher: Option<Waker>,
    watcher_spawned: bool,
    /// The deadline the watcher's timer is set for.
    armed: Option<Instant>,
}

/// The idle connections of one [`super::TransportConnector`].
pub(crate) struct IdlePool {
    state: Mutex<State>,
    capacity: usize,
    metrics: ConnectorMetrics,
}

thread_local! {
    /// This thread's number, part of the pool's key.
    static THREAD: u32 = {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    };
}

fn key_here(key: u64) -> (u64, u32) {
    (key, THREAD.with(|t| *t))
}

/// What a readiness check of an idle connection found.
enum Check {
    /// Nothing to read: the connection can be reused.
    Idle,
    /// Closed, broken, or the server sent bytes nobody asked for.
    Unusable,
}

/// Polls `stream` for readability with `waker`, which the socket keeps and wakes when it
/// turns readable. No system call is made unless the reactor has already seen it readable.
fn check(stream: &mut Stream, waker: &Waker, metrics: &ConnectorMetrics) -> Check {
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    let mut cx = Context::from_waker(waker);
    match Pin::new(stream).poll_read(&mut cx, &mut buf) {
        Poll::Pending => Check::Idle,
        Poll::Ready(Ok(())) => {
            if !buf.filled().is_empty() {
                log::warn!("Unexpected data read in idle connection");
                metrics.unexpected_data();
            } else {
                log::debug!("Idle connection is closed");
            }
            Check::Unusable
        }
        Poll::Ready(Err(e)) => {
            log::debug!("Idle connection is broken: {e:?}");
            Check::Unusable
        }
    }
}

impl IdlePool {
    pub(crate) fn new(capacity: usize, metrics: ConnectorMetrics) -> Arc<Self> {
        Arc::new(IdlePool {
            state: Mutex::new(State::default()),
            capacity,
            metrics,
        })
    }

    /// Takes an idle connection this thread released under `key` that `matches` accepts, most
    /// recently released first. Connections found closed on the way are dropped.
    pub(crate) fn take(&self, key: u64, matches: impl Fn(&Stream) -> bool) -> Option<Stream> {
        let mut state = self.state.lock();
        let list = state.by_key.get_mut(&key_here(key))?;
        let mut found = None;
        let mut dropped = 0;
        while let Some(mut idle) = list.pop() {
            if matches!(
                check(&mut idle.stream, noop_waker_ref(), &self.metrics),
                Check::Idle
            ) && matches(&idle.stream)
            {
                found = Some(idle.stream);
                break;
            }
            dropped += 1;
        }
        state.total -= dropped + usize::from(found.is_some());
        found
    }

    /// Parks `stream` for reuse under `key` by this thread; `false` (and the stream is closed)
    /// when it is not reusable.
    pub(crate) fn put(
        self: &Arc<Self>,
        mut stream: Stream,
        key: u64,
        idle_timeout: Option<std::time::Duration>,
    ) -> bool {
        let mut state = self.state.lock();
        let waker = state.watcher.as_ref().unwrap_or(noop_waker_ref());
        if matches!(check(&mut stream, waker, &self.metrics), Check::Unusable) {
            return false;
        }
        let key = key_here(key);
        let since = Instant::now();
        let deadline = idle_timeout.map(|t| since + t);
        if state.total >= self.capacity {
            // Full: the least recently released connection of this peer makes room, or, if
            // this peer has none parked, the new one is closed.
            match state.by_key.get_mut(&key).filter(|l| !l.is_empty()) {
                Some(list) => {
                    let evicted = list.remove(0);
                    self.metrics.evicted(evicted.since.elapsed());
                    state.total -= 1;
                }
                None => return false,
            }
        }
        // A deadline earlier than the watcher's timer needs the watcher to set it again.
        let rearm = deadline.is_some_and(|d| state.armed.is_none_or(|a| d < a));
        state.by_key.entry(key).or_default().push(Idle {
            stream,
            since,
            deadline,
        });
        state.total += 1;
        if !state.watcher_spawned {
            state.watcher_spawned = true;
            pingora_runtime::current_handle().spawn(watch(Arc::downgrade(self)));
        } else if rearm {
            if let Some(w) = &state.watcher {
                w.wake_by_ref();
            }
        }
        true
    }

    /// One pass of the watcher: drops the idle connections that are due or unusable,
    /// registers `cx`'s waker with every remaining one, and returns the next deadline.
    fn sweep(&self, cx: &Context<'_>) -> Option<Instant> {
        let mut state = self.state.lock();
        let state = &mut *state;
        if !state
            .watcher
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            state.watcher = Some(cx.waker().clone());
        }
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        let mut total = 0;
        state.by_key.retain(|_, list| {
            list.retain_mut(|idle| {
                if idle.deadline.is_some_and(|d| d <= now) {
                    log::debug!("idle connection timed out");
                    return false;
                }
                if matches!(
                    check(&mut idle.stream, cx.waker(), &self.metrics),
                    Check::Unusable
                ) {
                    return false;
                }
                next = match (next, idle.deadline) {
                    (Some(n), Some(d)) => Some(n.min(d)),
                    (n, d) => n.or(d),
                };
                true
            });
            total += list.len();
            !list.is_empty()
        });
        state.total = total;
        state.armed = next;
        next
    }
}

impl Drop for IdlePool {
    fn drop(&mut self) {
        // Let the watcher see that its pool is gone and end.
        if let Some(w) = self.state.get_mut().watcher.take() {
            w.wake();
        }
    }
}

/// The watcher task of one pool; ends when the pool is dropped.
async fn watch(pool: Weak<IdlePool>) {
    let mut timer: Option<Pin<Box<Sleep>>> = None;
    poll_fn(|cx| loop {
        let Some(pool) = pool.upgrade() else {
            return Poll::Ready(());
        };
        let Some(next) = pool.sweep(cx) else {
            timer = None;
            return Poll::Pending;
        };
        let next = tokio::time::Instant::from_std(next);
        match &mut timer {
            Some(t) if t.deadline() == next => {}
            Some(t) => t.as_mut().reset(next),
            None => timer = Some(Box::pin(tokio::time::sleep_until(next))),
        }
        if let Some(t) = &mut timer {
            if t.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        // The timer fired: sweep again to drop what is due.
    })
    .await
}
