//! Backpressure at ingest: when the store's writes slow down (a saturated
//! API server answers creates in seconds), each hub may have only so many
//! deliveries being stored at once; its other events are answered 429 with
//! Retry-After.
//!
//! What fills a saturated server is concurrency: a sender with 32
//! connections keeps 256 creates queued for events of eight webhooks, and
//! everything else (the controller's watch above all, which then shows every
//! tenant's new deliveries tens of seconds late) waits behind them. Bounding
//! each hub's deliveries in flight bounds that queue, and is fair without
//! estimating anyone's rate: a hub that sends little never has many in
//! flight, so it is never refused; the hubs sending most are refused first,
//! and their senders' retries spread the burst over time. One event is
//! always admitted when its hub has nothing in flight, however many
//! webhooks it goes to. A namespace (a tenant) gets four hubs' worth at
//! most, so making more hubs gains nothing.
//!
//! An event refused for now waits a little in ingest for room in its hub
//! (`WAITING` events a hub, `QUEUE_WAIT` at most) before it is answered
//! 429: otherwise the hub's bound would stand idle until the sender came
//! back after its Retry-After (a second at least), and a bulk sender would
//! get a fraction of what the store can take. Only while the store is
//! near its threshold, though (`QUEUE_UNDER`): far past it, a bound always
//! in use keeps the server's queue full, and everyone's watch waits behind
//! it (measured: a bystander's p99 went from 2.3 s to 15.5 s with the API
//! server capped at a quarter core); then the gaps the senders' retries
//! leave are what lets it catch up.
//!
//! Slow means a round of creates (16 at once) taking over the threshold:
//! on average over the last writes, or for three writes still under way
//! (seen at once, not when they end). The pressure ends `HOLD` after
//! writes are fast again.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Deliveries one hub may have being stored at once while the store is
/// saturated: as many as one event's creates run at once.
pub const IN_FLIGHT_UNDER_PRESSURE: usize = 16;
/// Deliveries one namespace (a tenant) may have being stored at once while
/// the store is saturated, whatever number of hubs it makes: four hubs'
/// worth.
pub const NAMESPACE_IN_FLIGHT_UNDER_PRESSURE: usize = 4 * IN_FLIGHT_UNDER_PRESSURE;
/// How long pressure lasts after the last slow write.
const HOLD: Duration = Duration::from_secs(10);
/// Writes under way past their time that mean saturation (one may be bad luck).
const OVERDUE: usize = 3;
/// The longest Retry-After asked.
const MOST_WAIT: u64 = 30;
/// Events of one hub that may wait in ingest for room at once (a
/// namespace four hubs' worth); more are answered 429 at once. Each holds
/// its body, so this also bounds the memory waiting takes.
pub const WAITING: usize = 4;
const NAMESPACE_WAITING: usize = 4 * WAITING;
/// How long an event waits for room before it is answered 429: well under
/// the request timeout and a CMS's own.
pub const QUEUE_WAIT: Duration = Duration::from_secs(5);
/// Events wait only while the store's write latency is under this many
/// times the threshold.
const QUEUE_UNDER: u32 = 2;

type Key = (String, String);

#[derive(Default)]
struct State {
    /// A store write's latency, seconds, averaged over the last writes.
    latency: f64,
    /// Until when the store counts as saturated.
    pressed_until: Option<Instant>,
    /// Deliveries being stored, by hub and by namespace.
    in_flight: HashMap<Key, usize>,
    namespace_in_flight: HashMap<String, usize>,
    /// Writes under way, by when they become slow (`threshold` a round
    /// of creates after they began) and a number telling them apart: a
    /// few overdue are saturation seen at once, not seconds later when
    /// they end.
    writes: BTreeSet<(Instant, u64)>,
    next_write: u64,
    /// Events waiting for room, by hub and by namespace, and what wakes a
    /// namespace's: only its own deliveries leaving flight make room for
    /// them, so another tenant's writes never wake them.
    waiting: HashMap<Key, usize>,
    namespace_waiting: HashMap<String, usize>,
    rooms: HashMap<String, Arc<Notify>>,
}

/// Why an event is not admitted now.
#[derive(Debug, PartialEq)]
pub struct Refusal {
    /// When to send it again.
    pub retry_after: Duration,
    /// The store's recent write latency.
    pub latency: Duration,
}

/// The measured state of the store, shared by every request of an ingest.
pub struct Pressure {
    /// Writes slower than this (on average) mean the store is saturated;
    /// zero turns backpressure off.
    threshold: Duration,
    state: Arc<Mutex<State>>,
}

/// An event admitted to be stored: its deliveries counted in its hub's in
/// flight until dropped.
pub struct Admitted {
    hub: Key,
    deliveries: usize,
    write: (Instant, u64),
    threshold: Duration,
    state: Arc<Mutex<State>>,
}

/// An event's place among those waiting for room in its hub.
struct Waiter {
    hub: Key,
    state: Arc<Mutex<State>>,
    /// Told when deliveries of its namespace leave flight.
    room: Arc<Notify>,
}

impl State {
    /// Whether the store counts as saturated at `now`: writes were slow
    /// less than `HOLD` ago, or `OVERDUE` writes under way are past their
    /// time (which starts the hold).
    fn pressed(&mut self, now: Instant) -> bool {
        if self
            .writes
            .iter()
            .take_while(|(slow_at, _)| *slow_at < now)
            .nth(OVERDUE - 1)
            .is_some()
        {
            self.pressed_until = Some(now + HOLD);
        }
        self.pressed_until.is_some_and(|until| now < until)
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pressure {
    pub fn new(threshold: Duration) -> Self {
        Self {
            threshold,
            state: Arc::default(),
        }
    }

    /// Admits an event as `admit` does, but one refused waits for room in
    /// its hub (up to `QUEUE_WAIT`, when fewer than `WAITING` of its hub
    /// already wait) before the refusal is given.
    pub async fn admit_or_wait(&self, hub: &Key, deliveries: usize) -> Result<Admitted, Refusal> {
        let refusal = match self.admit(hub, deliveries, Instant::now()) {
            Ok(admitted) => return Ok(admitted),
            Err(refusal) => refusal,
        };
        let far_past = |refusal: &Refusal| refusal.latency > self.threshold * QUEUE_UNDER;
        if far_past(&refusal) {
            return Err(refusal);
        }
        let Some(waiter) = Waiter::join(&self.state, hub) else {
            return Err(refusal);
        };
        let deadline = tokio::time::Instant::now() + QUEUE_WAIT;
        loop {
            // Listening before looking, so room made in between is not missed.
            let room = waiter.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            let refusal = match self.admit(hub, deliveries, Instant::now()) {
                Ok(admitted) => return Ok(admitted),
                Err(refusal) => refusal,
            };
            if far_past(&refusal) || tokio::time::timeout_at(deadline, room).await.is_err() {
                return Err(refusal);
            }
        }
    }

    /// The store's recent write latency.
    pub fn latency(&self) -> Duration {
        Duration::from_secs_f64(lock(&self.state).latency)
    }

    /// Whether the store counts as saturated now (for the gauge, which must
    /// fall back to 0 when traffic stops, not keep the last write's value).
    pub fn saturated(&self, now: Instant) -> bool {
        lock(&self.state).pressed(now)
    }

    /// Admits an event of `hub` with `deliveries` to be stored, or says why
    /// not and when to come back.
    pub fn admit(&self, hub: &Key, deliveries: usize, now: Instant) -> Result<Admitted, Refusal> {
        let mut state = lock(&self.state);
        let pressed = state.pressed(now);
        let in_flight = state.in_flight.get(hub).copied().unwrap_or(0);
        let namespace_in_flight = state.namespace_in_flight.get(&hub.0).copied().unwrap_or(0);
        // An event alone in flight always goes, however large.
        let over = |in_flight: usize, bound: usize| in_flight > 0 && in_flight + deliveries > bound;
        if pressed
            && (over(in_flight, IN_FLIGHT_UNDER_PRESSURE)
                || over(namespace_in_flight, NAMESPACE_IN_FLIGHT_UNDER_PRESSURE))
        {
            // About the time its deliveries in flight take to be stored.
            let rounds = in_flight.max(1).div_ceil(IN_FLIGHT_UNDER_PRESSURE) as f64;
            let wait = (state.latency * rounds).ceil().clamp(1.0, MOST_WAIT as f64);
            return Err(Refusal {
                retry_after: Duration::from_secs(wait as u64),
                latency: Duration::from_secs_f64(state.latency),
            });
        }
        *state.in_flight.entry(hub.clone()).or_default() += deliveries;
        *state.namespace_in_flight.entry(hub.0.clone()).or_default() += deliveries;
        state.next_write += 1;
        let write = (now + self.threshold * rounds(deliveries), state.next_write);
        if !self.threshold.is_zero() {
            state.writes.insert(write);
        }
        Ok(Admitted {
            hub: hub.clone(),
            deliveries,
            write,
            threshold: self.threshold,
            state: self.state.clone(),
        })
    }
}

impl Waiter {
    /// A place for an event of `hub`, if its hub and namespace have one.
    fn join(state: &Arc<Mutex<State>>, hub: &Key) -> Option<Self> {
        let mut guard = lock(state);
        let waiting = guard.waiting.get(hub).copied().unwrap_or(0);
        let namespace_waiting = guard.namespace_waiting.get(&hub.0).copied().unwrap_or(0);
        if waiting >= WAITING || namespace_waiting >= NAMESPACE_WAITING {
            return None;
        }
        *guard.waiting.entry(hub.clone()).or_default() += 1;
        *guard.namespace_waiting.entry(hub.0.clone()).or_default() += 1;
        let room = guard.rooms.entry(hub.0.clone()).or_default().clone();
        Some(Self {
            hub: hub.clone(),
            state: state.clone(),
            room,
        })
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut state = lock(&self.state);
        release(&mut state.waiting, &self.hub, 1);
        release(&mut state.namespace_waiting, &self.hub.0, 1);
        if !state.namespace_waiting.contains_key(&self.hub.0) {
            state.rooms.remove(&self.hub.0);
        }
    }
}

impl Admitted {
    /// The event's write (its deliveries stored, or failed) took `took`.
    pub fn stored(&self, took: Duration, now: Instant) {
        if self.threshold.is_zero() {
            return;
        }
        let mut state = lock(&self.state);
        // A round of creates' latency (an event for a thousand webhooks
        // takes longer to store, and that is not the store's fault),
        // averaged over about the last ten writes.
        let round = took.as_secs_f64() / f64::from(rounds(self.deliveries));
        state.latency = 0.9 * state.latency + 0.1 * round;
        if state.latency > self.threshold.as_secs_f64() {
            state.pressed_until = Some(now + HOLD);
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut state = lock(&self.state);
        state.writes.remove(&self.write);
        release(&mut state.in_flight, &self.hub, self.deliveries);
        release(&mut state.namespace_in_flight, &self.hub.0, self.deliveries);
        let room = state.rooms.get(&self.hub.0).cloned();
        drop(state);
        if let Some(room) = room {
            room.notify_waiters();
        }
    }
}

/// Takes `n` off `key`'s count, forgetting it at zero.
fn release<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: &K, n: usize) {
    if let Some(count) = counts.get_mut(key) {
        *count = count.saturating_sub(n);
        if *count == 0 {
            counts.remove(key);
        }
    }
}

/// The rounds of creates an event of `deliveries` takes to store (the
/// Kubernetes store creates `IN_FLIGHT_UNDER_PRESSURE` at once).
fn rounds(deliveries: usize) -> u32 {
    deliveries.div_ceil(IN_FLIGHT_UNDER_PRESSURE).max(1) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(hub: &str) -> Key {
        ("ns".into(), hub.into())
    }

    /// Ten slow writes of `hub`: the store counts as saturated.
    fn saturate(pressure: &Pressure, now: Instant) {
        for _ in 0..10 {
            pressure
                .admit(&key("any"), 1, now)
                .unwrap()
                .stored(Duration::from_secs(3), now);
        }
    }

    #[test]
    fn fast_writes_admit_any_number_at_once() {
        let pressure = Pressure::new(Duration::from_millis(500));
        let now = Instant::now();
        let held: Vec<Admitted> = (0..100)
            .map(|_| pressure.admit(&key("busy"), 8, now).unwrap())
            .collect();
        for admitted in &held {
            admitted.stored(Duration::from_millis(20), now);
        }
        assert!(!pressure.saturated(now));
        assert!(pressure.admit(&key("busy"), 8, now).is_ok());
    }

    #[test]
    fn slow_writes_bound_each_hubs_deliveries_in_flight_and_the_pressure_ends_after_the_hold() {
        let pressure = Pressure::new(Duration::from_millis(500));
        let now = Instant::now();
        saturate(&pressure, now);
        assert!(pressure.saturated(now));
        // Two events of eight deliveries: as many as a hub may have in flight.
        let busy: Vec<Admitted> = (0..2)
            .map(|_| {
                pressure
                    .admit(&key("busy"), 8, now)
                    .expect("within its deliveries in flight")
            })
            .collect();
        let refused = pressure.admit(&key("busy"), 1, now).err().expect("beyond them");
        assert!(refused.latency >= Duration::from_millis(500), "{refused:?}");
        assert!((1..=MOST_WAIT).contains(&refused.retry_after.as_secs()), "{refused:?}");
        // Another hub is not held up by the busy one, and an event larger
        // than the bound goes when its hub (and namespace) has nothing in
        // flight.
        let quiet = pressure.admit(&key("quiet"), 5, now).expect("a hub sending little");
        let large_hub = ("elsewhere".to_string(), "large".to_string());
        let large = pressure.admit(&large_hub, 1000, now).expect("alone in flight");
        assert!(pressure.admit(&large_hub, 1, now).is_err());
        // Its deliveries stored: room again.
        drop((busy, quiet, large));
        drop(pressure.admit(&key("busy"), 8, now).expect("room again"));
        // Writes fast again: the pressure holds HOLD after the last slow
        // write (the average needs a few fast ones to fall), then ends.
        for _ in 0..30 {
            pressure
                .admit(&key("quiet"), 1, now)
                .unwrap()
                .stored(Duration::from_millis(10), now);
        }
        assert!(pressure.latency() < Duration::from_millis(500));
        let later = now + HOLD + Duration::from_secs(1);
        assert!(!pressure.saturated(later));
        let _busy: Vec<Admitted> = (0..10)
            .map(|_| pressure.admit(&key("busy"), 8, later).unwrap())
            .collect();
    }

    #[test]
    fn writes_overdue_are_saturation_before_they_end_and_a_large_event_is_given_its_rounds() {
        let pressure = Pressure::new(Duration::from_millis(500));
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // An event for 160 webhooks: ten rounds of creates, 5 s before it is slow.
        let large = pressure.admit(&key("large"), 160, t0).unwrap();
        // Fewer than OVERDUE writes past their time: bad luck, not saturation.
        let few: Vec<Admitted> = (1..OVERDUE)
            .map(|_| pressure.admit(&key("lone"), 1, t0).unwrap())
            .collect();
        let _busy = pressure.admit(&key("busy"), 8, at(400)).unwrap();
        let _second = pressure.admit(&key("busy"), 8, at(400)).unwrap();
        assert!(pressure.admit(&key("lone"), 1, at(600)).is_ok());
        assert!(!pressure.saturated(at(600)));
        // One more still under way 600 ms in: saturated, at once.
        let _one_more = pressure.admit(&key("lone"), 1, at(100)).unwrap();
        let refused = pressure.admit(&key("busy"), 8, at(700));
        assert!(refused.is_err(), "the busy hub has 16 deliveries in flight");
        assert!(pressure.saturated(at(700)));
        drop(few);
        // Stored in 4 s, the large event counts as 0.4 s a round: not slow.
        let fresh = Pressure::new(Duration::from_millis(500));
        for _ in 0..20 {
            fresh
                .admit(&key("large"), 160, t0)
                .unwrap()
                .stored(Duration::from_secs(4), t0);
        }
        assert!(fresh.latency() < Duration::from_millis(500), "{:?}", fresh.latency());
        assert!(!fresh.saturated(t0));
        drop(large);
    }

    #[test]
    fn a_tenant_gets_no_more_by_making_more_hubs() {
        let pressure = Pressure::new(Duration::from_millis(500));
        let now = Instant::now();
        saturate(&pressure, now);
        let hub = |ns: &str, name: &str| (ns.to_string(), name.to_string());
        // Eight hubs of one namespace, 16 deliveries each: four are admitted.
        let admitted: Vec<Admitted> = (0..8)
            .filter_map(|i| pressure.admit(&hub("hostile", &format!("h{i}")), 16, now).ok())
            .collect();
        assert_eq!(
            admitted.len() * IN_FLIGHT_UNDER_PRESSURE,
            NAMESPACE_IN_FLIGHT_UNDER_PRESSURE
        );
        // Another namespace is not held up by it.
        assert!(pressure.admit(&hub("calm", "main"), 16, now).is_ok());
        drop(admitted);
        assert!(pressure.admit(&hub("hostile", "h7"), 16, now).is_ok());
    }

    #[test]
    fn saturation_ends_the_hold_after_the_last_slow_write_when_traffic_stops() {
        let pressure = Pressure::new(Duration::from_millis(500));
        let now = Instant::now();
        saturate(&pressure, now);
        assert!(pressure.saturated(now + HOLD - Duration::from_secs(1)));
        assert!(!pressure.saturated(now + HOLD + Duration::from_secs(1)));
    }

    /// Writes just over the threshold: saturated, but near it.
    fn saturate_near(pressure: &Pressure, now: Instant) {
        for _ in 0..10 {
            pressure
                .admit(&key("any"), 1, now)
                .unwrap()
                .stored(Duration::from_millis(800), now);
        }
        assert!(pressure.saturated(now));
        assert!(pressure.latency() < pressure.threshold * QUEUE_UNDER);
    }

    fn waiting(pressure: &Pressure, hub: &Key) -> usize {
        lock(&pressure.state).waiting.get(hub).copied().unwrap_or(0)
    }

    // The clock is paused: were the waiter not woken by the room made, the
    // runtime would jump to its deadline and it would be refused. (Another
    // namespace's writes do not wake it: its namespace's own must.)
    #[tokio::test(start_paused = true)]
    async fn a_refused_event_waits_for_room_in_its_hub_and_goes_when_there_is() {
        let pressure = Arc::new(Pressure::new(Duration::from_millis(500)));
        saturate_near(&pressure, Instant::now());
        let busy = pressure.admit(&key("busy"), 16, Instant::now()).unwrap();
        let waiter = tokio::spawn({
            let pressure = pressure.clone();
            async move { pressure.admit_or_wait(&key("busy"), 8).await.map(|_| ()) }
        });
        while waiting(&pressure, &key("busy")) == 0 {
            tokio::task::yield_now().await;
        }
        let started = tokio::time::Instant::now();
        drop(busy);
        assert_eq!(waiter.await.unwrap(), Ok(()));
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "admitted when room was made, not at a deadline"
        );
        assert_eq!(waiting(&pressure, &key("busy")), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn few_events_of_a_hub_wait_and_none_longer_than_the_queue_wait() {
        let pressure = Pressure::new(Duration::from_millis(500));
        saturate_near(&pressure, Instant::now());
        let _busy = pressure.admit(&key("busy"), 16, Instant::now()).unwrap();
        let started = tokio::time::Instant::now();
        let busy_hub = key("busy");
        let waiters = futures::future::join_all((0..WAITING).map(|_| pressure.admit_or_wait(&busy_hub, 8)));
        let one_more = async {
            while waiting(&pressure, &key("busy")) < WAITING {
                tokio::task::yield_now().await;
            }
            let refused = pressure.admit_or_wait(&key("busy"), 8).await;
            (refused.is_err(), started.elapsed())
        };
        let (waited, (refused, refused_after)) = tokio::join!(waiters, one_more);
        assert!(refused, "a fifth event of the hub is not let wait");
        assert_eq!(refused_after, Duration::ZERO, "and is answered at once");
        assert!(waited.iter().all(Result::is_err), "no room was made");
        assert_eq!(started.elapsed(), QUEUE_WAIT);
        // Another hub is admitted at once all along, and nobody waits now.
        assert!(pressure.admit_or_wait(&key("quiet"), 8).await.is_ok());
        assert_eq!(waiting(&pressure, &key("busy")), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn no_event_waits_while_the_store_is_far_past_its_threshold() {
        let pressure = Pressure::new(Duration::from_millis(500));
        saturate(&pressure, Instant::now());
        assert!(pressure.latency() > pressure.threshold * QUEUE_UNDER);
        let _busy = pressure.admit(&key("busy"), 16, Instant::now()).unwrap();
        let started = tokio::time::Instant::now();
        assert!(pressure.admit_or_wait(&key("busy"), 8).await.is_err());
        assert_eq!(started.elapsed(), Duration::ZERO, "refused at once");
    }

    #[test]
    fn a_zero_threshold_turns_backpressure_off() {
        let pressure = Pressure::new(Duration::ZERO);
        let now = Instant::now();
        saturate(&pressure, now);
        assert!(!pressure.saturated(now));
        let _held: Vec<Admitted> = (0..10).map(|_| pressure.admit(&key("busy"), 8, now).unwrap()).collect();
    }
}
