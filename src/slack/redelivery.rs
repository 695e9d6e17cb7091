//! Slack delivers again what it thinks was not received (Events API retries): remember
//! recent deliveries so each is handled once.

use std::collections::VecDeque;
use std::sync::Mutex;

/// Remembers recent Events API deliveries, so Slack's retries are handled once.
#[derive(Default)]
pub struct SeenEvents {
    ids: Mutex<VecDeque<String>>,
}

impl SeenEvents {
    const KEEP: usize = 1000;

    /// True the first time `event_id` is seen.
    pub fn first_time(&self, event_id: &str) -> bool {
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        if ids.iter().any(|i| i == event_id) {
            return false;
        }
        if ids.len() >= Self::KEEP {
            ids.pop_front();
        }
        ids.push_back(event_id.to_string());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_event_is_handled_once() {
        let seen = SeenEvents::default();
        assert!(seen.first_time("Ev1"));
        assert!(!seen.first_time("Ev1"));
        assert!(seen.first_time("Ev2"));
    }
}
