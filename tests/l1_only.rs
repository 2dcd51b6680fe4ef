//! L1-only namespaces against a real Redis: values never reach Redis, yet every change is
//! announced, so other instances drop their copies, also after an outage.

mod support;

use std::time::Duration;

use support::{eventually, Backend, TcpProxy};
use tierkit::cache::{Reach, Source};

fn cache_keys_of(backend: &Backend, namespace: &str) -> Vec<String> {
    let server = backend.server().unwrap();
    let mut con = server.client().get_connection().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut con).unwrap();
    keys.into_iter()
        .filter(|k| k.contains(&format!(":c:{namespace}:")))
        .collect()
}

#[tokio::test]
async fn values_stay_in_process_and_changes_reach_every_instance() {
    let backend = Backend::redis();
    let (a, b) = (backend.kit().await, backend.kit().await);
    let on_a = a.namespace::<String>("secrets").l1_only().build().unwrap();
    let on_b = b.namespace::<String>("secrets").l1_only().build().unwrap();

    assert_eq!(
        on_a.set("k", "from a".into()).await.unwrap(),
        Reach::AllTiers
    );
    assert_eq!(*on_a.get("k").await.unwrap(), "from a");
    // B cannot read A's value: it is in A's process only.
    assert!(on_b.get("k").await.is_none());
    let loaded = on_b
        .get_or_set("k", || async {
            Ok::<_, std::io::Error>("loaded by b".to_owned())
        })
        .await
        .unwrap();
    assert_eq!(*loaded, "loaded by b");
    assert_eq!(on_b.get("k").await.unwrap().source(), Source::L1);
    on_a.invalidate_tag("t").await.unwrap();
    on_a.set("other", "x".into()).await.unwrap();
    on_a.invalidate_pattern("oth*").await.unwrap();
    assert!(
        cache_keys_of(&backend, "secrets").is_empty(),
        "an L1-only namespace wrote to Redis"
    );

    // A's write is announced: B drops its copy.
    on_a.set("k", "newer".into()).await.unwrap();
    let dropped = eventually(Duration::from_secs(2), || async {
        on_b.get("k").await.is_none()
    })
    .await;
    assert!(dropped.is_some(), "B kept its copy after A's write");

    // So is a clear.
    on_b.set("k", "b again".into()).await.unwrap();
    assert_eq!(on_a.clear().await.unwrap().0, Reach::AllTiers);
    let cleared = eventually(Duration::from_secs(2), || async {
        on_b.get("k").await.is_none()
    })
    .await;
    assert!(cleared.is_some(), "B kept its copy after A's clear");
}

/// A change the other instances were not told of (this instance was cut off, the message
/// lost) is owed and announced once Redis answers again.
#[tokio::test]
async fn a_change_made_while_cut_off_is_announced_once_redis_answers() {
    let backend = Backend::redis();
    let proxy = TcpProxy::start(&backend.server().unwrap().addr());
    let a = backend
        .kit_with(support::fast_builder().redis_url(proxy.url()))
        .await;
    let b = backend.kit().await;
    let on_a = a.namespace::<String>("secrets").l1_only().build().unwrap();
    let on_b = b.namespace::<String>("secrets").l1_only().build().unwrap();
    on_b.set("k", "b's copy".into()).await.unwrap();
    assert!(on_b.get("k").await.is_some());

    // A's bytes are dropped: its announcement never reaches Redis.
    proxy.blackhole(true);
    assert_eq!(on_a.invalidate("k").await.unwrap(), Reach::L1Only);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        on_b.get("k").await.is_some(),
        "B heard of a change that was lost"
    );
    proxy.blackhole(false);
    proxy.drop_connections();
    let dropped = eventually(Duration::from_secs(10), || async {
        on_b.get("k").await.is_none()
    })
    .await;
    assert!(dropped.is_some(), "B kept its copy after A came back");
    assert!(cache_keys_of(&backend, "secrets").is_empty());
}

#[tokio::test]
async fn an_l1_only_namespace_cannot_share_loads_through_redis() {
    let kit = tierkit::Tierkit::embedded();
    let err = kit
        .namespace::<String>("secrets")
        .l1_only()
        .single_flight(Duration::from_secs(1))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("single_flight"), "{err}");
}
