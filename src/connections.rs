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

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

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
    /// The time origin of `Activity::last_active_ms`.
    started: Instant,
}

/// What eviction needs to know about one connection.
#[derive(Debug)]
struct Activity {
    /// Requests in the handler right now; a connection is idle when this is 0.
    busy: AtomicUsize,
    /// When the connection was accepted or last finished a request (ms since `started`).
    last_active_ms: AtomicU64,
    /// Set when the connection was asked to close, so it is not picked twice.
    evicting: AtomicBool,
    /// The connection's task, woken when `evicting` is set.
    evict: AtomicWaker,
}

impl ConnectionSlots {
    /// Room for `max` connections at once (at least one).
    pub fn new(max: usize) -> Arc<ConnectionSlots> {
        let max = max.max(1);
        Arc::new(ConnectionSlots {
            permits: Arc::new(Semaphore::new(max)),
            max,
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            started: Instant::now(),
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
            .min_by_key(|a| a.last_active_ms.load(Ordering::SeqCst));
        match idlest {
            Some(activity) => {
                activity.evicting.store(true, Ordering::SeqCst);
                activity.evict.wake();
                true
            }
            None => false,
        }
    }

    fn register(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> Connection {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let activity = Arc::new(Activity {
            busy: AtomicUsize::new(0),
            last_active_ms: AtomicU64::new(self.now_ms()),
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

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
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

    /// Resolves when the connection should close to make room, and is idle.
    pub fn evicted(&self) -> Evicted<'_> {
        Evicted {
            activity: &self.activity,
        }
    }
}

/// The future `Connection::evicted` returns. It is polled beside the connection on every wake,
/// so it is a flag and a registered waker (a `Notify` waiter took a lock on each poll). The
/// waker slot holds one waker: only the connection's own task awaits it.
pub struct Evicted<'a> {
    activity: &'a Activity,
}

impl Future for Evicted<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let activity = self.activity;
        // Registered before the flag is read, so an eviction in between still wakes the task.
        activity.evict.register(cx.waker());
        if activity.evicting.load(Ordering::SeqCst) {
            if activity.busy.load(Ordering::SeqCst) == 0 {
                return Poll::Ready(());
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
            .last_active_ms
            .store(self.slots.now_ms(), Ordering::SeqCst);
        self.activity.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        tokio::time::timeout(Duration::from_secs(5), second.evicted())
            .await
            .expect("the idle connection is evicted");
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
        let mut evicted = std::pin::pin!(only.evicted());
        let mut waker_cx = Context::from_waker(std::task::Waker::noop());
        let mut poll_once = || evicted.as_mut().poll(&mut waker_cx).is_ready();
        // Asked to close while idle, but a request arrives before its task looks.
        assert!(slots.evict_idlest());
        let guard = only.busy();
        assert!(!poll_once(), "a busy connection stays");
        assert!(!slots.evict_idlest(), "nor is it picked while busy");
        drop(guard);
        // Idle again, it can be picked again, and then it goes.
        assert!(slots.evict_idlest());
        assert!(poll_once());
    }

    #[tokio::test]
    async fn busy_connections_are_never_evicted() {
        let slots = ConnectionSlots::new(1);
        let only = slots.try_admit().unwrap();
        let _guard = only.busy();
        assert!(!slots.evict_idlest());
    }
}
