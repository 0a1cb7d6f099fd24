//! Many refreshers driven as one: the sans-IO keyed pool.
//!
//! A [`RefresherPool`] owns any number of [`Refresher`]s, each under a
//! [`KeyId`] its driver chooses, and adds what only a pool can decide:
//!
//! - **One timer structure.** The pool keeps every refresher's next deadline
//!   in one heap and names the earliest ([`RefresherPool::poll_sleep`]);
//!   [`RefresherPool::handle_timeout`] wakes only the refreshers whose
//!   deadline has come. A driver therefore sleeps once for the whole pool,
//!   however many keys it holds, and idle wake-ups do not grow with them.
//! - **A cap on fetches in flight, with fair queuing.** At most
//!   [`PoolConfig::max_in_flight`] token requests (and custom fetches) are
//!   handed out at once; the rest wait in one first-come, first-served
//!   queue across keys (a key has at most one fetch at a time, so no key
//!   can starve another). A queued fetch the refresher gave up on (its
//!   deadline passed) is dropped from the queue, never sent late.
//! - **Eviction of idle keys.** With [`PoolConfig::evict_idle_after`], a key
//!   that nobody used for that long is shut down and removed. Whether a key
//!   was used is the driver's knowledge (readers flag it without telling
//!   anyone), so the pool asks: [`RefresherPool::handle_timeout`] takes a
//!   function that answers "was this key used since I last asked?".
//!
//! Everything else is each refresher's own: the pool passes effects, events
//! and answers through with their key, so jitter, backoff, leases and
//! caches work per key exactly as for a single refresher. Like the
//! refresher, the pool reads no clock, does no I/O and draws no randomness.
//!
//! ```
//! use std::time::Duration;
//! use tokenkeeper_core::pool::{KeyId, PoolConfig, RefresherPool};
//! use tokenkeeper_core::{AccessToken, CacheKey, Effect, Input, Refresher, RefresherConfig};
//! use tokenkeeper_core::{Timestamp, TokenGrant};
//!
//! let now = Timestamp::from_secs(1_700_000_000);
//! let mut pool = RefresherPool::new(PoolConfig::default().max_in_flight(1));
//! for (n, tenant) in ["a", "b"].into_iter().enumerate() {
//!     let config = RefresherConfig::custom(CacheKey::custom(tenant, &[]));
//!     pool.insert(now, KeyId::new(n as u64), Refresher::new(config, n as u64, now));
//! }
//! // One fetch at a time: the second key's waits for the first's answer.
//! let (key, Effect::Fetch { id, .. }) = pool.poll_effect().unwrap() else { panic!() };
//! assert!(pool.poll_effect().is_none());
//! let grant = TokenGrant::bearer(AccessToken::new("t"), Some(Duration::from_secs(3600)));
//! pool.handle(now, key, Input::Grant { id, result: Ok(grant) }).unwrap();
//! assert!(matches!(pool.poll_effect(), Some((_, Effect::Fetch { .. }))));
//! ```

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::time::Duration;

use crate::clock::Now;
use crate::jitter::Jitter;
use crate::refresher::{
    Effect, EffectId, Event, Input, MisuseError, RefreshNow, Refresher, Status,
};
use crate::secret::AccessToken;
use crate::time::Timestamp;

/// The name a driver gives a key of its pool. Unique within the pool for
/// the pool's lifetime: a driver draws them from a counter, never reusing
/// one, so that a late answer for a removed key cannot reach a new one.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(u64);

impl KeyId {
    /// The key named `n`.
    pub const fn new(n: u64) -> Self {
        KeyId(n)
    }

    /// Its number.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key#{}", self.0)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key#{}", self.0)
    }
}

/// Hashes a [`KeyId`] for maps keyed by them: the id itself in the low
/// bits, and a multiplication's high bits on top.
///
/// Key ids are a driver's counter, not input an attacker chooses, so
/// SipHash's defence against chosen keys buys nothing here, and it costs
/// about a hundred instructions a lookup on the path of every answer and
/// status. Hash tables pick the bucket with the low bits: there, a counter's
/// consecutive ids land in consecutive buckets, so that adding keys one
/// after another (a burst of watchers, a pool's keys) writes memory in
/// order rather than a cache miss in a table of 100,000 for each. The top
/// seven bits, the tag a table compares first, come from a multiplication
/// by an odd constant (2^64 over the golden ratio), which spreads a
/// counter's values over all of them. Keys of several parts fold every
/// part into both.
#[derive(Debug, Default, Clone, Copy)]
pub struct KeyIdHasher {
    plain: u64,
    mixed: u64,
}

/// The bits of a [`KeyIdHasher`]'s hash that are the id itself.
const PLAIN_BITS: u64 = (1 << 57) - 1;

impl std::hash::Hasher for KeyIdHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Not reached for a `KeyId` (it hashes one `u64`); any other input
        // is folded in byte by byte.
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.plain = self.plain.rotate_left(5) ^ n;
        self.mixed = (self.mixed.rotate_left(5) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        (self.mixed & !PLAIN_BITS) | (self.plain & PLAIN_BITS)
    }
}

/// A map keyed by [`KeyId`], hashed with [`KeyIdHasher`].
pub type KeyIdMap<V> = HashMap<KeyId, V, std::hash::BuildHasherDefault<KeyIdHasher>>;

/// What a pool decides beyond its refreshers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    max_in_flight: usize,
    evict_idle_after: Option<Duration>,
}

impl Default for PoolConfig {
    /// At most 16 fetches in flight; no eviction.
    fn default() -> Self {
        PoolConfig {
            max_in_flight: 16,
            evict_idle_after: None,
        }
    }
}

impl PoolConfig {
    /// At most `n` fetches in flight at once (at least one).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }

    /// Removes a key nobody used for `idle` (checked at the key's own pace,
    /// so it is removed between `idle` and twice `idle` after its last use).
    pub fn evict_idle_after(mut self, idle: Duration) -> Self {
        self.evict_idle_after = Some(idle.max(Duration::from_millis(1)));
        self
    }

    /// The jitter a pool's refreshers get unless told otherwise: up to a
    /// tenth of each token's lifetime (six minutes of a one-hour token).
    /// A single watcher's default, up to 60 s, suits one token; a pool's
    /// keys are often created together (a warm-up, a deploy), and 60 s
    /// would pack 10,000 keys' refreshes into one minute, forever after.
    pub fn default_jitter() -> Jitter {
        Jitter::fraction_of_lifetime(0.1).unwrap_or_default()
    }

    /// The cap on fetches in flight.
    pub fn get_max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// How long an unused key is kept, if keys are evicted.
    pub fn get_evict_idle_after(&self) -> Option<Duration> {
        self.evict_idle_after
    }
}

/// [`RefresherPool::insert`] was given an id already in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} is already in the pool")]
pub struct DuplicateKey(pub KeyId);

/// A key that left the pool, with its last status.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Removed {
    /// The key.
    pub key: KeyId,
    /// Why it left.
    pub why: Removal,
    /// Its refresher's status as it finished.
    pub status: Status,
}

/// Why a key left the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Removal {
    /// Nobody used it for [`PoolConfig::evict_idle_after`].
    Evicted,
    /// [`RefresherPool::remove`] or [`RefresherPool::shutdown`] asked for it.
    ShutDown,
}

/// An optional instant on the schedule axis (milliseconds) in eight bytes
/// rather than sixteen: a pool holds a slot per key. `u64::MAX` is none,
/// which [`millis`] never gives.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Ms(u64);

impl Ms {
    const NONE: Ms = Ms(u64::MAX);

    fn new(ms: Option<u64>) -> Self {
        ms.map_or(Ms::NONE, Ms)
    }

    fn get(self) -> Option<u64> {
        (self != Ms::NONE).then_some(self.0)
    }
}

struct Slot {
    /// Boxed: the table stays small however large a refresher is, and a
    /// driver that built the refresher boxed hands it over without a copy.
    refresher: Box<Refresher>,
    /// The deadline this slot is filed under in the heap, on the schedule
    /// axis (milliseconds); entries with another value are stale.
    filed: Ms,
    /// When to ask whether the key was used (milliseconds, schedule axis).
    idle_check: Ms,
    /// The removal asked for, once the refresher has been told to stop.
    leaving: Option<Removal>,
}

impl Slot {
    /// When the key wants to be woken (milliseconds, schedule axis).
    fn due(&self) -> Option<u64> {
        self.refresher
            .next_wake()
            .map(millis)
            .into_iter()
            .chain(self.idle_check.get())
            .min()
    }
}

/// The most entries a list of keys (touched, or waiting to be filed under
/// their deadline) keeps between turns: a driver's batch of new keys (256)
/// fits, so that a burst of them does not grow and free both lists on
/// every turn (2 KiB each, once per pool).
const KEY_LIST_KEPT: usize = 256;

/// The most entries a queue of effects or events, or the set of fetches in
/// flight, keeps between turns: the first allocation each, so that a turn
/// of the driver that takes in a watcher allocates none of them again,
/// while what a burst grew is given back (effects are a few hundred bytes).
const BUFFER_KEPT: usize = 4;

/// Many refreshers with one timer heap, one fetch queue and eviction. See
/// the [module documentation](self).
pub struct RefresherPool {
    config: PoolConfig,
    slots: KeyIdMap<Slot>,
    /// (deadline in ms on the schedule axis, key): a min-heap with lazy
    /// deletion (an entry counts only while it equals its slot's `filed`).
    timers: BinaryHeap<Reverse<(u64, KeyId)>>,
    /// Fetches handed out and not yet answered, removed keys' included.
    in_flight: HashSet<(KeyId, EffectId), std::hash::BuildHasherDefault<KeyIdHasher>>,
    /// Fetches waiting for room, first come first served.
    queued: VecDeque<(KeyId, Effect)>,
    effects: VecDeque<(KeyId, Effect)>,
    events: VecDeque<(KeyId, Event)>,
    removed: VecDeque<Removed>,
    /// Keys whose refresher was called since the driver last asked: their
    /// status may have changed.
    touched: Vec<KeyId>,
    /// Keys whose deadline may differ from the one they are filed under:
    /// filed once the pool is next asked when to wake. A key settles a few
    /// times a turn (a new watcher: taken in, then its first token), and
    /// each filing is a push onto a heap of every key, left behind as a
    /// stale entry that a pop, a walk down that heap, later removes.
    unfiled: Vec<KeyId>,
    peak_in_flight: usize,
}

impl fmt::Debug for RefresherPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefresherPool")
            .field("config", &self.config)
            .field("keys", &self.slots.len())
            .field("in_flight", &self.in_flight.len())
            .field("queued", &self.queued.len())
            .finish_non_exhaustive()
    }
}

/// At most `u64::MAX - 1`, so that it fits an [`Ms`] (a deadline that far
/// off is never reached either way).
fn millis(t: Timestamp) -> u64 {
    u64::try_from(t.duration_since(Timestamp::EPOCH).as_millis())
        .unwrap_or(u64::MAX)
        .min(u64::MAX - 1)
}

fn is_fetch(effect: &Effect) -> Option<EffectId> {
    match effect {
        Effect::SendRequest { id, .. } | Effect::Fetch { id, .. } => Some(*id),
        _ => None,
    }
}

fn answers_fetch(input: &Input) -> Option<EffectId> {
    match input {
        Input::Response { id, .. } | Input::FetchFailed { id, .. } | Input::Grant { id, .. } => {
            Some(*id)
        }
        _ => None,
    }
}

impl RefresherPool {
    /// An empty pool.
    pub fn new(config: PoolConfig) -> Self {
        RefresherPool {
            config,
            slots: KeyIdMap::default(),
            timers: BinaryHeap::new(),
            in_flight: HashSet::default(),
            queued: VecDeque::new(),
            effects: VecDeque::new(),
            events: VecDeque::new(),
            removed: VecDeque::new(),
            touched: Vec::new(),
            unfiled: Vec::new(),
            peak_in_flight: 0,
        }
    }

    /// The settings.
    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    /// Adds a refresher under `id`. An id already in use is refused and the
    /// refresher dropped (a driver that draws ids from a counter never
    /// sees this). Its first effects are ready at once.
    pub fn insert(
        &mut self,
        now: impl Into<Now>,
        id: KeyId,
        refresher: impl Into<Box<Refresher>>,
    ) -> Result<(), DuplicateKey> {
        let now = now.into();
        if self.slots.contains_key(&id) {
            return Err(DuplicateKey(id));
        }
        let idle_check = self
            .config
            .evict_idle_after
            .map(|idle| millis(now.sched().saturating_add(idle)));
        self.slots.insert(
            id,
            Slot {
                refresher: refresher.into(),
                filed: Ms::NONE,
                idle_check: Ms::new(idle_check),
                leaving: None,
            },
        );
        self.settle(id);
        self.compact();
        Ok(())
    }

    /// Adds a refresher whose fetch `fetching` its driver has started
    /// already (a watcher's first, started on the caller's thread before
    /// its key reached the pool): the fetch counts as in flight from now,
    /// beyond the cap if need be, since it runs and cannot be queued. Its
    /// answer goes to [`handle`](Self::handle) as any other.
    pub fn insert_fetching(
        &mut self,
        now: impl Into<Now>,
        id: KeyId,
        refresher: impl Into<Box<Refresher>>,
        fetching: EffectId,
    ) -> Result<(), DuplicateKey> {
        let refresher = refresher.into();
        let waits = refresher.effect_deadline(fetching).is_some();
        self.insert(now, id, refresher)?;
        if waits {
            self.in_flight.insert((id, fetching));
            self.peak_in_flight = self.peak_in_flight.max(self.in_flight.len());
        }
        Ok(())
    }

    /// How many keys the pool holds (keys shutting down included).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether it holds no key.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Whether `id` is in the pool.
    pub fn contains(&self, id: KeyId) -> bool {
        self.slots.contains_key(&id)
    }

    /// The keys the pool holds, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = KeyId> + '_ {
        self.slots.keys().copied()
    }

    /// The refresher of `id`.
    pub fn get(&self, id: KeyId) -> Option<&Refresher> {
        self.slots.get(&id).map(|s| &*s.refresher)
    }

    /// The status of `id` at `now`.
    pub fn status(&self, id: KeyId, now: impl Into<Now>) -> Option<Status> {
        self.get(id).map(|r| r.status(now))
    }

    /// Fetches handed out and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The most fetches ever in flight at once.
    pub fn peak_in_flight(&self) -> usize {
        self.peak_in_flight
    }

    /// Fetches waiting for room under the cap.
    pub fn queued(&self) -> usize {
        self.queued.len()
    }

    /// Hands `input` to the refresher of `id`. An answer for a key that has
    /// left the pool is ignored (`Ok`), as a refresher ignores late answers;
    /// it still frees its room under the cap.
    pub fn handle(
        &mut self,
        now: impl Into<Now>,
        id: KeyId,
        input: Input,
    ) -> Result<(), MisuseError> {
        let now = now.into();
        if let Some(effect) = answers_fetch(&input) {
            self.fetch_ended(id, effect);
        }
        let Some(slot) = self.slots.get_mut(&id) else {
            self.release_queued();
            return Ok(());
        };
        let result = slot.refresher.handle(now, input);
        self.settle(id);
        self.release_queued();
        self.compact();
        result
    }

    /// Time has passed: every refresher whose deadline has come is woken,
    /// and every key due for an idle check is asked about with `was_used`
    /// ("was it used since you were last asked?"); an unused one is shut
    /// down and leaves the pool.
    pub fn handle_timeout(&mut self, now: impl Into<Now>, mut was_used: impl FnMut(KeyId) -> bool) {
        let now = now.into();
        let at = millis(now.sched());
        self.file_deadlines();
        while let Some(&Reverse((deadline, id))) = self.timers.peek() {
            if deadline > at {
                break;
            }
            self.timers.pop();
            let Some(slot) = self.slots.get_mut(&id) else {
                continue;
            };
            if slot.filed.get() != Some(deadline) {
                continue;
            }
            slot.filed = Ms::NONE;
            if let Some(check) = slot.idle_check.get()
                && check <= at
                && slot.leaving.is_none()
            {
                if was_used(id) {
                    slot.idle_check = Ms::new(
                        self.config
                            .evict_idle_after
                            .map(|idle| millis(now.sched().saturating_add(idle))),
                    );
                } else {
                    slot.idle_check = Ms::NONE;
                    slot.leaving = Some(Removal::Evicted);
                    slot.refresher.shutdown(now);
                }
            }
            slot.refresher.handle_timeout(now);
            self.settle(id);
            // A deadline that has come already is handled in this call.
            self.file_deadlines();
        }
        self.release_queued();
        self.compact();
    }

    /// Forces a refresh of `id` (see [`Refresher::refresh_now`]);
    /// [`RefreshNow::ShutDown`] for a key not in the pool.
    pub fn refresh_now(&mut self, now: impl Into<Now>, id: KeyId) -> RefreshNow {
        self.with(id, |r| r.refresh_now(now))
    }

    /// A resource server refused `refused` (see
    /// [`Refresher::refresh_if_current`]).
    pub fn refresh_if_current(
        &mut self,
        now: impl Into<Now>,
        id: KeyId,
        refused: &AccessToken,
    ) -> RefreshNow {
        self.with(id, |r| r.refresh_if_current(now, refused))
    }

    /// Shuts `id` down and removes it once it has finished (at once, or
    /// after a refresh-token request in flight, within its grace).
    pub fn remove(&mut self, now: impl Into<Now>, id: KeyId) {
        let now = now.into();
        if let Some(slot) = self.slots.get_mut(&id) {
            slot.leaving.get_or_insert(Removal::ShutDown);
            slot.refresher.shutdown(now);
            self.settle(id);
        }
    }

    /// Shuts every key down; the pool is empty once each has finished.
    pub fn shutdown(&mut self, now: impl Into<Now>) {
        let now = now.into();
        let ids: Vec<KeyId> = self.slots.keys().copied().collect();
        for id in ids {
            self.remove(now, id);
        }
        // Nothing queued will be sent: the refreshers have stopped.
        self.queued.clear();
    }

    /// The next effect to carry out, with its key.
    #[must_use]
    pub fn poll_effect(&mut self) -> Option<(KeyId, Effect)> {
        let effect = self.effects.pop_front();
        if effect.is_none() && self.effects.capacity() > BUFFER_KEPT {
            self.effects = VecDeque::new();
        }
        effect
    }

    /// The next event to report, with its key.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<(KeyId, Event)> {
        let event = self.events.pop_front();
        if event.is_none() && self.events.capacity() > BUFFER_KEPT {
            self.events = VecDeque::new();
        }
        event
    }

    /// The next key that has left the pool, why, and its last status: its
    /// driver state can go.
    #[must_use]
    pub fn poll_removed(&mut self) -> Option<Removed> {
        self.removed.pop_front()
    }

    /// The next key whose refresher was called since the last time this
    /// said `None`: a driver that keeps status snapshots refreshes these.
    #[must_use]
    pub fn poll_touched(&mut self) -> Option<KeyId> {
        let key = self.touched.pop();
        // One list per pool: a small one is kept for the next turn (drivers
        // drain it every turn); one a burst grew is given back.
        if key.is_none() && self.touched.capacity() > KEY_LIST_KEPT {
            self.touched = Vec::new();
        }
        key
    }

    /// How long to wait, measured on the monotonic clock from `now`, before
    /// calling [`RefresherPool::handle_timeout`] (unless an input comes
    /// first); `None` while no key has a deadline (an empty pool). Takes
    /// `&mut self` to drop stale timers from the top of the heap.
    #[must_use]
    pub fn poll_sleep(&mut self, now: impl Into<Now>) -> Option<Duration> {
        let at = millis(now.into().sched());
        self.file_deadlines();
        while let Some(&Reverse((deadline, id))) = self.timers.peek() {
            if self
                .slots
                .get(&id)
                .is_some_and(|s| s.filed.get() == Some(deadline))
            {
                return Some(Duration::from_millis(deadline.saturating_sub(at)));
            }
            self.timers.pop();
        }
        None
    }

    fn with(&mut self, id: KeyId, call: impl FnOnce(&mut Refresher) -> RefreshNow) -> RefreshNow {
        let Some(slot) = self.slots.get_mut(&id) else {
            return RefreshNow::ShutDown;
        };
        let outcome = call(&mut slot.refresher);
        self.settle(id);
        self.release_queued();
        outcome
    }

    fn fetch_ended(&mut self, id: KeyId, effect: EffectId) {
        self.in_flight.remove(&(id, effect));
        if self.in_flight.is_empty() && self.in_flight.capacity() > BUFFER_KEPT {
            self.in_flight = HashSet::default();
        }
    }

    /// Moves what `id`'s refresher asks for into the pool's queues, files
    /// its next deadline, and removes it once it has finished.
    fn settle(&mut self, id: KeyId) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        self.touched.push(id);
        while let Some(effect) = slot.refresher.poll_effect() {
            match is_fetch(&effect) {
                Some(effect_id)
                    if self.queued.is_empty()
                        && self.in_flight.len() < self.config.max_in_flight =>
                {
                    self.in_flight.insert((id, effect_id));
                    self.peak_in_flight = self.peak_in_flight.max(self.in_flight.len());
                    self.effects.push_back((id, effect));
                }
                Some(_) => self.queued.push_back((id, effect)),
                None => self.effects.push_back((id, effect)),
            }
        }
        while let Some(event) = slot.refresher.poll_event() {
            self.events.push_back((id, event));
        }
        if slot.refresher.is_finished() {
            let why = slot.leaving.unwrap_or(Removal::ShutDown);
            let status = slot.refresher.last_status();
            self.slots.remove(&id);
            self.removed.push_back(Removed {
                key: id,
                why,
                status,
            });
            return;
        }
        if slot.due() != slot.filed.get() {
            self.unfiled.push(id);
        }
    }

    /// Files the keys whose deadline changed under their deadline now.
    fn file_deadlines(&mut self) {
        for id in self.unfiled.drain(..) {
            let Some(slot) = self.slots.get_mut(&id) else {
                continue;
            };
            let due = slot.due();
            if due != slot.filed.get() {
                slot.filed = Ms::new(due);
                if let Some(due) = due {
                    self.timers.push(Reverse((due, id)));
                }
            }
        }
        if self.unfiled.capacity() > KEY_LIST_KEPT {
            self.unfiled = Vec::new();
        }
    }

    /// Hands out queued fetches while there is room, dropping those whose
    /// refresher no longer waits for them.
    fn release_queued(&mut self) {
        while self.in_flight.len() < self.config.max_in_flight {
            let Some((id, effect)) = self.queued.pop_front() else {
                break;
            };
            let Some(effect_id) = is_fetch(&effect) else {
                continue;
            };
            let wanted = self
                .slots
                .get(&id)
                .is_some_and(|s| s.refresher.effect_deadline(effect_id).is_some());
            if wanted {
                self.in_flight.insert((id, effect_id));
                self.peak_in_flight = self.peak_in_flight.max(self.in_flight.len());
                self.effects.push_back((id, effect));
            }
        }
    }

    /// Drops stale heap entries once they are half as many as live ones
    /// (amortized: at most once per half as many changes as there are
    /// keys), and gives back the room they took: at 16 bytes an entry, the
    /// heap is a pool's largest table after the keys'.
    fn compact(&mut self) {
        let live = self.slots.len();
        if self.timers.len() <= live + live / 2 + 64 {
            return;
        }
        let slots = &self.slots;
        self.timers.retain(|Reverse((deadline, id))| {
            slots
                .get(id)
                .is_some_and(|s| s.filed.get() == Some(*deadline))
        });
        self.timers.shrink_to(self.timers.len() * 3 / 2 + 64);
    }
}

#[cfg(test)]
mod tests;
