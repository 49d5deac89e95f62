//! Per-key rail state (SPEC §8 "Bounded state", §9 `cooldown_key`): for each reflex, a table
//! from cooldown key to when its cooldown ends and the verification windows open on it.
//!
//! A pattern matches names without limit, so each table is bounded: `MAX_KEYS_PER_REFLEX`
//! keys. When a reflex's table is full, a new key shares one slot with every other key that did
//! not fit, so a flood means more suppression, never less. Entries leave only once nothing in
//! them is live (their cooldown is over and no window is open), least recently seen first: a
//! key seen within its cooldown is never forgotten before less recent ones.

use std::collections::HashMap;
use std::sync::Arc;

use lru::LruCache;
use tokio::time::Instant;

use super::verification::Window;

/// Keys one reflex's table holds: 10,000 instances of one alert cooling down at once is far
/// beyond any host's real alerts, and a full table is about 1–2 MiB with names of ordinary
/// length (SPEC §11: a flood of distinct names must keep memory flat).
pub const MAX_KEYS_PER_REFLEX: usize = 10_000;

/// Every reflex's table, by the reflex's name or pattern as written, so a table outlives every
/// map generation and an edit elsewhere in the file never resets it.
#[derive(Debug, Default)]
pub struct KeyTables {
    pub by_reflex: HashMap<Arc<str>, KeyTable>,
}

/// One reflex's keys, least recently seen first.
#[derive(Debug)]
pub struct KeyTable {
    pub keys: LruCache<Box<str>, KeyState>,
    /// The state every key shares that arrived while the table was full.
    pub overflow: KeyState,
    /// The bound on `keys` (`MAX_KEYS_PER_REFLEX`; smaller in tests).
    capacity: usize,
}

/// What the rails remember about one key of one reflex.
#[derive(Debug, Default)]
pub struct KeyState {
    /// When the key's cooldown ends, if one was set.
    pub cooldown_until: Option<Instant>,
    /// Verification windows open on this key: one per ok action whose key has not recurred
    /// since (more than one only while several runs of it were in flight at once).
    pub windows: Vec<Window>,
}

impl KeyState {
    /// Nothing in it is live: the cooldown is over and no window is open.
    pub fn is_idle(&self, now: Instant) -> bool {
        self.windows.is_empty() && self.cooldown_until.is_none_or(|until| until <= now)
    }

    /// Whether the key is cooling down at `now`.
    pub fn cooling(&self, now: Instant) -> bool {
        self.cooldown_until.is_some_and(|until| now < until)
    }
}

/// Where one key's state is, once its table has been looked at.
pub enum Slot<'a> {
    /// The key has an entry (now the most recently seen).
    Known(&'a mut KeyState),
    /// The key has no entry and the table has room for one.
    New,
    /// The key has no entry and the table is full: it shares the overflow slot.
    Overflow(&'a mut KeyState),
}

impl Slot<'_> {
    /// The key's state, if it has one (its own or the shared one).
    pub fn state(&mut self) -> Option<&mut KeyState> {
        match self {
            Slot::Known(state) | Slot::Overflow(state) => Some(state),
            Slot::New => None,
        }
    }
}

impl KeyTables {
    /// The table of `reflex`, made on first use.
    pub fn table(&mut self, reflex: &Arc<str>) -> &mut KeyTable {
        // Cloning the name is a reference count, never an allocation.
        self.by_reflex
            .entry(reflex.clone())
            .or_insert_with(|| KeyTable::new(MAX_KEYS_PER_REFLEX))
    }

    /// The table of `reflex` if it has one.
    pub fn get(&mut self, reflex: &str) -> Option<&mut KeyTable> {
        self.by_reflex.get_mut(reflex)
    }

    /// Forgets every idle entry, and the tables left with nothing live.
    pub fn sweep(&mut self, now: Instant) {
        self.by_reflex.retain(|_, table| {
            table.sweep(now);
            !table.keys.is_empty() || !table.overflow.is_idle(now)
        });
    }
}

impl KeyTable {
    /// An empty table holding at most `capacity` keys.
    pub fn new(capacity: usize) -> KeyTable {
        KeyTable {
            keys: LruCache::unbounded(),
            overflow: KeyState::default(),
            capacity,
        }
    }

    /// Where `key`'s state is at `now`. Looking counts as seeing the key: a known key becomes
    /// the most recently seen. Idle entries at the least recent end are dropped first, so the
    /// table only reports full when its keys are live.
    pub fn slot(&mut self, key: &str, now: Instant) -> Slot<'_> {
        while self
            .keys
            .peek_lru()
            .is_some_and(|(_, state)| state.is_idle(now))
        {
            self.keys.pop_lru();
        }
        if self.keys.contains(key) {
            // `contains` does not promote; `get_mut` does. It finds the key `contains` just
            // found, so the overflow slot is never the answer here.
            return match self.keys.get_mut(key) {
                Some(state) => Slot::Known(state),
                None => Slot::Overflow(&mut self.overflow),
            };
        }
        if self.keys.len() < self.capacity {
            Slot::New
        } else {
            Slot::Overflow(&mut self.overflow)
        }
    }

    /// The state of `key` for writing: its own (made if new and there is room), else the
    /// shared overflow slot; the flag is true when it had to be the overflow slot.
    pub fn state_for(&mut self, key: &str, now: Instant) -> (&mut KeyState, bool) {
        if matches!(self.slot(key, now), Slot::New) {
            self.keys.put(key.into(), KeyState::default());
        }
        match self.keys.get_mut(key) {
            Some(state) => (state, false),
            None => (&mut self.overflow, true),
        }
    }

    /// The state of `key` (or the overflow slot, when `key` is `None`), without seeing it.
    pub fn peek(&mut self, key: Option<&str>) -> Option<&mut KeyState> {
        match key {
            Some(key) => self.keys.peek_mut(key),
            None => Some(&mut self.overflow),
        }
    }

    /// Forgets every idle entry, wherever it is in the order.
    fn sweep(&mut self, now: Instant) {
        let idle: Vec<Box<str>> = self
            .keys
            .iter()
            .filter(|(_, state)| state.is_idle(now))
            .map(|(key, _)| key.clone())
            .collect();
        for key in idle {
            self.keys.pop(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn cool(table: &mut KeyTable, key: &str, now: Instant, for_: Duration) -> bool {
        let (state, overflowed) = table.state_for(key, now);
        state.cooldown_until = Some(now + for_);
        overflowed
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_table_shares_one_slot_and_forgets_nothing_live() {
        let mut table = KeyTable::new(2);
        let now = Instant::now();
        let minute = Duration::from_secs(60);
        assert!(!cool(&mut table, "a", now, minute));
        assert!(!cool(&mut table, "b", now, minute));
        assert!(matches!(table.slot("c", now), Slot::Overflow(_)));
        assert!(cool(&mut table, "c", now, minute));
        assert!(
            table.slot("d", now).state().unwrap().cooling(now),
            "a new key shares the overflow slot's cooldown"
        );
        assert!(matches!(table.slot("a", now), Slot::Known(_)));
        assert_eq!(table.keys.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_entries_leave_least_recently_seen_first() {
        let mut table = KeyTable::new(2);
        let start = Instant::now();
        cool(&mut table, "old", start, Duration::from_secs(10));
        cool(&mut table, "seen", start, Duration::from_secs(10));
        // "old" is seen again within its cooldown: "seen" is now the less recent one.
        let later = start + Duration::from_secs(5);
        assert!(matches!(table.slot("old", later), Slot::Known(_)));
        let after = start + Duration::from_secs(10);
        assert!(matches!(table.slot("new", after), Slot::New));
        assert_eq!(
            table.keys.len(),
            0,
            "both were idle and left, least recent first"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_seen_in_its_cooldown_outlives_less_recent_ones() {
        let mut table = KeyTable::new(3);
        let start = Instant::now();
        cool(&mut table, "a", start, Duration::from_secs(10));
        cool(&mut table, "b", start, Duration::from_secs(100));
        cool(&mut table, "c", start, Duration::from_secs(10));
        table.slot("a", start + Duration::from_secs(1));
        // At 10 s, "a" and "c" are idle; "b" is live, least recent and blocks the quick path.
        let at = start + Duration::from_secs(10);
        assert!(
            matches!(table.slot("d", at), Slot::Overflow(_)),
            "full: nothing idle at the end"
        );
        table.sweep(at);
        let keys: Vec<&str> = table.keys.iter().map(|(k, _)| &**k).collect();
        assert_eq!(keys, ["b"]);
    }

    #[tokio::test(start_paused = true)]
    async fn tables_with_nothing_live_are_dropped() {
        let mut tables = KeyTables::default();
        let reflex: Arc<str> = Arc::from("nginx.*.down");
        let now = Instant::now();
        cool(tables.table(&reflex), "x", now, Duration::from_secs(1));
        tables.sweep(now);
        assert!(tables.get("nginx.*.down").is_some());
        tables.sweep(now + Duration::from_secs(1));
        assert!(tables.get("nginx.*.down").is_none());
    }
}
