//! The event stream on libvirt's test driver: `events_read` over MCP (order, outcomes,
//! `since`, `cluster`, paging, bad arguments), the event resources (listing, reading,
//! subscriptions and their update notifications), `vmcluster events` through a running
//! server's control socket and, with no server, from the journal (`--since`, `--cluster`,
//! `--follow` waiting for a server), and the control socket's permissions and lifetime.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use rmcp::model::{ReadResourceRequestParams, SubscribeRequestParams};
use rmcp::service::NotificationContext;
use rmcp::{ClientHandler, RoleClient};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use vmcluster_tests::{EventsFollower, McpClient, event_story as story, vmcluster_bin};

use crate::{DEADLINE, Fixture, eventually};

/// The op-level story of `cluster` in `events`: `(tool, kind, outcome)` of each `op.*` event.
fn ops(events: &[Value], cluster: &str) -> Vec<(String, String, String)> {
    events
        .iter()
        .filter(|e| e["cluster"] == cluster)
        .filter(|e| e["kind"].as_str().unwrap().starts_with("op."))
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or("").to_owned();
            (s("tool"), s("kind"), s("outcome"))
        })
        .collect()
}

fn op(tool: &str, kind: &str, outcome: &str) -> (String, String, String) {
    (tool.to_owned(), kind.to_owned(), outcome.to_owned())
}

/// Sequence numbers strictly increase.
#[track_caller]
fn check_ordered(events: &[Value]) {
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
}

/// Index of the first event of `cluster` with `kind` and `tool`/`detail` (panics if none).
#[track_caller]
fn position(events: &[Value], cluster: &str, kind: &str, what: &str) -> usize {
    events
        .iter()
        .position(|e| {
            e["cluster"] == cluster
                && e["kind"] == kind
                && (e["tool"] == what || e["detail"] == what)
        })
        .unwrap_or_else(|| panic!("no {kind} {what} of {cluster} in {events:#?}"))
}

/// A second cluster's topology, written next to `f`'s (its scratch must outlive `f`'s use).
fn second(f: &Fixture, name: &str) -> Fixture {
    let g = Fixture::new(name, &["n1"]);
    f.scratch.write_topology(&g.name, &g.yaml(512));
    g
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_read_tells_the_story_in_order_with_filters_and_pages() {
    let f = Fixture::new("itevread", &["n1", "n2"]);
    let g = second(&f, "itevreadb");
    let c = McpClient::spawn(&f.env()).await;
    let cl = json!({"cluster_name": f.name});
    c.call("cluster_define", json!({"topology_name": f.name}))
        .await
        .ok();
    c.call("cluster_define", json!({"topology_name": g.name}))
        .await
        .ok();
    c.call(
        "cluster_start",
        json!({"cluster_name": f.name, "wait_for_ssh": false}),
    )
    .await
    .ok();
    c.call(
        "cluster_stop",
        json!({"cluster_name": f.name, "mode": "destroy"}),
    )
    .await
    .ok();
    // A refused command is not an operation: no event.
    assert_eq!(
        c.call("cluster_start", json!({"cluster_name": "nope"}))
            .await
            .code(),
        "NOT_FOUND"
    );
    c.call("cluster_destroy", cl.clone()).await.ok();

    let all = c.call("events_read", json!({"limit": 1000})).await;
    let page = all.ok();
    assert_eq!(page["more"], false, "{page}");
    let events = page["events"].as_array().unwrap().clone();
    check_ordered(&events);
    assert_eq!(page["last_seq"], events.last().unwrap()["seq"]);
    assert_eq!(page["next_since"], page["last_seq"]);
    assert_eq!(
        ops(&events, &f.name),
        [
            op("cluster_define", "op.started", ""),
            op("cluster_define", "op.finished", "applied"),
            op("cluster_start", "op.started", ""),
            op("cluster_start", "op.finished", "applied"),
            op("cluster_stop", "op.started", ""),
            op("cluster_stop", "op.finished", "applied"),
            op("cluster_destroy", "op.started", ""),
            op("cluster_destroy", "op.finished", "applied"),
        ]
    );
    // Inside each operation, what it changed, in order.
    let at = |kind: &str, what: &str| position(&events, &f.name, kind, what);
    let define = at("op.started", "cluster_define");
    let defined = position_of_kind(&events, &f.name, "cluster.defined");
    assert!(define < defined && defined < at("step.started", "define_domain"));
    assert!(at("step.finished", "define_domain") < at("op.finished", "cluster_define"));
    let start = at("op.started", "cluster_start");
    let stop = at("op.started", "cluster_stop");
    let running = start + position(&events[start..], &f.name, "node.state", "running");
    assert!(running < stop, "{}", story(&events));
    let off = stop + position(&events[stop..], &f.name, "node.state", "shut off");
    assert!(
        stop < off && off < at("op.finished", "cluster_stop"),
        "{}",
        story(&events)
    );
    assert!(
        position_of_kind(&events, &f.name, "cluster.removed")
            < at("op.finished", "cluster_destroy")
    );
    for e in &events {
        assert!(
            e["time"].as_str().unwrap().ends_with('Z') && e["time"].as_str().unwrap().len() == 24,
            "RFC 3339 UTC with milliseconds: {e}"
        );
        if e["kind"] == "step.finished" {
            assert_eq!(e["outcome"], "ok", "{e}");
            assert!(e["op_id"].is_string() && e["tool"].is_string(), "{e}");
        }
        if e["kind"] == "object.created" {
            assert!(e["detail"].as_str().unwrap().contains(' '), "{e}");
        }
    }
    // Every op.* event carries its op id, and start/finish agree on it.
    let define_op = &events[define]["op_id"];
    assert_eq!(
        events[at("op.finished", "cluster_define")]["op_id"],
        *define_op
    );

    // cluster: only that cluster's events.
    let r = c
        .call("events_read", json!({"cluster": g.name, "limit": 1000}))
        .await;
    let only = r.ok()["events"].as_array().unwrap().clone();
    assert!(!only.is_empty());
    assert!(only.iter().all(|e| e["cluster"] == g.name.as_str()));
    let expected: Vec<&Value> = events
        .iter()
        .filter(|e| e["cluster"] == g.name.as_str())
        .collect();
    assert_eq!(only.iter().collect::<Vec<_>>(), expected);

    // since: strictly after.
    let k = events[5]["seq"].as_u64().unwrap();
    let r = c
        .call("events_read", json!({"since": k, "limit": 1000}))
        .await;
    assert_eq!(r.ok()["events"].as_array().unwrap()[..], events[6..]);

    // Pages: limit, more, next_since.
    let mut paged = Vec::new();
    let mut since = 0;
    loop {
        let r = c
            .call("events_read", json!({"since": since, "limit": 7}))
            .await;
        let p = r.ok().clone();
        let got = p["events"].as_array().unwrap();
        assert!(got.len() <= 7);
        paged.extend(got.iter().cloned());
        since = p["next_since"].as_u64().unwrap();
        if p["more"] == false {
            break;
        }
        assert_eq!(got.len(), 7, "a page that says more is full");
    }
    assert_eq!(paged, events);

    // Bad arguments are refused with a typed error.
    for bad in [
        json!({"limit": 0}),
        json!({"limit": 1001}),
        json!({"since": -1}),
        json!({"cluster": ""}),
        json!({"bogus": 1}),
    ] {
        assert_eq!(
            c.call("events_read", bad.clone()).await.code(),
            "INVALID_ARGUMENT",
            "{bad}"
        );
    }

    // The CLI goes through the running server's control socket (the server holds the journal)
    // and prints the very same events.
    let out = cli(&f, &["events", "--json"]);
    assert_eq!(lines(&out), events);
    let out = cli(&f, &["events", "--json", "--cluster", &g.name]);
    assert_eq!(lines(&out), only);
    let out = cli(&f, &["events", "--json", "--since", &k.to_string()]);
    assert_eq!(lines(&out), events[6..]);
    c.close().await;
}

fn position_of_kind(events: &[Value], cluster: &str, kind: &str) -> usize {
    events
        .iter()
        .position(|e| e["cluster"] == cluster && e["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} of {cluster}"))
}

fn cli(f: &Fixture, args: &[&str]) -> Output {
    let out = Command::new(vmcluster_bin())
        .args(args)
        .envs(f.env())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run vmcluster");
    assert!(
        out.status.success(),
        "vmcluster {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Stdout as one JSON value per line.
#[track_caller]
fn lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Records the URIs of `notifications/resources/updated`.
#[derive(Debug, Clone)]
struct Updates(mpsc::UnboundedSender<String>);

impl ClientHandler for Updates {
    async fn on_resource_updated(
        &self,
        params: rmcp::model::ResourceUpdatedNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let _ = self.0.send(params.uri);
    }
}

async fn read_page(c: &McpClient<Updates>, uri: &str) -> Value {
    let (text, mime) = c.read_resource(uri).await.expect("resources/read");
    assert_eq!(mime.as_deref(), Some("application/json"));
    serde_json::from_slice(&text).expect("a JSON page")
}

/// Waits for an update notification of `uri` (others are collected into `seen`).
async fn await_update(rx: &mut mpsc::UnboundedReceiver<String>, uri: &str, seen: &mut Vec<String>) {
    tokio::time::timeout(DEADLINE, async {
        while let Some(u) = rx.recv().await {
            let hit = u == uri;
            seen.push(u);
            if hit {
                return;
            }
        }
        panic!("notification stream ended");
    })
    .await
    .unwrap_or_else(|_| panic!("no update of {uri} within {DEADLINE:?}; got {seen:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(deprecated)] // resources/subscribe is what clients that begin with `initialize` use
async fn event_resources_list_read_and_notify_subscribers() {
    let f = Fixture::new("itevres", &["n1"]);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let c = McpClient::spawn_with(&f.env(), Updates(tx)).await;
    let caps = c
        .service
        .peer_info()
        .unwrap()
        .capabilities
        .resources
        .clone();
    assert_eq!(caps.and_then(|r| r.subscribe), Some(true));

    let listed = c.service.list_all_resources().await.unwrap();
    let uris: Vec<&str> = listed.iter().map(|r| r.uri.as_str()).collect();
    assert_eq!(uris, ["vmcluster://events"]);
    let templates = c.service.list_all_resource_templates().await.unwrap();
    assert_eq!(
        templates
            .iter()
            .map(|t| t.uri_template.as_str())
            .collect::<Vec<_>>(),
        [
            "vmcluster://exec/{op_id}/{node}/{stream}",
            "vmcluster://clusters/{cluster_name}/events"
        ]
    );
    let empty = read_page(&c, "vmcluster://events").await;
    assert_eq!(empty["events"], json!([]));
    assert_eq!(empty["last_seq"], 0);

    let mine = format!("vmcluster://clusters/{}/events", f.name);
    let other = "vmcluster://clusters/someone-else/events";
    for uri in ["vmcluster://events", mine.as_str(), other] {
        c.service
            .subscribe(SubscribeRequestParams::new(uri))
            .await
            .unwrap_or_else(|e| panic!("subscribe {uri}: {e}"));
    }
    for bad in ["vmcluster://nope", "vmcluster://clusters/a/b/events"] {
        assert!(
            c.service
                .subscribe(SubscribeRequestParams::new(bad))
                .await
                .is_err(),
            "{bad}"
        );
        assert!(
            c.service
                .read_resource(ReadResourceRequestParams::new(bad))
                .await
                .is_err(),
            "{bad}"
        );
    }

    c.call("cluster_define", json!({"topology_name": f.name}))
        .await
        .ok();
    let mut seen = Vec::new();
    await_update(&mut rx, &mine, &mut seen).await;
    await_update(&mut rx, "vmcluster://events", &mut seen).await;

    // The cluster now has its own resource, and both read as JSON pages of its events.
    let listed = c.service.list_all_resources().await.unwrap();
    assert!(listed.iter().any(|r| r.uri == mine), "{listed:?}");
    let page = read_page(&c, &mine).await;
    let events = page["events"].as_array().unwrap();
    assert!(events.iter().all(|e| e["cluster"] == f.name.as_str()));
    assert_eq!(events.first().unwrap()["kind"], "op.started");
    assert_eq!(events.last().unwrap()["kind"], "op.finished");
    let whole = read_page(&c, "vmcluster://events").await;
    assert_eq!(
        whole["last_seq"],
        whole["events"].as_array().unwrap().last().unwrap()["seq"]
    );

    // After unsubscribing, only the remaining subscription is notified.
    c.service
        .unsubscribe(rmcp::model::UnsubscribeRequestParams::new(&mine))
        .await
        .unwrap();
    while rx.try_recv().is_ok() {}
    c.call(
        "cluster_start",
        json!({"cluster_name": f.name, "wait_for_ssh": false}),
    )
    .await
    .ok();
    let mut after = Vec::new();
    await_update(&mut rx, "vmcluster://events", &mut after).await;
    c.call("events_read", json!({})).await.ok();
    while let Ok(u) = rx.try_recv() {
        after.push(u);
    }
    seen.extend(after.iter().cloned());
    assert!(!after.contains(&mine), "{after:?}");
    assert!(!seen.iter().any(|u| u == other), "{seen:?}");
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_reads_the_journal_without_a_server_and_follow_waits_for_one() {
    let f = Fixture::new("itevcli", &["n1"]);
    let g = second(&f, "itevclib");
    // No server has ever run: nothing to print, and no journal is created by looking.
    let out = cli(&f, &["events"]);
    assert!(out.stdout.is_empty());
    assert!(!f.scratch.path().join("state/journal").exists());

    cli(&f, &["define", &f.name]);
    cli(&f, &["define", &g.name]);
    let out = cli(&f, &["events", "--json"]);
    let events = lines(&out);
    check_ordered(&events);
    assert_eq!(
        ops(&events, &f.name),
        [
            op("cluster_define", "op.started", ""),
            op("cluster_define", "op.finished", "applied")
        ]
    );
    assert_eq!(ops(&events, &g.name).len(), 2);

    let only_g = lines(&cli(&f, &["events", "--json", "--cluster", &g.name]));
    assert!(!only_g.is_empty());
    assert!(only_g.iter().all(|e| e["cluster"] == g.name.as_str()));
    let k = events[3]["seq"].as_u64().unwrap();
    let after = lines(&cli(&f, &["events", "--json", "--since", &k.to_string()]));
    assert_eq!(after, events[4..]);

    // Human output: one line per event, with its time, seq, kind, cluster and what happened.
    let out = cli(&f, &["events"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let human: Vec<&str> = text.lines().collect();
    assert_eq!(human.len(), events.len(), "{text}");
    let first = human[0];
    assert!(
        first.starts_with(events[0]["time"].as_str().unwrap())
            && first.contains(" op.started ")
            && first.contains(&f.name)
            && first.contains("cluster_define")
            && first.contains(events[0]["op_id"].as_str().unwrap()),
        "{first}"
    );
    let finished = human.iter().find(|l| l.contains(" op.finished ")).unwrap();
    assert!(finished.contains("applied"), "{finished}");

    // --follow with no server prints the journal, then waits; a server that starts is
    // followed from where it stopped, with nothing printed twice.
    let mut follower = EventsFollower::spawn(&f.env(), &[]);
    let last = events.last().unwrap()["seq"].clone();
    let backlog = follower.until(DEADLINE, |e| e["seq"] == last).await;
    assert_eq!(backlog, events);
    let c = McpClient::spawn(&f.env()).await;
    let r = c
        .call("cluster_destroy", json!({"cluster_name": g.name}))
        .await;
    let destroy_op = r.envelope["op_id"].clone();
    r.ok();
    let live = follower
        .until(DEADLINE, |e| {
            e["kind"] == "op.finished" && e["op_id"] == destroy_op
        })
        .await;
    assert_eq!(live[0]["kind"], "op.started", "{live:#?}");
    assert_eq!(live[0]["seq"].as_u64(), Some(last.as_u64().unwrap() + 1));
    check_ordered(&[backlog, live.clone()].concat());
    assert!(
        live.iter().all(|e| e["cluster"] == g.name.as_str()),
        "{live:#?}"
    );
    c.close().await;
    follower.kill().await;
}

fn socket(f: &Fixture) -> PathBuf {
    f.scratch.path().join("state/control.sock")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_socket_is_owner_only_replaces_a_stale_one_and_goes_away() {
    let f = Fixture::new("itevsock", &["n1"]);
    // A socket left behind by a server that died: nothing answers on it.
    let stale = std::os::unix::net::UnixListener::bind(socket(&f)).unwrap();
    drop(stale);
    assert!(socket(&f).exists());

    let c = McpClient::spawn(&f.env()).await;
    let m = std::fs::symlink_metadata(socket(&f)).unwrap();
    assert!(m.file_type().is_socket());
    assert_eq!(m.permissions().mode() & 0o777, 0o600, "owner-only");
    assert_eq!(m.uid(), own_uid());
    // Nothing else was left in the state directory (the socket is made in a private
    // directory first).
    assert_eq!(
        crate::dir_names(&f.scratch.path().join("state")),
        ["control.sock", "exec-outputs", "journal"]
    );

    // It answers the line protocol, including with errors.
    let hello = ask(
        &socket(&f),
        "{\"request\":\"hello\"}\n{\"request\":\"nope\"}\n",
    );
    let hello: Vec<Value> = hello
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(hello[0]["type"], "hello", "{hello:?}");
    assert_eq!(hello[0]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(hello[1]["type"], "error");
    assert_eq!(hello[1]["code"], "INVALID_ARGUMENT");

    c.close().await;
    let path = socket(&f);
    eventually("the control socket to be removed", || {
        let gone = !path.exists();
        async move { gone.then_some(()) }
    })
    .await;

    // A file that is not a socket is never replaced: the server refuses to start.
    std::fs::write(socket(&f), "mine").unwrap();
    let out = Command::new(vmcluster_bin())
        .arg("serve")
        .envs(f.env())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(socket(&f)).unwrap(), "mine");
}

/// Our uid, from a file we just created.
fn own_uid() -> u32 {
    let t = tempfile::NamedTempFile::new().unwrap();
    std::fs::metadata(t.path()).unwrap().uid()
}

/// Sends `requests` on a fresh connection and returns everything the server answered before
/// the answer to the last request (reads until the number of lines matches).
fn ask(path: &std::path::Path, requests: &str) -> String {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(requests.as_bytes()).unwrap();
    let want = requests.lines().count();
    let mut r = BufReader::new(s);
    let mut out = String::new();
    for _ in 0..want {
        r.read_line(&mut out).unwrap();
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_listen_on_protocol_2026_07_28_notifies_accepted_resources() {
    use rmcp::model::{ProtocolVersion, ServerNotification, SubscriptionFilter};
    use rmcp::service::{ClientLifecycleMode, serve_client_with_lifecycle};
    use rmcp::transport::{ConfigureCommandExt, TokioChildProcess};

    let f = Fixture::new("itevlisten", &["n1"]);
    let env = f.env();
    let cmd = tokio::process::Command::new(vmcluster_bin()).configure(move |c| {
        c.arg("serve").env("VMCLUSTER_LOG_LEVEL", "warn");
        for (k, v) in &env {
            c.env(k, v);
        }
    });
    let client = serve_client_with_lifecycle(
        (),
        TokioChildProcess::new(cmd).unwrap(),
        ClientLifecycleMode::Discover {
            preferred_versions: vec![ProtocolVersion::V_2026_07_28],
        },
    )
    .await
    .expect("discover");
    let mine = format!("vmcluster://clusters/{}/events", f.name);
    let mut sub = client
        .peer()
        .listen(
            SubscriptionFilter::builder()
                .resource_subscription(&mine)
                .resource_subscription("vmcluster://nope")
                .build(),
        )
        .await
        .expect("subscriptions/listen");
    assert_eq!(
        sub.acknowledged().resource_subscriptions,
        Some(vec![mine.clone()]),
        "only resources that exist are accepted"
    );
    let r = client
        .peer()
        .call_tool(
            rmcp::model::CallToolRequestParams::new("cluster_define").with_arguments(
                json!({"topology_name": f.name})
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
        )
        .await
        .expect("cluster_define");
    assert_ne!(r.is_error, Some(true), "{r:?}");
    let updated = tokio::time::timeout(DEADLINE, async {
        loop {
            match sub.next().await.expect("subscription") {
                Some(ServerNotification::ResourceUpdatedNotification(n)) => return n.params.uri,
                Some(_) => continue,
                None => panic!("subscription ended"),
            }
        }
    })
    .await
    .expect("an update notification");
    assert_eq!(updated, mine);
    let _ = client.cancel().await;
}
