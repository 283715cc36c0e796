//! Watches every version of the Deliveries of a namespace while a test
//! runs, so it can check afterwards that no recorded attempt was lost or
//! overwritten and no Succeeded delivery went back to another phase.

use futures::StreamExt;
use hookrelay::resources::Delivery;
use hookrelay::resources::delivery::Phase;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// An attempt as first seen: its number and start time.
type Seen = (u32, String);

#[derive(Default)]
struct Book {
    /// Per delivery: every attempt ever seen in its status.
    attempts: HashMap<String, Vec<Seen>>,
    /// Per delivery: the phases of the versions seen, in order.
    phases: HashMap<String, Vec<Phase>>,
}

pub struct Audit {
    book: Arc<Mutex<Book>>,
    task: tokio::task::JoinHandle<()>,
}

impl Audit {
    pub fn start(client: Client, ns: &str) -> Audit {
        let api: Api<Delivery> = Api::namespaced(client, ns);
        let book: Arc<Mutex<Book>> = Arc::default();
        let task = {
            let book = book.clone();
            tokio::spawn(async move {
                let mut events = watcher(api, watcher::Config::default())
                    .default_backoff()
                    .applied_objects()
                    .boxed();
                while let Some(event) = events.next().await {
                    let Ok(d) = event else { continue };
                    let Some(status) = d.status.as_ref() else { continue };
                    let mut book = book.lock().unwrap();
                    let name = d.name_any();
                    let seen = book.attempts.entry(name.clone()).or_default();
                    for a in &status.attempts {
                        let attempt = (a.number, a.time.0.to_string());
                        if !seen.contains(&attempt) {
                            seen.push(attempt);
                        }
                    }
                    book.phases.entry(name).or_default().push(status.phase);
                }
            })
        };
        Audit { book, task }
    }

    /// What went wrong, checked against the final Deliveries: an attempt
    /// seen once but no longer recorded (or recorded with another time),
    /// two different attempts seen under one number, or a phase other than
    /// Succeeded after Succeeded.
    pub fn problems(&self, finals: &[Delivery]) -> Vec<String> {
        let book = self.book.lock().unwrap();
        let mut problems = vec![];
        for d in finals {
            let name = d.name_any();
            let recorded: Vec<Seen> = d
                .status
                .as_ref()
                .map(|s| s.attempts.iter().map(|a| (a.number, a.time.0.to_string())).collect())
                .unwrap_or_default();
            for seen in book.attempts.get(&name).into_iter().flatten() {
                if !recorded.contains(seen) {
                    problems.push(format!(
                        "{name}: attempt {} at {} was recorded, then lost or overwritten",
                        seen.0, seen.1
                    ));
                }
            }
            if let Some(phases) = book.phases.get(&name)
                && let Some(first) = phases.iter().position(|p| *p == Phase::Succeeded)
                && let Some(later) = phases[first..].iter().find(|p| **p != Phase::Succeeded)
            {
                problems.push(format!("{name}: went from Succeeded back to {later:?}"));
            }
        }
        problems
    }

    /// How many versions with a status were seen.
    pub fn versions_seen(&self) -> usize {
        self.book.lock().unwrap().phases.values().map(Vec::len).sum()
    }
}

impl Drop for Audit {
    fn drop(&mut self) {
        self.task.abort();
    }
}
