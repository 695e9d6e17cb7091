//! The app's Home tab: what the person holds and is waiting for, and how to ask.
//! Published when Slack reports `app_home_opened`.

use std::collections::VecDeque;
use std::sync::Mutex;

use slack_morphism::prelude::*;

use crate::commands;
use crate::AppState;

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

/// The Home tab for `user`.
pub async fn render(app: &AppState, user: &str) -> anyhow::Result<SlackHomeView> {
    let mine = commands::list(app, user).await?;
    let blocks: Vec<SlackBlock> = vec![
        SlackHeaderBlock::new(pt!("Your just-in-time access")).into(),
        SlackSectionBlock::new().with_text(md!(mine)).into(),
        SlackDividerBlock::new().into(),
        SlackSectionBlock::new()
            .with_text(md!(commands::usage(&app.config)))
            .into(),
    ];
    Ok(SlackHomeView::new(blocks))
}

/// Publishes `user`'s Home tab. Runs after the event was acknowledged.
pub async fn publish(app: &AppState, user: &str) -> anyhow::Result<()> {
    let view = render(app, user).await?;
    app.slack.publish_home(user, view).await?;
    Ok(())
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
