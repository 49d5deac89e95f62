//! The cap on concurrent connections (`--max-connections`, SPEC §6), built so that slow or
//! flooding clients cannot starve the local monitors the daemon exists for.
//!
//! A plain semaphore is not enough: once idle connections fill it, a fresh client waits in the
//! kernel's backlog until the header timeout frees a slot, and a flood that reconnects keeps it
//! full. So when a new connection finds no free slot, the idle connection that has been quiet
//! the longest — one with no request in its handler: a keep-alive connection between requests,
//! or a client that has not finished sending its header — is closed to make room, as nginx
//! reuses keep-alive connections. Connections with a request being handled are never closed;
//! when every slot is busy, accepting waits for one to finish.
//!
//! The same table drives shutdown: `close_all` tells every connection to finish the request it
//! is serving and close, and `all_closed` resolves once every slot is free.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use atomic_waker::AtomicWaker;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long admission waits for an evicted connection to close before trying another.
const EVICTION_RETRY: Duration = Duration::from_millis(50);

/// The open connections and the slots they hold.
pub struct ConnectionSlots {
    permits: Arc<Semaphore>,
    max: usize,
    open: Mutex<HashMap<u64, Arc<Activity>>>,
    next_id: AtomicU64,
    /// Counts acceptances and finished requests: the order `Activity::last_active` records.
    activity_clock: AtomicU64,
    /// Set by `close_all`: every connection, open or yet to be polled, is to close.
    closing_all: AtomicBool,
}

/// What eviction needs to know about one connection.
#[derive(Debug)]
struct Activity {
    /// Requests in the handler right now; a connection is idle when this is 0.
    busy: AtomicUsize,
    /// When the connection was accepted or last finished a request, as a tick of
    /// `activity_clock`: eviction needs only the order, and a counter costs less than a clock.
    last_active: AtomicU64,
    /// Set when the connection was asked to close, so it is not picked twice.
    evicting: AtomicBool,
    /// The connection's task, woken when `evicting` is set or all connections are to close.
    evict: AtomicWaker,
}

impl ConnectionSlots {
    /// Room for `max` connections at once (at least one).
    pub fn new(max: usize) -> Arc<ConnectionSlots> {
        // At most what one `acquire_many` can wait for, so `all_closed` waits for every slot.
        let max = max.clamp(1, u32::MAX as usize);
        Arc::new(ConnectionSlots {
            permits: Arc::new(Semaphore::new(max)),
            max,
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            activity_clock: AtomicU64::new(0),
            closing_all: AtomicBool::new(false),
        })
    }

    /// The cap in force.
    pub fn max(&self) -> usize {
        self.max
    }

    /// A slot for a connection just accepted, or `None` when every slot is taken.
    pub fn try_admit(self: &Arc<Self>) -> Option<Connection> {
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        Some(self.register(permit))
    }

    /// A slot for a connection just accepted, closing idle connections to make room.
    pub async fn admit(self: &Arc<Self>) -> Connection {
        loop {
            if let Some(connection) = self.try_admit() {
                return connection;
            }
            // With nothing idle, every slot is serving a request: wait for one to end.
            let evicted = self.evict_idlest();
            let wait = self.permits.clone().acquire_owned();
            let permit = if evicted {
                match tokio::time::timeout(EVICTION_RETRY, wait).await {
                    Ok(permit) => permit,
                    Err(_) => continue,
                }
            } else {
                wait.await
            };
            // The semaphore is never closed, so acquiring only fails if that changes.
            if let Ok(permit) = permit {
                return self.register(permit);
            }
        }
    }

    /// Asks the connection idle the longest to close; false when none is idle.
    pub fn evict_idlest(&self) -> bool {
        let open = self.lock();
        let idlest = open
            .values()
            .filter(|a| a.busy.load(Ordering::SeqCst) == 0 && !a.evicting.load(Ordering::SeqCst))
            .min_by_key(|a| a.last_active.load(Ordering::SeqCst));
        match idlest {
            Some(activity) => {
                activity.evicting.store(true, Ordering::SeqCst);
                activity.evict.wake();
                true
            }
            None => false,
        }
    }

    /// Tells every connection to close once the request it is serving (if any) is answered:
    /// for shutdown, after the listener is closed.
    pub fn close_all(&self) {
        self.closing_all.store(true, Ordering::SeqCst);
        for activity in self.lock().values() {
            activity.evict.wake();
        }
    }

    /// Resolves once every connection has closed and freed its slot.
    pub async fn all_closed(&self) {
        // `new` keeps `max` within a u32.
        let all = u32::try_from(self.max).unwrap_or(u32::MAX);
        // The semaphore is never closed; should that change, there is nothing left to wait for.
        let _ = self.permits.acquire_many(all).await;
    }

    fn register(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> Connection {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let activity = Arc::new(Activity {
            busy: AtomicUsize::new(0),
            last_active: AtomicU64::new(self.tick()),
            evicting: AtomicBool::new(false),
            evict: AtomicWaker::new(),
        });
        self.lock().insert(id, activity.clone());
        Connection {
            id,
            slots: self.clone(),
            activity,
            _permit: permit,
        }
    }

    fn tick(&self) -> u64 {
        self.activity_clock.fetch_add(1, Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Arc<Activity>>> {
        // The map stays consistent across a panic: every update is one insert or remove.
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One admitted connection's slot; dropping it frees the slot.
pub struct Connection {
    id: u64,
    slots: Arc<ConnectionSlots>,
    activity: Arc<Activity>,
    _permit: OwnedSemaphorePermit,
}

impl Connection {
    /// Marks a request as being handled until the guard drops; busy connections are not evicted.
    pub fn busy(&self) -> BusyGuard {
        self.activity.busy.fetch_add(1, Ordering::SeqCst);
        BusyGuard {
            activity: self.activity.clone(),
            slots: self.slots.clone(),
        }
    }

    /// Resolves when the connection is to close: evicted to make room (it is idle, drop it), or
    /// shutdown (let it answer the request in flight, then close).
    pub fn told_to_close(&self) -> ToldToClose<'_> {
        ToldToClose {
            activity: &self.activity,
            slots: &self.slots,
        }
    }
}

/// Why a connection is told to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// Evicted while idle to make room: dropping it closes it.
    Evicted,
    /// The daemon is shutting down: finish the request in flight, then close.
    Shutdown,
}

/// The future `Connection::told_to_close` returns. It is polled beside the connection on every
/// wake, so it is two flags and a registered waker (a `Notify` waiter, and hyper-util's
/// graceful watch, each took a lock on every poll). The waker slot holds one waker: only the
/// connection's own task awaits it.
pub struct ToldToClose<'a> {
    activity: &'a Activity,
    slots: &'a ConnectionSlots,
}

impl Future for ToldToClose<'_> {
    type Output = Close;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Close> {
        let activity = self.activity;
        // Registered before the flags are read, so a signal in between still wakes the task.
        activity.evict.register(cx.waker());
        if self.slots.closing_all.load(Ordering::SeqCst) {
            return Poll::Ready(Close::Shutdown);
        }
        if activity.evicting.load(Ordering::SeqCst) {
            if activity.busy.load(Ordering::SeqCst) == 0 {
                return Poll::Ready(Close::Evicted);
            }
            // A request arrived meanwhile: keep serving, and let eviction pick again later.
            activity.evicting.store(false, Ordering::SeqCst);
        }
        Poll::Pending
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.slots.lock().remove(&self.id);
    }
}

/// Holds a connection busy while its request is in the handler.
pub struct BusyGuard {
    activity: Arc<Activity>,
    slots: Arc<ConnectionSlots>,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.activity
            .last_active
            .store(self.slots.tick(), Ordering::SeqCst);
        self.activity.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls `future` once, with a waker that does nothing.
    fn poll_once<F: Future>(future: Pin<&mut F>) -> Poll<F::Output> {
        future.poll(&mut Context::from_waker(std::task::Waker::noop()))
    }

    #[tokio::test]
    async fn a_full_table_evicts_the_idlest_idle_connection() {
        let slots = ConnectionSlots::new(2);
        let first = slots.try_admit().unwrap();
        let second = slots.try_admit().unwrap();
        assert!(slots.try_admit().is_none());
        // `first` is serving a request: only `second` may go.
        let guard = first.busy();
        let admitting = tokio::spawn({
            let slots = slots.clone();
            async move { slots.admit().await }
        });
        let close = tokio::time::timeout(Duration::from_secs(5), second.told_to_close())
            .await
            .expect("the idle connection is evicted");
        assert_eq!(close, Close::Evicted);
        drop(second);
        let third = tokio::time::timeout(Duration::from_secs(5), admitting)
            .await
            .expect("admitted once a slot is free")
            .unwrap();
        drop(guard);
        drop((first, third));
        assert_eq!(slots.lock().len(), 0);
    }

    #[test]
    fn a_connection_busy_when_asked_to_close_keeps_serving() {
        let slots = ConnectionSlots::new(1);
        let only = slots.try_admit().unwrap();
        let mut evicted = std::pin::pin!(only.told_to_close());
        // Asked to close while idle, but a request arrives before its task looks.
        assert!(slots.evict_idlest());
        let guard = only.busy();
        assert!(
            poll_once(evicted.as_mut()).is_pending(),
            "a busy connection stays"
        );
        assert!(!slots.evict_idlest(), "nor is it picked while busy");
        drop(guard);
        // Idle again, it can be picked again, and then it goes.
        assert!(slots.evict_idlest());
        assert_eq!(poll_once(evicted.as_mut()), Poll::Ready(Close::Evicted));
    }

    #[tokio::test]
    async fn close_all_reaches_busy_and_new_connections_and_all_closed_waits_for_them() {
        let slots = ConnectionSlots::new(3);
        let busy = slots.try_admit().unwrap();
        let _guard = busy.busy();
        slots.close_all();
        // Admitted after the call, not yet polled: it closes all the same.
        let late = slots.try_admit().unwrap();
        for connection in [&busy, &late] {
            let close = tokio::time::timeout(Duration::from_secs(5), connection.told_to_close())
                .await
                .expect("told to close");
            assert_eq!(close, Close::Shutdown);
        }
        let mut all_closed = std::pin::pin!(slots.all_closed());
        assert!(
            poll_once(all_closed.as_mut()).is_pending(),
            "two slots are still taken"
        );
        drop((busy, late));
        tokio::time::timeout(Duration::from_secs(5), all_closed)
            .await
            .expect("every slot is free");
    }

    #[test]
    fn eviction_picks_the_connection_quiet_the_longest() {
        let slots = ConnectionSlots::new(3);
        let (a, b, c) = (
            slots.try_admit().unwrap(),
            slots.try_admit().unwrap(),
            slots.try_admit().unwrap(),
        );
        drop(a.busy()); // `a` answered a request after `c` was accepted
        let evicted = |connection: &Connection| {
            poll_once(std::pin::pin!(connection.told_to_close())).is_ready()
        };
        // Each call picks one more; those picked stay told to close.
        for told in [&["b"][..], &["b", "c"], &["a", "b", "c"]] {
            assert!(slots.evict_idlest());
            let picked: Vec<&str> = [("a", &a), ("b", &b), ("c", &c)]
                .into_iter()
                .filter(|(_, connection)| evicted(connection))
                .map(|(name, _)| name)
                .collect();
            assert_eq!(picked, told);
        }
        assert!(!slots.evict_idlest(), "nothing left to pick");
    }

    #[tokio::test]
    async fn busy_connections_are_never_evicted() {
        let slots = ConnectionSlots::new(1);
        let only = slots.try_admit().unwrap();
        let _guard = only.busy();
        assert!(!slots.evict_idlest());
    }
}
