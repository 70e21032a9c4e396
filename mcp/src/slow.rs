//! What every slow tool does around its engine call: a bounded wait, MCP cancellation and
//! progress notifications.
//!
//! * The wait (`wait_s`) bounds how long the call blocks; the operation itself goes on and is
//!   followed with `op_wait` / `op_status`.
//! * An MCP `notifications/cancelled` for the call cancels the operation, which stops at its
//!   next step boundary (never inside a step) and journals its outcome.
//! * With a `progressToken` in the request's `_meta`, each finished step is sent as a
//!   `notifications/progress` (progress = steps done, total = steps planned).
//!
//! Both helpers stop when the tool call returns (the guard is dropped).

use rmcp::RoleServer;
use rmcp::model::ProgressNotificationParam;
use rmcp::service::RequestContext;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use vmcluster_actors::{OpProgress, Submit};

use crate::envelope::{Failure, ToolError};
use crate::params::wait_seconds;

/// Keeps the call's helpers alive; they end when it is dropped.
#[derive(Debug)]
pub struct CallGuard(#[allow(dead_code)] oneshot::Sender<()>);

/// Builds the engine's [`Submit`] for a call with `wait_s`, wiring cancellation and progress.
pub fn submit(
    ctx: &RequestContext<RoleServer>,
    wait_s: u64,
) -> Result<(Submit, CallGuard), Failure> {
    let wait = wait_seconds(wait_s).map_err(|m| Failure::new(ToolError::invalid(m), None))?;
    let (guard, mut ended) = oneshot::channel::<()>();
    let cancel = CancellationToken::new();
    let (progress, progress_rx) = watch::channel(OpProgress::default());
    {
        let (ct, cancel) = (ctx.ct.clone(), cancel.clone());
        let token = ctx.meta.get_progress_token();
        let peer = ctx.peer.clone();
        let mut rx = progress_rx;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    // Progress first: the last step's update happens before the call
                    // returns, so it is sent even when the call ends at the same moment.
                    biased;
                    changed = rx.changed(), if token.is_some() => {
                        if changed.is_err() {
                            // The operation is over; only cancellation is left to watch.
                            tokio::select! {
                                _ = &mut ended => (),
                                _ = ct.cancelled() => cancel.cancel(),
                            }
                            break;
                        }
                        let p = rx.borrow_and_update().clone();
                        if let Some(t) = &token {
                            let mut n = ProgressNotificationParam::new(t.clone(), f64::from(p.done));
                            if let Some(total) = p.total {
                                n = n.with_total(f64::from(total));
                            }
                            if let Some(m) = p.current {
                                n = n.with_message(m);
                            }
                            let _ = peer.notify_progress(n).await;
                        }
                    }
                    _ = &mut ended => break,
                    _ = ct.cancelled() => {
                        cancel.cancel();
                        break;
                    }
                }
            }
        });
    }
    Ok((
        Submit {
            wait: Some(wait),
            cancel: Some(cancel),
            progress: Some(progress),
        },
        CallGuard(guard),
    ))
}
