//! The `tierkit` binary against a real redis-server (spawned on a free loopback port, never
//! 6379), filled through the library, each command checked through its `--json` output.

/// The root crate's harness: `redis-server`s (and a cluster of them) on free loopback ports.
#[allow(dead_code, unexpected_cfgs)]
#[path = "../../tests/support"]
mod support {
    pub mod cluster;
    pub mod server;
}

use std::time::Duration;

use serde_json::Value;
use support::cluster::RedisCluster;
use support::server::{self as server, RedisServer};
use tierkit::cache::{Namespace, SetOptions, Source};
use tierkit::codec::Keyring;
use tierkit::ratelimit::Quota;
use tierkit::session::NewSession;
use tierkit::{Config, Tierkit};

const KEYS: &str = "2:AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";

/// What one run of the binary gave.
struct Run {
    code: i32,
    json: Value,
    stderr: String,
}

/// Runs `tierkit --json ARGS` with only `env` of the library's variables set.
async fn tierkit_env(env: &[(&str, &str)], args: &[&str]) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tierkit"));
    for (k, _) in std::env::vars() {
        if k.starts_with("REDIS_") || k.starts_with("TIERKIT_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied()).arg("--json").args(args);
    let out = cmd.output().await.expect("the tierkit binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {stdout:?}"));
    Run {
        code: out.status.code().unwrap_or(-1),
        json,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn tierkit(server: &RedisServer, args: &[&str]) -> Run {
    tierkit_env(&[("REDIS_URL", &server.url())], args).await
}

/// A ready instance of the library on `server`.
async fn kit(server: &RedisServer, keys: bool) -> Tierkit {
    let mut config = Config::builder().redis_url(server.url());
    if keys {
        config = config.encryption_keys(Keyring::parse(KEYS).unwrap());
    }
    let kit = Tierkit::new(config.build().unwrap()).unwrap();
    assert!(
        kit.ready(Duration::from_secs(5)).await,
        "tierkit never ready"
    );
    kit
}

fn ok(run: &Run) -> &Value {
    assert_eq!(run.code, 0, "exit code; stderr: {}", run.stderr);
    &run.json
}

/// Polls `f` until it holds, for up to 2 s.
async fn eventually<F: std::future::Future<Output = bool>>(mut f: impl FnMut() -> F) -> bool {
    for _ in 0..200 {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_redis_up() {
    let server = RedisServer::start();
    let run = tierkit(&server, &["health"]).await;
    let json = ok(&run);
    assert_eq!(json["status"], "healthy");
    assert_eq!(json["redis"]["state"], "up");
    assert!(json["cache"]["totalKeys"].is_u64(), "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_count_keys_and_memory_per_group() {
    let server = RedisServer::start();
    let kit = kit(&server, false).await;
    let users = kit.namespace::<String>("users").build().unwrap();
    for i in 0..30 {
        users.set(&i.to_string(), "x".repeat(100)).await.unwrap();
    }
    let events = kit.namespace::<u64>("events").version(2).build().unwrap();
    events.set("a", 1).await.unwrap();
    let sessions = kit.sessions().build().unwrap();
    sessions.create(NewSession::new("user-1")).await.unwrap();
    let login = kit
        .limiter("login", Quota::new(5, Duration::from_secs(60)).unwrap())
        .build()
        .unwrap();
    login.check("ip:1").await;

    let run = tierkit(&server, &["namespaces", "--samples", "5"]).await;
    let json = ok(&run);
    let rows = json["namespaces"].as_array().unwrap();
    let row = |kind: &str, name: &str| {
        rows.iter()
            .find(|r| r["kind"] == kind && r["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} in {json}"))
            .clone()
    };
    let users = row("cache", "users");
    assert_eq!(users["parts"]["entries"], 30, "{users}");
    assert_eq!(users["versions"], serde_json::json!([1]));
    assert_eq!(users["sampled"], 5);
    assert!(
        users["estimatedBytes"].as_u64().unwrap() > 30 * 100,
        "{users}"
    );
    assert_eq!(row("cache", "events")["versions"], serde_json::json!([2]));
    assert!(row("sessions", "-")["parts"]["sessions"] == 1);
    assert!(row("limiter", "login")["parts"]["slidingLog"] == 1);
    assert_eq!(json["cluster"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_shows_frame_envelope_ttl_tags_and_preview() {
    let server = RedisServer::start();
    let kit = kit(&server, true).await;
    let docs = kit.namespace::<String>("docs").build().unwrap();
    let big = "hello world ".repeat(500);
    docs.set_with("readme", big.clone(), SetOptions::new().tag("team-7"))
        .await
        .unwrap();
    let run = tierkit(&server, &["inspect", "tierkit:c:docs:v1:readme"]).await;
    let json = ok(&run);
    assert_eq!(json["kind"], "cacheEntry");
    assert_eq!(
        (&json["namespace"], &json["cacheKey"]),
        (&"docs".into(), &"readme".into())
    );
    assert_eq!(json["entry"]["kind"], "value");
    assert_eq!(json["entry"]["tags"][0]["tag"], "team-7");
    assert_eq!(json["entry"]["epochsHold"], true, "{json}");
    // The filling instance is on the backplane, and may hold a copy.
    assert_eq!(json["l1"]["otherSubscribers"], 1, "{json}");
    assert_eq!(
        json["l1"]["pubsubClients"].as_array().unwrap().len(),
        2,
        "{json}"
    );
    assert!(json["pttlMs"].as_u64().unwrap() > 3_000_000, "{json}");
    assert_eq!(json["envelope"]["compressed"], true);
    assert_eq!(json["envelope"]["version"], 1);
    // bincode: a length byte pair for 6000 bytes (varint 251 + u16), then the text.
    let decoded = json["decodedLen"].as_u64().unwrap();
    assert_eq!(decoded, big.len() as u64 + 3);
    assert!(json["envelope"]["storedLen"].as_u64().unwrap() < decoded / 4);
    assert!(json["preview"]["utf8"]
        .as_str()
        .unwrap()
        .contains("hello world"));
    assert_eq!(json["preview"]["truncated"], true);

    // Encrypted: the key id without keys; the decoded size and preview with them.
    let secrets = kit
        .namespace::<String>("secrets")
        .encrypted()
        .build()
        .unwrap();
    secrets.set("k", "classified".into()).await.unwrap();
    let run = tierkit(&server, &["inspect", "tierkit:c:secrets:v1:k"]).await;
    let json = ok(&run);
    assert_eq!(json["envelope"]["keyId"], 2);
    assert_eq!(json["envelope"]["encrypted"], true);
    assert!(
        json["decodedLen"].is_null() && json["preview"].is_null(),
        "{json}"
    );
    let url = server.url();
    let env = [
        ("REDIS_URL", url.as_str()),
        ("TIERKIT_ENCRYPTION_KEYS", KEYS),
    ];
    let run = tierkit_env(&env, &["inspect", "tierkit:c:secrets:v1:k"]).await;
    let json = ok(&run);
    assert_eq!(json["decodedLen"], 11);
    assert!(json["preview"]["utf8"]
        .as_str()
        .unwrap()
        .contains("classified"));

    // A tombstone after an invalidation; other kinds of keys by the schema.
    docs.invalidate("readme").await.unwrap();
    let run = tierkit(&server, &["inspect", "tierkit:c:docs:v1:readme"]).await;
    assert_eq!(ok(&run)["entry"]["kind"], "tombstone");
    let run = tierkit(&server, &["inspect", "tierkit:c:docs:e1"]).await;
    let json = ok(&run);
    assert_eq!(json["kind"], "namespaceEpoch");
    assert!(json["value"].as_str().unwrap().parse::<u64>().is_ok());
    // (A store with encryption keys also wants a session name key: a plain instance here.)
    let plain = self::kit(&server, false).await;
    let sessions = plain.sessions().build().unwrap();
    sessions.create(NewSession::new("u")).await.unwrap();
    let run = tierkit(&server, &["inspect", "tierkit:s:counts"]).await;
    let json = ok(&run);
    assert_eq!(json["kind"], "sessionCounts");
    assert!(json["fields"].is_array(), "{json}");

    // Bytes another program wrote where tierkit keeps its own: described, never a panic.
    let mut raw = server.client().get_connection().unwrap();
    let _: () = redis::cmd("SET")
        .arg("tierkit:c:docs:v1:alien")
        .arg(b"\xff\x00garbage")
        .query(&mut raw)
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg("tierkit:c:docs:v1:hash")
        .arg("f")
        .arg("v")
        .query(&mut raw)
        .unwrap();
    let run = tierkit(&server, &["inspect", "tierkit:c:docs:v1:alien"]).await;
    let json = ok(&run);
    assert!(json["frameError"].is_string(), "{json}");
    assert_eq!(json["preview"]["hex"], "ff 00 67 61 72 62 61 67 65");
    let run = tierkit(&server, &["inspect", "tierkit:c:docs:v1:hash"]).await;
    assert_eq!(ok(&run)["fields"][0]["value"], "v");
    let run = tierkit(&server, &["namespaces"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);

    // Errors: a key that is not there.
    let run = tierkit(&server, &["inspect", "tierkit:c:docs:v1:nope"]).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("no key"), "{}", run.stderr);
    assert!(run.json["error"].is_string());
}

/// A namespace on a second instance holding `key` in its L1.
async fn held(kit: &Tierkit, ns: &Namespace<String>, key: &str) {
    let _ = kit;
    ns.get(key).await.expect("in Redis");
    let hit = ns.get(key).await.expect("in L1");
    assert_eq!(hit.source(), Source::L1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_makes_every_instance_drop_its_l1_copy() {
    let server = RedisServer::start();
    let writer = kit(&server, false).await;
    let reader = kit(&server, false).await;
    let cases: [(&str, Vec<&str>); 5] = [
        ("by-key", vec!["key", "by-key", "a"]),
        ("by-full-key", vec!["key", "tierkit:c:by-full-key:v1:a"]),
        ("by-tag", vec!["tag", "by-tag", "t"]),
        ("by-pattern", vec!["pattern", "by-pattern", "a*"]),
        ("by-namespace", vec!["namespace", "by-namespace"]),
    ];
    for (name, args) in cases {
        let w = writer.namespace::<String>(name).build().unwrap();
        w.set_with("a", "v".into(), SetOptions::new().tag("t"))
            .await
            .unwrap();
        w.set("b", "kept".into()).await.unwrap();
        let r = reader.namespace::<String>(name).build().unwrap();
        held(&reader, &r, "a").await;
        held(&reader, &r, "b").await;

        let mut cli = vec!["invalidate"];
        cli.extend(args);
        let run = tierkit(&server, &cli).await;
        let json = ok(&run);
        assert_eq!(json["announced"], true, "{json}");
        assert_eq!(json["namespace"], name);

        // The reader's L1 copy goes, through the backplane, and Redis holds no value.
        let dropped = eventually(|| async { r.get("a").await.is_none() }).await;
        assert!(dropped, "{name}: the other instance still serves its copy");
        assert!(w.get("a").await.is_none(), "{name}");
        // What the invalidation did not name stays, except for a whole namespace.
        let b = r.get("b").await;
        if name == "by-namespace" {
            assert!(b.is_none());
        } else {
            assert_eq!(b.expect("b kept").source(), Source::L1, "{name}");
        }
    }
    let run = tierkit(&server, &["invalidate", "pattern", "by-pattern", "zz*"]).await;
    assert_eq!(ok(&run)["removed"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_refuses_unknown_namespaces_and_bad_keys() {
    let server = RedisServer::start();
    let run = tierkit(&server, &["invalidate", "namespace", "typo"]).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("unknown namespace"), "{}", run.stderr);
    let run = tierkit(&server, &["invalidate", "namespace", "typo", "--force"]).await;
    assert_eq!(ok(&run)["invalidated"], "namespace");
    let run = tierkit(&server, &["invalidate", "key", "tierkit:s:users"]).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("not a cache entry"), "{}", run.stderr);
    let run = tierkit(&server, &["invalidate", "key", "bad:name", "k", "--force"]).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("namespace"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_list_and_revoke() {
    let server = RedisServer::start();
    let kit = kit(&server, false).await;
    let sessions = kit.sessions().build().unwrap();
    let first = sessions
        .create(NewSession::new("user-1").ip("203.0.113.7"))
        .await
        .unwrap();
    sessions.create(NewSession::new("user-1")).await.unwrap();
    sessions.create(NewSession::new("user-1")).await.unwrap();

    let run = tierkit(&server, &["sessions", "list", "user-1"]).await;
    let list = ok(&run)["sessions"].as_array().unwrap().clone();
    assert_eq!(list.len(), 3);
    let handle = first.session.handle.clone();
    let listed = list
        .iter()
        .find(|s| s["handle"] == handle.as_str())
        .unwrap();
    assert_eq!(listed["ip"], "203.0.113.7");
    assert!(listed["expiresAtMs"].as_u64().unwrap() > listed["createdAtMs"].as_u64().unwrap());

    let run = tierkit(
        &server,
        &["sessions", "revoke", "user-1", "--session", &handle],
    )
    .await;
    assert_eq!(ok(&run)["revoked"], 1);
    assert!(sessions
        .validate(first.session_id.expose())
        .await
        .session()
        .is_none());
    let run = tierkit(
        &server,
        &["sessions", "revoke", "user-1", "--session", &handle],
    )
    .await;
    assert_eq!(run.code, 1, "a second revoke finds nothing");
    let run = tierkit(&server, &["sessions", "revoke", "user-1", "--all"]).await;
    assert_eq!(ok(&run)["revoked"], 2);
    let run = tierkit(&server, &["sessions", "list", "user-1"]).await;
    assert_eq!(ok(&run)["sessions"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_peek_and_reset() {
    let server = RedisServer::start();
    let kit = kit(&server, false).await;
    let quota = Quota::new(5, Duration::from_secs(60)).unwrap();
    let login = kit.limiter("login", quota).build().unwrap();
    for _ in 0..3 {
        assert!(login.check("ip:1").await.allowed);
    }
    let peek = [
        "limit", "peek", "login", "ip:1", "--limit", "5", "--window", "60s",
    ];
    let run = tierkit(&server, &peek).await;
    let json = ok(&run);
    assert_eq!(
        (&json["used"], &json["remaining"]),
        (&3.into(), &2.into()),
        "{json}"
    );
    assert_eq!(json["tier"], "redis");
    // Peeking spends nothing.
    assert_eq!(login.peek("ip:1").await.remaining, 2);

    let run = tierkit(&server, &["limit", "reset", "login", "ip:1"]).await;
    assert_eq!(
        ok(&run)["reset"],
        serde_json::json!(["slidingLog", "slidingCounter"])
    );
    assert_eq!(login.peek("ip:1").await.remaining, 5);
    let run = tierkit(&server, &peek).await;
    assert_eq!(ok(&run)["used"], 0);

    // The counter without a script: its keys are named by the window.
    let pipelined = kit
        .limiter("api", quota)
        .algorithm(tierkit::ratelimit::Algorithm::PipelinedCounter)
        .build()
        .unwrap();
    for _ in 0..4 {
        assert!(pipelined.check("u:1").await.allowed);
    }
    let peek_pc = [
        "limit",
        "peek",
        "api",
        "u:1",
        "--limit",
        "5",
        "--window",
        "60s",
        "--algorithm",
        "pipelined",
    ];
    assert_eq!(ok(&tierkit(&server, &peek_pc).await)["used"], 4);
    let no_window = ["limit", "reset", "api", "u:1", "--algorithm", "pipelined"];
    assert_eq!(tierkit(&server, &no_window).await.code, 1);
    let reset = ["limit", "reset", "api", "u:1", "--window", "60s"];
    assert_eq!(
        ok(&tierkit(&server, &reset).await)["reset"],
        serde_json::json!(["slidingLog", "slidingCounter", "pipelinedCounter"])
    );
    assert_eq!(pipelined.peek("u:1").await.remaining, 5);

    let run = tierkit(
        &server,
        &[
            "limit", "peek", "bad:name", "k", "--limit", "5", "--window", "1m",
        ],
    )
    .await;
    assert_eq!(run.code, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_exit_nonzero_with_a_message() {
    // Nothing configured.
    let run = tierkit_env(&[], &["namespaces"]).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("no Redis configured"), "{}", run.stderr);
    // Redis unreachable: a port nothing listens on.
    let port = server::free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let env = [("REDIS_URL", url.as_str())];
    let run = tierkit_env(&env, &["--wait", "300ms", "inspect", "k"]).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("unreachable"), "{}", run.stderr);
    assert!(run.json["error"].as_str().unwrap().contains("unreachable"));
    // health prints its report and still says so.
    let run = tierkit_env(&env, &["--wait", "300ms", "health"]).await;
    assert_eq!(run.code, 1);
    assert_eq!(run.json["redis"]["state"], "down", "{}", run.json);
    // A command line clap refuses: exit 2, and still one JSON document.
    let run = tierkit_env(&env, &["limit", "peek", "login", "k"]).await;
    assert_eq!(run.code, 2);
    assert!(run.json["error"].is_string(), "{}", run.json);
    // A bad environment value.
    let run = tierkit_env(
        &[
            ("REDIS_URL", "redis://127.0.0.1:1"),
            ("TIERKIT_PREFIX", "a:b"),
        ],
        &["health"],
    )
    .await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("prefix") || run.stderr.contains("TIERKIT_PREFIX"),
        "{}",
        run.stderr
    );
}

/// On a cluster, `namespaces` walks every primary and `inspect` and `invalidate` reach each
/// key's own node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_is_walked_on_every_primary() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap();
    let seeds = cluster.seeds().join(",");
    let config = Config::builder()
        .redis_cluster(cluster.seeds())
        .build()
        .unwrap();
    let kit = Tierkit::new(config).unwrap();
    assert!(
        kit.ready(Duration::from_secs(10)).await,
        "tierkit never ready"
    );
    let users = kit.namespace::<String>("users").build().unwrap();
    for i in 0..40 {
        users.set(&i.to_string(), "x".repeat(50)).await.unwrap();
    }
    let env = [("REDIS_CLUSTER_NODES", seeds.as_str())];
    let run = tierkit_env(&env, &["namespaces", "--samples", "10"]).await;
    let json = ok(&run);
    assert_eq!(json["cluster"], true);
    let row = json["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "users")
        .unwrap()
        .clone();
    assert_eq!(row["parts"]["entries"], 40, "{row}");
    assert_eq!(row["sampled"], 10, "{row}");
    let run = tierkit_env(&env, &["inspect", "tierkit:c:users:v1:7"]).await;
    assert_eq!(ok(&run)["entry"]["epochsHold"], true);
    let run = tierkit_env(&env, &["invalidate", "namespace", "users"]).await;
    assert!(ok(&run)["removed"].as_u64().unwrap() >= 40, "{}", run.json);
    assert!(users.get("7").await.is_none());
}

/// Runs `tierkit ARGS` (text output) and gives stdout; the run must succeed.
async fn text(server: &RedisServer, args: &[&str]) -> String {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tierkit"))
        .env("REDIS_URL", server.url())
        .args(args)
        .output()
        .await
        .expect("the tierkit binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("$ tierkit {}\n{stdout}", args.join(" "));
    stdout
}

/// Without `--json`, each command answers in lines a person reads (and no progress bar when
/// stderr is not a terminal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_output_reads_well() {
    let server = RedisServer::start();
    let kit = kit(&server, false).await;
    let docs = kit.namespace::<String>("docs").build().unwrap();
    docs.set_with(
        "readme",
        "hello world ".repeat(500),
        SetOptions::new().tag("t"),
    )
    .await
    .unwrap();
    let sessions = kit.sessions().build().unwrap();
    sessions.create(NewSession::new("ada")).await.unwrap();
    let quota = Quota::new(5, Duration::from_secs(60)).unwrap();
    kit.limiter("login", quota)
        .build()
        .unwrap()
        .check("ip:1")
        .await;

    let out = text(&server, &["health"]).await;
    assert!(out.contains("status      healthy"), "{out}");
    let out = text(&server, &["namespaces"]).await;
    assert!(
        out.lines()
            .any(|l| l.starts_with("cache") && l.contains("docs")),
        "{out}"
    );
    let out = text(&server, &["inspect", "tierkit:c:docs:v1:readme"]).await;
    for line in [
        "entry       value",
        "tags        t",
        "zstd",
        "decoded     6003 bytes (5.9 KiB)",
        "utf8",
    ] {
        assert!(out.contains(line), "{line:?} in {out}");
    }
    let out = text(&server, &["sessions", "list", "ada"]).await;
    assert!(out.contains("other"), "{out}");
    let peek = [
        "limit", "peek", "login", "ip:1", "--limit", "5", "--window", "1m",
    ];
    let out = text(&server, &peek).await;
    assert!(out.contains("1 used, 4 of 5 left"), "{out}");
    let out = text(&server, &["invalidate", "tag", "docs", "t"]).await;
    assert!(out.contains("every instance"), "{out}");
}
