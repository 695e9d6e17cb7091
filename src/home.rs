//! The app's Home tab: what the person holds and is waiting for, and how to ask.
//! Published when Slack reports `app_home_opened`.

use slack_morphism::prelude::*;

use crate::app::AppState;
use crate::commands;

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
