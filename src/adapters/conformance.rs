//! The checks every adapter must pass, run by each adapter's tests:
//! grant → active → grant again (no error, no duplicate) → revoke → not active → revoke again.

use anyhow::{bail, ensure, Context};

use super::{Adapter, GrantContext};

/// Runs the whole sequence for one grant. `reports_activity` says whether the adapter is
/// expected to answer `is_active` (adapters that cannot tell answer `None`).
pub async fn check(adapter: &dyn Adapter, ctx: &GrantContext, reports_activity: bool) -> anyhow::Result<()> {
    let first = adapter.grant(ctx).await.context("first grant")?;
    let mut held = ctx.clone();
    held.state = first.state.clone();
    expect_active(adapter, &held, true, reports_activity)
        .await
        .context("after grant")?;

    let second = adapter
        .grant(ctx)
        .await
        .context("granting again must succeed (retries after a crash)")?;
    ensure!(
        second.state == first.state,
        "granting again changed the state: {:?} then {:?}",
        first.state,
        second.state
    );
    if let Some(listed) = adapter.list_granted().await.context("listing")? {
        let mine = listed.iter().filter(|l| l.grant_id == Some(ctx.grant_id)).count();
        ensure!(
            mine == 1,
            "granting twice left {mine} entries for grant {}",
            ctx.grant_id
        );
    }
    expect_active(adapter, &held, true, reports_activity)
        .await
        .context("after the second grant")?;

    adapter.revoke(&held).await.context("revoke")?;
    expect_active(adapter, &held, false, reports_activity)
        .await
        .context("after revoke")?;
    adapter.revoke(&held).await.context("revoking again must succeed")?;
    expect_active(adapter, &held, false, reports_activity)
        .await
        .context("after the second revoke")?;
    if let Some(listed) = adapter.list_granted().await.context("listing after revoke")? {
        ensure!(
            !listed.iter().any(|l| l.grant_id == Some(ctx.grant_id)),
            "grant {} is still listed after revoke",
            ctx.grant_id
        );
    }
    Ok(())
}

async fn expect_active(adapter: &dyn Adapter, ctx: &GrantContext, want: bool, reports: bool) -> anyhow::Result<()> {
    match adapter.is_active(ctx).await? {
        Some(active) => ensure!(active == want, "is_active said {active}, expected {want}"),
        None if reports => bail!("is_active could not tell, but this adapter should"),
        None => {}
    }
    Ok(())
}
