//! The global limit on requests in flight, shared fairly between tenants
//! (namespaces): a tenant holds at most three quarters of the slots, so
//! others always find one free, and a freed slot goes to the waiting tenant
//! that holds the fewest. A tenant with many slow endpoints cannot starve
//! another, however many webhooks or hubs it creates.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

pub struct Slots {
    size: usize,
    per_tenant: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    free: usize,
    in_use: HashMap<String, usize>,
    waiting: HashMap<String, VecDeque<oneshot::Sender<Permit>>>,
}

/// One slot, held by one tenant until dropped.
pub struct Permit {
    slots: Arc<Slots>,
    tenant: String,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.slots.release(&self.tenant);
    }
}

impl Slots {
    pub fn new(size: usize) -> Arc<Self> {
        let size = size.max(1);
        Arc::new(Self {
            size,
            per_tenant: (size * 3 / 4).max(1),
            state: Mutex::new(State {
                free: size,
                ..State::default()
            }),
        })
    }

    /// How many slots there are in all.
    pub fn size(&self) -> usize {
        self.size
    }

    /// How many slots one tenant may hold at once.
    pub fn per_tenant(&self) -> usize {
        self.per_tenant
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a slot for `tenant`. Cancel-safe: a slot granted to a
    /// waiter that went away is given back.
    pub async fn acquire(self: &Arc<Self>, tenant: &str) -> Permit {
        let rx = {
            let mut state = self.lock();
            let held = state.in_use.get(tenant).copied().unwrap_or(0);
            if state.free > 0 && held < self.per_tenant {
                state.free -= 1;
                *state.in_use.entry(tenant.to_string()).or_default() += 1;
                return Permit {
                    slots: self.clone(),
                    tenant: tenant.to_string(),
                };
            }
            let (tx, rx) = oneshot::channel();
            state.waiting.entry(tenant.to_string()).or_default().push_back(tx);
            rx
        };
        rx.await.expect("a waiting sender is dropped only after granting")
    }

    fn release(self: &Arc<Self>, tenant: &str) {
        let mut state = self.lock();
        state.free += 1;
        if let Some(n) = state.in_use.get_mut(tenant) {
            *n -= 1;
            if *n == 0 {
                state.in_use.remove(tenant);
            }
        }
        self.dispatch(&mut state);
    }

    /// Hands free slots to waiting tenants, fewest held first.
    fn dispatch(self: &Arc<Self>, state: &mut State) {
        while state.free > 0 {
            let next = state
                .waiting
                .iter()
                .filter(|(_, queue)| !queue.is_empty())
                .map(|(t, _)| (state.in_use.get(t).copied().unwrap_or(0), t.clone()))
                .filter(|(held, _)| *held < self.per_tenant)
                .min();
            let Some((_, tenant)) = next else { return };
            let tx = state
                .waiting
                .get_mut(&tenant)
                .and_then(VecDeque::pop_front)
                .expect("a non-empty queue");
            if state.waiting.get(&tenant).is_some_and(VecDeque::is_empty) {
                state.waiting.remove(&tenant);
            }
            state.free -= 1;
            *state.in_use.entry(tenant.clone()).or_default() += 1;
            let permit = Permit {
                slots: self.clone(),
                tenant: tenant.clone(),
            };
            if let Err(unwanted) = tx.send(permit) {
                // The waiter is gone: undo by hand (dropping the permit here
                // would take the lock we hold).
                std::mem::forget(unwanted);
                state.free += 1;
                if let Some(n) = state.in_use.get_mut(&tenant) {
                    *n -= 1;
                    if *n == 0 {
                        state.in_use.remove(&tenant);
                    }
                }
            }
        }
    }

    /// Slots held by `tenant` now.
    pub fn held_by(&self, tenant: &str) -> usize {
        self.lock().in_use.get(tenant).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_tenant_never_holds_them_all() {
        let slots = Slots::new(8);
        let mut held = Vec::new();
        for _ in 0..6 {
            held.push(slots.acquire("greedy").await);
        }
        let seventh = tokio::time::timeout(Duration::from_millis(50), slots.acquire("greedy")).await;
        assert!(seventh.is_err(), "a tenant gets at most three quarters");
        let other = tokio::time::timeout(Duration::from_millis(50), slots.acquire("polite")).await;
        assert!(other.is_ok(), "another tenant finds a free slot at once");
        assert_eq!((slots.held_by("greedy"), slots.held_by("polite")), (6, 1));
    }

    #[tokio::test]
    async fn a_freed_slot_goes_to_the_waiting_tenant_holding_fewest() {
        let slots = Slots::new(4);
        let a: Vec<Permit> = futures::future::join_all((0..3).map(|_| slots.acquire("a"))).await;
        let b1 = slots.acquire("b").await;
        // a is at its cap (three of four); c holds none.
        let waiting_a = tokio::spawn({
            let slots = slots.clone();
            async move { slots.acquire("a").await }
        });
        let waiting_c = tokio::spawn({
            let slots = slots.clone();
            async move { slots.acquire("c").await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(b1);
        let c = tokio::time::timeout(Duration::from_secs(1), waiting_c)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(slots.held_by("c"), 1, "c held none, a held three");
        assert!(!waiting_a.is_finished());
        drop(a);
        let _a = tokio::time::timeout(Duration::from_secs(1), waiting_a)
            .await
            .unwrap()
            .unwrap();
        drop(c);
        assert_eq!(slots.held_by("c"), 0);
    }

    #[tokio::test]
    async fn a_slot_granted_to_a_waiter_that_left_is_given_back() {
        let slots = Slots::new(1);
        let first = slots.acquire("a").await;
        let gone = tokio::spawn({
            let slots = slots.clone();
            async move { slots.acquire("b").await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        gone.abort();
        let _ = gone.await;
        drop(first);
        let again = tokio::time::timeout(Duration::from_millis(100), slots.acquire("b")).await;
        assert!(again.is_ok(), "the slot was not lost");
    }
}
