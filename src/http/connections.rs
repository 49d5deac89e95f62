//! The cap on concurrent connections (`--max-connections`, SPEC §6), built so that slow or
//! flooding clients cannot starve the local monitors the daemon exists for.
//!
//! A plain semaphore is not enough: once slow clients fill it, a fresh client waits in the
//! kernel's backlog until the read timeout frees a slot, and a flood that reconnects keeps it
//! full. So when a new connection finds no free slot, the connection that has made the least
//! progress is closed to make room (SPEC §8 "Slow clients"): of those without a whole request
//! in the handler — a keep-alive connection between requests, a client still sending its
//! header, or one trickling its body — the one whose pending request began the longest ago.
//! Every request must arrive whole within the read timeout, so that one is also the slowest.
//! A connection whose request has arrived whole is never closed: its caller may already have
//! been acted on. When every slot holds such a request, accepting waits for one to be answered.
//!
//! The table also gives each request its deadline: the read timeout counted from the moment
//! the connection began waiting for it (accepted, or done with its previous request), which is
//! when hyper's header timer starts too, so header and body share one budget.
//!
//! The same table drives shutdown: `close_all` tells every connection to finish the request it
//! is serving and close, and `all_closed` resolves once every slot is free.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use atomic_waker::AtomicWaker;
use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

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
    /// The origin of `Activity::waiting_since`.
    epoch: Instant,
    /// Set by `close_all`: every connection, open or yet to be polled, is to close.
    closing_all: AtomicBool,
}

/// Where a connection is with its current request (one at a time: HTTP/1 serves in order).
const WAITING: u8 = 0;
/// The head has arrived and the handler is reading the body.
const RECEIVING: u8 = 1;
/// The whole request has arrived: the handler may act on it, so the connection stays.
const HANDLING: u8 = 2;

/// What eviction needs to know about one connection.
///
/// No field needs a sequentially consistent order: `phase` is written only by the connection's
/// own task, which is also the one that decides on an eviction; a flag is stored before `evict`
/// is woken and loaded after it is registered, and the waker's own atomics order the two; the
/// times only rank connections. So stores are release (a plain store on x86, where a SeqCst
/// one is a locked exchange: five or six of them a request, ~6 ns each on the benchmark's
/// host), loads acquire, and the times relaxed.
#[derive(Debug)]
struct Activity {
    /// `WAITING`, `RECEIVING` or `HANDLING`; only the connection's own task changes it, so a
    /// request never moves on to `HANDLING` between an eviction check and the drop it leads to.
    phase: AtomicU8,
    /// When the connection was accepted or last finished a request, as a tick of
    /// `activity_clock`: eviction needs only the order, and a counter costs less than a clock.
    last_active: AtomicU64,
    /// The same moment as nanoseconds since `ConnectionSlots::epoch`: where the pending
    /// request's read deadline counts from.
    waiting_since: AtomicU64,
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
            epoch: Instant::now(),
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

    /// A slot for a connection just accepted, closing the slowest connections to make room.
    pub async fn admit(self: &Arc<Self>) -> Connection {
        loop {
            if let Some(connection) = self.try_admit() {
                return connection;
            }
            // With nothing to close, every slot holds a whole request: wait for one to end.
            let evicted = self.evict_slowest();
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

    /// Asks the connection that has made the least progress to close: of those without a whole
    /// request, the one whose pending request began the longest ago. False when there is none.
    pub fn evict_slowest(&self) -> bool {
        let open = self.lock();
        let slowest = open
            .values()
            .filter(|a| a.phase.load(Ordering::Acquire) != HANDLING)
            .filter(|a| !a.evicting.load(Ordering::Acquire))
            .min_by_key(|a| a.last_active.load(Ordering::Relaxed));
        match slowest {
            Some(activity) => {
                activity.evicting.store(true, Ordering::Release);
                activity.evict.wake();
                true
            }
            None => false,
        }
    }

    /// Tells every connection to close once the request it is serving (if any) is answered:
    /// for shutdown, after the listener is closed.
    pub fn close_all(&self) {
        self.closing_all.store(true, Ordering::Release);
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
            phase: AtomicU8::new(WAITING),
            last_active: AtomicU64::new(self.tick()),
            waiting_since: AtomicU64::new(self.nanos_now()),
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

    fn nanos_now(&self) -> u64 {
        // u64 nanoseconds last 584 years past the epoch.
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
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
    /// Marks a request whose head has arrived, until the guard drops: the connection may still
    /// be closed to make room until `RequestGuard::received` says the whole request is in.
    pub fn request(&self) -> RequestGuard<'_> {
        self.activity.phase.store(RECEIVING, Ordering::Release);
        RequestGuard { connection: self }
    }

    /// Resolves when the connection is to close: evicted to make room (it has no whole request:
    /// drop it), or shutdown (let it answer the request in flight, then close).
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
    /// Evicted to make room before a whole request arrived: dropping it closes it.
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
        if self.slots.closing_all.load(Ordering::Acquire) {
            return Poll::Ready(Close::Shutdown);
        }
        if activity.evicting.load(Ordering::Acquire) {
            if activity.phase.load(Ordering::Acquire) != HANDLING {
                return Poll::Ready(Close::Evicted);
            }
            // A whole request arrived meanwhile: serve it, and let eviction pick again later.
            activity.evicting.store(false, Ordering::Release);
        }
        Poll::Pending
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.slots.lock().remove(&self.id);
    }
}

/// One request on a connection, from its head to its answer.
pub struct RequestGuard<'a> {
    connection: &'a Connection,
}

impl RequestGuard<'_> {
    /// When the whole request must have arrived: `read_timeout` after the connection began
    /// waiting for it, as hyper counts the header's time (SPEC §8: header and body together).
    pub fn deadline(&self, read_timeout: Duration) -> Instant {
        let since = self
            .connection
            .activity
            .waiting_since
            .load(Ordering::Relaxed);
        self.connection.slots.epoch + Duration::from_nanos(since) + read_timeout
    }

    /// The whole request has arrived: from now on the connection is not closed to make room.
    pub fn received(&self) {
        self.connection
            .activity
            .phase
            .store(HANDLING, Ordering::Release);
    }
}

impl Drop for RequestGuard<'_> {
    fn drop(&mut self) {
        let (activity, slots) = (&self.connection.activity, &self.connection.slots);
        activity.last_active.store(slots.tick(), Ordering::Relaxed);
        activity
            .waiting_since
            .store(slots.nanos_now(), Ordering::Relaxed);
        activity.phase.store(WAITING, Ordering::Release);
    }
}

/// A request body that tells its `RequestGuard` when it has been read to its end, so a client
/// trickling its body can be closed to make room until then.
pub struct ReceivingBody<'a, B> {
    body: B,
    guard: &'a RequestGuard<'a>,
}

impl<'a, B: Body> ReceivingBody<'a, B> {
    /// Wraps `body`; one that is already complete (a GET, an empty POST) counts as received.
    pub fn new(body: B, guard: &'a RequestGuard<'a>) -> ReceivingBody<'a, B> {
        if body.is_end_stream() {
            guard.received();
        }
        ReceivingBody { body, guard }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for ReceivingBody<'_, B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        // The last frame, or the end after it: the request is in.
        if matches!(polled, Poll::Ready(None)) || self.body.is_end_stream() {
            self.guard.received();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

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
        // `first` is handling a whole request: only `second` may go.
        let guard = first.request();
        guard.received();
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
        // Asked to close while idle, but a whole request arrives before its task looks.
        assert!(slots.evict_slowest());
        let guard = only.request();
        guard.received();
        assert!(
            poll_once(evicted.as_mut()).is_pending(),
            "a busy connection stays"
        );
        assert!(!slots.evict_slowest(), "nor is it picked while busy");
        drop(guard);
        // Idle again, it can be picked again, and then it goes.
        assert!(slots.evict_slowest());
        assert_eq!(poll_once(evicted.as_mut()), Poll::Ready(Close::Evicted));
    }

    #[tokio::test]
    async fn close_all_reaches_busy_and_new_connections_and_all_closed_waits_for_them() {
        let slots = ConnectionSlots::new(3);
        let busy = slots.try_admit().unwrap();
        let guard = busy.request();
        guard.received();
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
        drop(guard);
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
        drop(a.request()); // `a` answered a request after `c` was accepted
        let evicted = |connection: &Connection| {
            poll_once(std::pin::pin!(connection.told_to_close())).is_ready()
        };
        // Each call picks one more; those picked stay told to close.
        for told in [&["b"][..], &["b", "c"], &["a", "b", "c"]] {
            assert!(slots.evict_slowest());
            let picked: Vec<&str> = [("a", &a), ("b", &b), ("c", &c)]
                .into_iter()
                .filter(|(_, connection)| evicted(connection))
                .map(|(name, _)| name)
                .collect();
            assert_eq!(picked, told);
        }
        assert!(!slots.evict_slowest(), "nothing left to pick");
    }

    #[tokio::test]
    async fn connections_handling_a_whole_request_are_never_evicted() {
        let slots = ConnectionSlots::new(1);
        let only = slots.try_admit().unwrap();
        let guard = only.request();
        guard.received();
        assert!(!slots.evict_slowest());
    }

    #[test]
    fn a_body_trickling_in_leaves_its_connection_evictable_until_it_ends() {
        let slots = ConnectionSlots::new(3);
        let (old, trickling, fresh) = (
            slots.try_admit().unwrap(),
            slots.try_admit().unwrap(),
            slots.try_admit().unwrap(),
        );
        // `old` answered a request after the others were accepted: it waits the shortest.
        drop(old.request());
        let told = |connection: &Connection| {
            poll_once(std::pin::pin!(connection.told_to_close())).is_ready()
        };
        {
            let guard = trickling.request();
            let mut body = ReceivingBody::new(Chunks::new(&["{\"name\":", " \"a\"}"]), &guard);
            assert!(poll_once(std::pin::pin!(body.frame())).is_ready());
            // Half its body in, its request began first: it is the one closed to make room.
            assert!(slots.evict_slowest());
            assert!(told(&trickling) && !told(&fresh) && !told(&old));
        }

        // A body read to its end makes the request whole: it stays.
        let guard = fresh.request();
        let mut body = ReceivingBody::new(Chunks::new(&["{}"]), &guard);
        assert!(poll_once(std::pin::pin!(body.frame())).is_ready());
        assert!(slots.evict_slowest(), "`old` is idle");
        assert!(!told(&fresh) && told(&old));
        assert!(!slots.evict_slowest(), "nothing else to pick");
    }

    #[test]
    fn an_empty_body_is_received_at_once() {
        let slots = ConnectionSlots::new(1);
        let only = slots.try_admit().unwrap();
        let guard = only.request();
        let _body = ReceivingBody::new(Chunks::new(&[]), &guard);
        assert!(!slots.evict_slowest());
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_counts_from_when_the_connection_began_waiting() {
        let slots = ConnectionSlots::new(1);
        let timeout = Duration::from_secs(10);
        let accepted = Instant::now();
        let only = slots.try_admit().unwrap();
        // The header took 4 s: 6 s are left for the body.
        tokio::time::advance(Duration::from_secs(4)).await;
        let guard = only.request();
        assert_eq!(guard.deadline(timeout), accepted + timeout);
        drop(guard);
        // Between requests the clock restarts when the previous one is answered.
        let answered = Instant::now();
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(only.request().deadline(timeout), answered + timeout);
    }

    /// A body of fixed chunks whose length is known, as hyper's is with Content-Length.
    struct Chunks(std::collections::VecDeque<Bytes>);

    impl Chunks {
        fn new(chunks: &[&'static str]) -> Chunks {
            Chunks(
                chunks
                    .iter()
                    .map(|c| Bytes::from_static(c.as_bytes()))
                    .collect(),
            )
        }
    }

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(|chunk| Ok(Frame::data(chunk))))
        }

        fn is_end_stream(&self) -> bool {
            self.0.is_empty()
        }
    }
}
