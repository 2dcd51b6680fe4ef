//! The `#[cached]` attribute macro (feature `macros`): what a cached function does, on the
//! embedded default and against a real Redis. Its compile errors are tested in
//! `macros/tests/ui` (trybuild).
#![cfg(feature = "macros")]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tierkit::{cached, Tierkit};

static KIT: LazyLock<Tierkit> = LazyLock::new(Tierkit::embedded);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
}

/// An application's error: its own cases, and tierkit's.
#[derive(Debug)]
enum AppError {
    NotFound(u64),
    Cache(tierkit::Error),
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppError::NotFound(id) => write!(f, "no user {id}"),
            AppError::Cache(e) => write!(f, "cache: {e}"),
        }
    }
}

impl From<tierkit::Error> for AppError {
    fn from(e: tierkit::Error) -> Self {
        AppError::Cache(e)
    }
}

static USER_LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(namespace = "macro-users", kit = KIT)]
async fn user(id: u64) -> Result<User, AppError> {
    USER_LOADS.fetch_add(1, Ordering::SeqCst);
    if id == 0 {
        return Err(AppError::NotFound(id));
    }
    Ok(User {
        id,
        name: format!("user {id}"),
    })
}

#[tokio::test]
async fn the_body_runs_once_per_key() {
    let before = USER_LOADS.load(Ordering::SeqCst);
    assert_eq!(user(1).await.unwrap().name, "user 1");
    assert_eq!(user(1).await.unwrap().name, "user 1");
    assert_eq!(user(2).await.unwrap().name, "user 2");
    assert_eq!(user(1).await.unwrap().id, 1);
    assert_eq!(USER_LOADS.load(Ordering::SeqCst) - before, 2);
    // The entry sits under the default key, the argument's Display form.
    let users = KIT.namespace::<User>("macro-users").build().unwrap();
    assert_eq!(users.get("1").await.unwrap().name, "user 1");
}

#[tokio::test]
async fn the_bodys_error_comes_back_as_it_is_and_is_not_cached() {
    static LOADS: AtomicUsize = AtomicUsize::new(0);

    #[cached(namespace = "macro-errors", kit = KIT)]
    async fn fails(id: u64) -> Result<u64, AppError> {
        LOADS.fetch_add(1, Ordering::SeqCst);
        Err(AppError::NotFound(id))
    }

    assert!(matches!(fails(7).await, Err(AppError::NotFound(7))));
    assert!(matches!(fails(7).await, Err(AppError::NotFound(7))));
    assert_eq!(LOADS.load(Ordering::SeqCst), 2);
    let ns = KIT.namespace::<u64>("macro-errors").build().unwrap();
    assert!(ns.get("7").await.is_none());
}

#[tokio::test]
async fn concurrent_callers_share_one_load_and_its_failure() {
    static LOADS: AtomicUsize = AtomicUsize::new(0);

    #[cached(namespace = "macro-shared", kit = KIT)]
    async fn slow(fail: bool) -> Result<u64, AppError> {
        LOADS.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        if fail {
            Err(AppError::NotFound(9))
        } else {
            Ok(9)
        }
    }

    let (a, b) = tokio::join!(slow(false), slow(false));
    assert_eq!((a.unwrap(), b.unwrap()), (9, 9));
    assert_eq!(LOADS.load(Ordering::SeqCst), 1);

    // The caller whose body failed gets its own error; the one that waited on that load gets
    // tierkit's Error::Loader, carrying its text, through From.
    let (a, b) = tokio::join!(slow(true), slow(true));
    assert_eq!(LOADS.load(Ordering::SeqCst), 2);
    let mut errors = [a.unwrap_err(), b.unwrap_err()];
    errors.sort_by_key(|e| matches!(e, AppError::Cache(_)));
    assert!(matches!(errors[0], AppError::NotFound(9)));
    match &errors[1] {
        AppError::Cache(tierkit::Error::Loader(inner)) => {
            assert_eq!(inner.to_string(), "no user 9")
        }
        other => panic!("expected a shared loader error, got {other:?}"),
    }
}

#[tokio::test]
async fn the_default_key_tells_arguments_apart() {
    static LOADS: AtomicUsize = AtomicUsize::new(0);

    // Borrowed arguments are copied for the body.
    #[cached(namespace = "macro-pairs", kit = KIT)]
    async fn pair(a: &str, b: &str) -> Result<String, tierkit::Error> {
        LOADS.fetch_add(1, Ordering::SeqCst);
        Ok(format!("{a}|{b}"))
    }

    assert_eq!(pair("a:b", "c").await.unwrap(), "a:b|c");
    assert_eq!(pair("a", "b:c").await.unwrap(), "a|b:c");
    assert_eq!(pair("a\\", ":c").await.unwrap(), "a\\|:c");
    assert_eq!(pair("a:b", "c").await.unwrap(), "a:b|c");
    assert_eq!(LOADS.load(Ordering::SeqCst), 3);
    let ns = KIT.namespace::<String>("macro-pairs").build().unwrap();
    assert_eq!(*ns.get("a\\:b:c").await.unwrap(), "a:b|c");
    assert_eq!(*ns.get("a\\\\:\\:c").await.unwrap(), "a\\|:c");
}

#[tokio::test]
async fn a_key_expression_replaces_the_default_key() {
    static LOADS: AtomicUsize = AtomicUsize::new(0);

    struct Query {
        id: u64,
        verbose: bool,
    }

    #[cached(namespace = "macro-keyed", kit = KIT, key = format!("q{}", query.id))]
    async fn lookup(query: Query) -> Result<String, tierkit::Error> {
        LOADS.fetch_add(1, Ordering::SeqCst);
        Ok(format!("{} {}", query.id, query.verbose))
    }

    assert_eq!(
        lookup(Query {
            id: 3,
            verbose: true
        })
        .await
        .unwrap(),
        "3 true"
    );
    // Same key: the cached answer, whatever else the argument holds.
    assert_eq!(
        lookup(Query {
            id: 3,
            verbose: false
        })
        .await
        .unwrap(),
        "3 true"
    );
    assert_eq!(LOADS.load(Ordering::SeqCst), 1);
    let ns = KIT.namespace::<String>("macro-keyed").build().unwrap();
    assert!(ns.get("q3").await.is_some());
}

#[tokio::test]
async fn the_ttl_argument_ends_entries() {
    static LOADS: AtomicUsize = AtomicUsize::new(0);

    #[cached(namespace = "macro-ttl", kit = KIT, ttl = "300ms")]
    async fn short(id: u64) -> Result<u64, tierkit::Error> {
        LOADS.fetch_add(1, Ordering::SeqCst);
        Ok(id)
    }

    #[cached(namespace = "macro-ttl-secs", kit = KIT, ttl_secs = 3600)]
    async fn long(id: u64) -> Result<u64, tierkit::Error> {
        LOADS.fetch_add(100, Ordering::SeqCst);
        Ok(id)
    }

    short(1).await.unwrap();
    long(1).await.unwrap();
    short(1).await.unwrap();
    long(1).await.unwrap();
    assert_eq!(LOADS.load(Ordering::SeqCst), 101);
    tokio::time::sleep(Duration::from_millis(600)).await;
    short(1).await.unwrap();
    long(1).await.unwrap();
    // The short entry expired and loaded again; the long one did not.
    assert_eq!(LOADS.load(Ordering::SeqCst), 102);
}

#[tokio::test]
async fn tags_invalidate_the_entries_they_were_given() {
    static LOADS: AtomicUsize = AtomicUsize::new(0);

    #[cached(namespace = "macro-tags", kit = KIT, tags = ["members", format!("org:{org}")])]
    async fn member(org: u64, id: u64) -> Result<String, tierkit::Error> {
        LOADS.fetch_add(1, Ordering::SeqCst);
        Ok(format!("{id}@{org}"))
    }

    assert_eq!(member(1, 10).await.unwrap(), "10@1");
    assert_eq!(member(2, 20).await.unwrap(), "20@2");
    assert_eq!(LOADS.load(Ordering::SeqCst), 2);
    let ns = KIT.namespace::<String>("macro-tags").build().unwrap();
    ns.invalidate_tag("org:1").await.unwrap();
    member(1, 10).await.unwrap();
    member(2, 20).await.unwrap();
    assert_eq!(
        LOADS.load(Ordering::SeqCst),
        3,
        "only org 1's entry was dropped"
    );
    ns.invalidate_tag("members").await.unwrap();
    member(1, 10).await.unwrap();
    member(2, 20).await.unwrap();
    assert_eq!(LOADS.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn the_version_argument_declares_that_version() {
    #[cached(namespace = "macro-versioned", kit = KIT, version = 2)]
    async fn versioned(id: u64) -> Result<u64, tierkit::Error> {
        Ok(id * 2)
    }

    assert_eq!(versioned(21).await.unwrap(), 42);
    let v2 = KIT
        .namespace::<u64>("macro-versioned")
        .version(2)
        .build()
        .unwrap();
    assert_eq!(*v2.get("21").await.unwrap(), 42);
    // The name is taken by version 2: another version is another declaration, refused.
    assert!(KIT.namespace::<u64>("macro-versioned").build().is_err());
}

#[tokio::test]
async fn a_namespace_declared_otherwise_fails_the_call_through_from() {
    let _taken = KIT
        .namespace::<u64>("macro-clash")
        .ttl(Duration::from_secs(5))
        .build()
        .unwrap();

    #[cached(namespace = "macro-clash", kit = KIT)]
    async fn clash(id: u64) -> Result<u64, AppError> {
        Ok(id)
    }

    match clash(1).await {
        Err(AppError::Cache(tierkit::Error::Config { field, .. })) => {
            assert_eq!(field, "namespace")
        }
        other => panic!("expected the declaration to be refused, got {other:?}"),
    }
}

static BY_KIT_LOADS: AtomicUsize = AtomicUsize::new(0);

/// A kit as a parameter: left out of the key, and usable in the body.
#[cached(namespace = "macro-by-kit", kit = kit)]
async fn by_kit(kit: &Tierkit, id: u64) -> Result<String, tierkit::Error> {
    BY_KIT_LOADS.fetch_add(1, Ordering::SeqCst);
    Ok(format!("{id} embedded={}", kit.is_embedded()))
}

#[tokio::test]
async fn a_kit_from_an_argument_caches_per_instance() {
    let (a, b) = (Tierkit::embedded(), Tierkit::embedded());
    let before = BY_KIT_LOADS.load(Ordering::SeqCst);
    assert_eq!(by_kit(&a, 1).await.unwrap(), "1 embedded=true");
    assert_eq!(by_kit(&a, 1).await.unwrap(), "1 embedded=true");
    assert_eq!(BY_KIT_LOADS.load(Ordering::SeqCst) - before, 1);
    // Another instance has caches of its own.
    by_kit(&b, 1).await.unwrap();
    by_kit(&b, 1).await.unwrap();
    assert_eq!(BY_KIT_LOADS.load(Ordering::SeqCst) - before, 2);
    let ns = b.namespace::<String>("macro-by-kit").build().unwrap();
    assert!(
        ns.get("1").await.is_some(),
        "the kit is not part of the key"
    );

    // An instance dropped is forgotten; a new one (perhaps at the same address) starts empty.
    drop(a);
    for _ in 0..3 {
        let c = Tierkit::embedded();
        let at = BY_KIT_LOADS.load(Ordering::SeqCst);
        by_kit(&c, 1).await.unwrap();
        by_kit(&c, 1).await.unwrap();
        assert_eq!(BY_KIT_LOADS.load(Ordering::SeqCst) - at, 1);
    }
}

#[tokio::test]
async fn owned_and_shared_kits_work_as_parameters() {
    #[cached(namespace = "macro-owned-kit", kit = kit)]
    async fn owned(kit: Tierkit, id: u64) -> Result<u64, tierkit::Error> {
        Ok(id + u64::from(kit.is_embedded()))
    }

    #[cached(namespace = "macro-arc-kit", kit = kit, key = id)]
    async fn shared(kit: Arc<Tierkit>, id: u64) -> Result<u64, tierkit::Error> {
        let _ = kit;
        Ok(id)
    }

    let kit = Tierkit::embedded();
    assert_eq!(owned(kit.clone(), 1).await.unwrap(), 2);
    assert_eq!(shared(Arc::new(kit.clone()), 5).await.unwrap(), 5);
    let ns = kit.namespace::<u64>("macro-arc-kit").build().unwrap();
    assert_eq!(*ns.get("5").await.unwrap(), 5);
}

/// Against Redis: a second instance gets the first one's value from L2, without running the
/// body.
#[tokio::test]
async fn a_second_instance_reads_what_the_first_loaded_from_redis() {
    static LOADS: AtomicUsize = AtomicUsize::new(0);

    #[cached(namespace = "macro-redis", kit = kit, ttl = "1m", tags = ["all"])]
    async fn shared(kit: &Tierkit, id: u64) -> Result<u64, tierkit::Error> {
        LOADS.fetch_add(1, Ordering::SeqCst);
        Ok(id + 1)
    }

    let backend = support::Backend::redis();
    let (a, b) = (backend.kit().await, backend.kit().await);
    // A tag's first use makes its epoch in Redis; the value that used it stays in L1 that
    // once (the library's rule), so the first call here only warms the tag.
    assert_eq!(shared(&a, 0).await.unwrap(), 1);
    assert_eq!(shared(&a, 1).await.unwrap(), 2);
    assert_eq!(shared(&b, 1).await.unwrap(), 2);
    assert_eq!(
        LOADS.load(Ordering::SeqCst),
        2,
        "b read a's value from Redis"
    );

    // A tag invalidated on b reaches a.
    let on_b = b.namespace::<u64>("macro-redis").build().unwrap();
    on_b.invalidate_tag("all").await.unwrap();
    let on_a = a.namespace::<u64>("macro-redis").build().unwrap();
    let dropped = support::eventually(Duration::from_secs(5), || async {
        on_a.get("1").await.is_none()
    })
    .await;
    assert!(dropped.is_some(), "a still serves the invalidated entry");
    assert_eq!(shared(&a, 1).await.unwrap(), 2);
    assert_eq!(LOADS.load(Ordering::SeqCst), 3);
}

/// What the macro stands on: a slot keeps one handle per instance, and refuses a declaration
/// made on another instance than the one asked.
#[tokio::test]
async fn a_slot_keeps_the_handle_declared_on_its_own_instance() {
    static SLOT: tierkit::cache::NamespaceSlot<String> = tierkit::cache::NamespaceSlot::new();

    let (a, b) = (Tierkit::embedded(), Tierkit::embedded());
    let on_a = a
        .namespace_in(&SLOT, |kit| kit.namespace::<String>("slotted").build())
        .unwrap();
    on_a.set("k", "v".into()).await.unwrap();
    let again = a.namespace_in(&SLOT, |_| panic!("declared once")).unwrap();
    assert_eq!(*again.get("k").await.unwrap(), "v");
    let wrong = b.namespace_in(&SLOT, |_| a.namespace::<String>("slotted").build());
    assert!(matches!(wrong, Err(tierkit::Error::InvalidInput { .. })));
    let on_b = b
        .namespace_in(&SLOT, |kit| kit.namespace::<String>("slotted").build())
        .unwrap();
    assert!(on_b.get("k").await.is_none(), "b has caches of its own");
    assert!(format!("{SLOT:?}").contains("instances: 2"));
}
