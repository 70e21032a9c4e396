//! MCP resources: the event stream, whole (`vmcluster://events`) and per cluster
//! (`vmcluster://clusters/{cluster_name}/events`), with update notifications; and the full
//! output of truncated commands (`vmcluster://exec/...`, see `exec_output`).
//!
//! Every resource request goes through [`route`], one `match` on the first path segment of a
//! `vmcluster://` URI; a new kind of resource is a new [`Route`] variant and a new arm in each
//! dispatch function.
//!
//! Reading an event resource returns its newest [`TAIL`] events as one JSON [`EventPage`]
//! (`next_since` is where `events_read` continues). Subscribers are told
//! (`notifications/resources/updated`) when a new event concerns a resource they subscribed
//! to: through `resources/subscribe` on sessions that began with `initialize`, or through
//! `subscriptions/listen` on protocol 2026-07-28. Bursts are coalesced: one notification per
//! resource for every batch of events that arrived together.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex};

use rmcp::ErrorData;
use rmcp::model::{
    ListResourceTemplatesResult, ListResourcesResult, ReadResourceResult, Resource,
    ResourceContents, ResourceTemplate, ResourceUpdatedNotificationParam, SubscriptionFilter,
};
use rmcp::service::{Peer, RoleServer, SubscriptionContext};
use vmcluster_actors::events::{EventFeed, FollowItem};
use vmcluster_journal::{Event, EventFilter, EventPage};

use crate::server::VmclusterServer;

/// The scheme and authority of every vmcluster resource.
pub const SCHEME: &str = "vmcluster://";

/// Every event.
pub const EVENTS_URI: &str = "vmcluster://events";

/// One cluster's events (RFC 6570 template).
pub const CLUSTER_EVENTS_TEMPLATE: &str = "vmcluster://clusters/{cluster_name}/events";

/// How many of the newest events a read returns.
pub const TAIL: usize = 100;

const JSON: &str = "application/json";

/// What a resource URI names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `vmcluster://events`.
    Events,
    /// `vmcluster://clusters/{name}/events`.
    ClusterEvents(String),
}

/// Parses a resource URI; `None` when it names nothing of ours.
pub fn route(uri: &str) -> Option<Route> {
    let path = uri.strip_prefix(SCHEME)?;
    let (head, rest) = path.split_once('/').unwrap_or((path, ""));
    match head {
        "events" if rest.is_empty() => Some(Route::Events),
        "clusters" => {
            let name = rest.strip_suffix("/events")?;
            let valid = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            valid.then(|| Route::ClusterEvents(name.to_owned()))
        }
        _ => None,
    }
}

/// The URI of cluster `name`'s events.
pub fn cluster_events_uri(name: &str) -> String {
    format!("{SCHEME}clusters/{name}/events")
}

/// Whether event `e` changes the resource `route` names.
fn updates(route: &Route, e: &Event) -> bool {
    match route {
        Route::Events => true,
        Route::ClusterEvents(c) => e.cluster.as_deref() == Some(c.as_str()),
    }
}

fn not_found(uri: &str) -> ErrorData {
    crate::exec_output::error(vmcluster_actors::EngineError::NotFound {
        kind: "resource",
        name: uri.to_owned(),
    })
}

/// `resources/list`: the whole stream and one stream per defined cluster.
pub async fn list(server: &VmclusterServer) -> Result<ListResourcesResult, ErrorData> {
    let mut resources = vec![
        Resource::new(EVENTS_URI, "events")
            .with_title("Events")
            .with_description(format!(
                "The newest {TAIL} journaled state changes of every cluster, as JSON; read on with events_read."
            ))
            .with_mime_type(JSON),
    ];
    let clusters = server
        .engine
        .list()
        .await
        .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
    for c in clusters.clusters {
        resources.push(
            Resource::new(
                cluster_events_uri(&c.cluster_name),
                format!("{}-events", c.cluster_name),
            )
            .with_title(format!("Events of {}", c.cluster_name))
            .with_description(format!(
                "The newest {TAIL} journaled state changes of cluster {}, as JSON.",
                c.cluster_name
            ))
            .with_mime_type(JSON),
        );
    }
    resources.extend(crate::exec_output::list(&server.engine).await);
    Ok(ListResourcesResult::with_all_items(resources))
}

/// `resources/templates/list`.
pub fn templates() -> ListResourceTemplatesResult {
    let mut all = crate::exec_output::templates();
    all.extend(vec![
        ResourceTemplate::new(CLUSTER_EVENTS_TEMPLATE, "cluster-events")
            .with_title("Events of one cluster")
            .with_description(format!(
                "The newest {TAIL} journaled state changes of one cluster, as JSON; read on with events_read(cluster=...)."
            ))
            .with_mime_type(JSON),
    ]);
    ListResourceTemplatesResult::with_all_items(all)
}

/// `resources/read`.
pub async fn read(server: &VmclusterServer, uri: &str) -> Result<ReadResourceResult, ErrorData> {
    if uri.starts_with(crate::exec_output::PREFIX) {
        return crate::exec_output::read(&server.engine, uri).await;
    }
    let filter = match route(uri) {
        Some(Route::Events) => EventFilter::all(),
        Some(Route::ClusterEvents(c)) => EventFilter::cluster(c),
        None => return Err(not_found(uri)),
    };
    let feed = server.engine.events();
    let last_seq = feed.last_seq();
    let events = feed
        .tail_async(TAIL, filter)
        .await
        .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
    let page = EventPage {
        events,
        next_since: last_seq,
        last_seq,
        more: false,
    };
    let text =
        serde_json::to_string(&page).map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
    Ok(ReadResourceResult::new(vec![
        ResourceContents::text(text, uri).with_mime_type(JSON),
    ]))
}

/// The legacy (`resources/subscribe`) subscriptions of one session, and the task that tells
/// its client about updates.
#[derive(Debug, Default)]
pub struct Subscriptions {
    uris: Mutex<BTreeSet<String>>,
    notifier: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Subscriptions {
    fn drop(&mut self) {
        if let Some(t) = self.notifier.get_mut().ok().and_then(Option::take) {
            t.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `resources/subscribe`.
pub fn subscribe(
    server: &VmclusterServer,
    uri: &str,
    peer: Peer<RoleServer>,
) -> Result<(), ErrorData> {
    if route(uri).is_none() {
        return Err(not_found(uri));
    }
    let subs: &Arc<Subscriptions> = &server.subscriptions;
    lock(&subs.uris).insert(uri.to_owned());
    let mut notifier = lock(&subs.notifier);
    if notifier.as_ref().is_none_or(|t| t.is_finished()) {
        let weak = Arc::downgrade(subs);
        let uris = move || {
            weak.upgrade()
                .map(|s| lock(&s.uris).iter().cloned().collect())
                .unwrap_or_default()
        };
        let send = move |uri: String| {
            let peer = peer.clone();
            async move {
                peer.notify_resource_updated(ResourceUpdatedNotificationParam::new(uri))
                    .await
                    .is_ok()
            }
        };
        let feed = server.engine.events().clone();
        let since = feed.last_seq();
        *notifier = Some(tokio::spawn(async move {
            notify(&feed, since, uris, send).await;
        }));
    }
    Ok(())
}

/// `resources/unsubscribe`.
pub fn unsubscribe(server: &VmclusterServer, uri: &str) -> Result<(), ErrorData> {
    lock(&server.subscriptions.uris).remove(uri);
    Ok(())
}

/// `subscriptions/listen` (protocol 2026-07-28): which of the requested resources we accept.
pub fn accepted_filter(requested: &SubscriptionFilter) -> Option<SubscriptionFilter> {
    let uris: Vec<String> = requested
        .resource_subscriptions
        .iter()
        .flatten()
        .filter(|u| route(u).is_some())
        .cloned()
        .collect();
    Some(
        SubscriptionFilter::builder()
            .resource_subscriptions(uris)
            .build(),
    )
}

/// `subscriptions/listen`: notifies until the client cancels.
pub async fn listen(server: &VmclusterServer, ctx: SubscriptionContext) -> Result<(), ErrorData> {
    let accepted: Vec<String> = ctx
        .accepted()
        .resource_subscriptions
        .clone()
        .unwrap_or_default();
    let sink = ctx.sink().clone();
    let send = move |uri: String| {
        let sink = sink.clone();
        async move { sink.notify_resource_updated(uri).await.is_ok() }
    };
    let feed = server.engine.events();
    let run = notify(feed, feed.last_seq(), move || accepted.clone(), send);
    tokio::select! {
        () = ctx.cancelled() => {}
        () = run => {}
    }
    Ok(())
}

/// Follows every event after `since` and calls `send` once per subscribed URI (from `uris()`) that a
/// batch of events updated. Ends when `send` fails (the client is gone) or the feed ends.
async fn notify<U, S, F>(feed: &EventFeed, since: u64, uris: U, mut send: S)
where
    U: Fn() -> Vec<String>,
    S: FnMut(String) -> F,
    F: Future<Output = bool>,
{
    let mut rx = feed.follow(since, EventFilter::all());
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let routes: Vec<(String, Route)> = uris()
            .into_iter()
            .filter_map(|u| route(&u).map(|r| (u, r)))
            .collect();
        let mut hit = BTreeSet::new();
        for item in batch {
            match item {
                Ok(FollowItem::Event(e)) => {
                    for (u, r) in &routes {
                        if updates(r, &e) {
                            hit.insert(u.clone());
                        }
                    }
                }
                Ok(FollowItem::CaughtUp { .. }) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "event feed failed; resource notifications stop");
                    return;
                }
            }
        }
        for u in hit {
            if !send(u).await {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("vmcluster://events"), Some(Route::Events));
        assert_eq!(
            route("vmcluster://clusters/lc-1/events"),
            Some(Route::ClusterEvents("lc-1".into()))
        );
        assert_eq!(
            route(&cluster_events_uri("a_b")),
            Some(Route::ClusterEvents("a_b".into()))
        );
        for bad in [
            "vmcluster://events/x",
            "vmcluster://clusters//events",
            "vmcluster://clusters/a/b/events",
            "vmcluster://clusters/a",
            "vmcluster://nope",
            "http://events",
            "",
        ] {
            assert_eq!(route(bad), None, "{bad}");
        }
    }
}
