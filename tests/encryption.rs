//! Encrypted namespaces against a real Redis: values are sealed at rest, bound to their key,
//! readable by every instance holding the keys, and anything else at their place (tampered,
//! moved, plain, sealed with a dropped key) is a counted miss that the next fill replaces.

mod support;

use serde::{Deserialize, Serialize};
use support::Backend;
use tierkit::cache::Namespace;
use tierkit::codec::Keyring;
use tierkit::Tierkit;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Profile {
    email: String,
    ip: String,
    user_agent: String,
}

const EMAIL: &str = "alice.marker@example.com";
const IP: &str = "203.0.113.77";
const AGENT: &str = "MarkerBrowser/9.1";

fn profile() -> Profile {
    Profile {
        email: EMAIL.into(),
        ip: IP.into(),
        user_agent: AGENT.into(),
    }
}

fn keys(ids: &[u8]) -> Keyring {
    let material: Vec<(u8, [u8; 32])> = ids.iter().map(|&id| (id, [id; 32])).collect();
    Keyring::new(material.iter().map(|(id, k)| (*id, k.as_slice()))).unwrap()
}

/// The session name key of every instance with encryption keys here.
const NAME_KEY: [u8; 32] = [42; 32];

async fn kit(backend: &Backend, ring: Option<Keyring>) -> Tierkit {
    let builder = backend.builder();
    let builder = match ring {
        Some(ring) => builder.encryption_keys(ring).session_name_key(NAME_KEY),
        None => builder,
    };
    backend.kit_with(builder).await
}

fn encrypted(kit: &Tierkit) -> Namespace<Profile> {
    kit.namespace::<Profile>("profiles")
        .encrypted()
        .build()
        .unwrap()
}

fn raw_get(backend: &Backend, redis_key: &str) -> Option<Vec<u8>> {
    let server = backend.server().unwrap();
    let mut con = server.client().get_connection().unwrap();
    redis::cmd("GET").arg(redis_key).query(&mut con).unwrap()
}

fn raw_set(backend: &Backend, redis_key: &str, bytes: &[u8]) {
    let server = backend.server().unwrap();
    let mut con = server.client().get_connection().unwrap();
    let () = redis::cmd("SET")
        .arg(redis_key)
        .arg(bytes)
        .query(&mut con)
        .unwrap();
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Every key of the server, and every byte string each holds (strings, hashes, sets, sorted
/// sets, lists), for a scan of the whole keyspace.
fn dump(backend: &Backend) -> Vec<(String, Vec<Vec<u8>>)> {
    let server = backend.server().unwrap();
    let mut con = server.client().get_connection().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut con).unwrap();
    let mut out = Vec::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE").arg(&key).query(&mut con).unwrap();
        let values: Vec<Vec<u8>> = match kind.as_str() {
            "string" => vec![redis::cmd("GET").arg(&key).query(&mut con).unwrap()],
            "hash" => redis::cmd("HGETALL").arg(&key).query(&mut con).unwrap(),
            "set" => redis::cmd("SMEMBERS").arg(&key).query(&mut con).unwrap(),
            "zset" => redis::cmd("ZRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query(&mut con)
                .unwrap(),
            "list" => redis::cmd("LRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query(&mut con)
                .unwrap(),
            _ => Vec::new(),
        };
        out.push((key, values));
    }
    out
}

#[tokio::test]
async fn values_are_sealed_at_rest_and_read_by_every_instance_with_the_keys() {
    let backend = Backend::redis();
    let (a, b) = (
        kit(&backend, Some(keys(&[1]))).await,
        kit(&backend, Some(keys(&[1]))).await,
    );
    let (on_a, on_b) = (encrypted(&a), encrypted(&b));
    for i in 0..20 {
        on_a.set(&format!("user{i}"), profile()).await.unwrap();
    }
    let loaded = on_a
        .get_or_set("loaded", || async { Ok::<_, std::io::Error>(profile()) })
        .await
        .unwrap();
    assert_eq!(*loaded, profile());
    assert_eq!(*on_b.get("user3").await.unwrap(), profile());
    assert_eq!(on_b.stats().l2_hits, 1);

    // No marked value, e-mail, IP or user agent anywhere in the keyspace.
    let dumped = dump(&backend);
    assert!(dumped.iter().any(|(k, _)| k.contains("profiles")));
    for (key, values) in &dumped {
        for value in values {
            for marker in [EMAIL, IP, AGENT, "alice"] {
                assert!(!contains(value, marker), "{marker} in plain at {key}");
            }
        }
    }
}

#[tokio::test]
async fn tampered_moved_plain_or_foreign_key_values_are_counted_misses_then_replaced() {
    let backend = Backend::redis();
    let a = kit(&backend, Some(keys(&[1]))).await;
    let on_a = encrypted(&a);
    on_a.set("alice", profile()).await.unwrap();
    let sealed = raw_get(&backend, &on_a.redis_key("alice")).unwrap();

    // Moved to another key's place.
    raw_set(&backend, &on_a.redis_key("mallory"), &sealed);
    // Tampered with: the last byte (inside the tag).
    let mut tampered = sealed.clone();
    *tampered.last_mut().unwrap() ^= 1;
    raw_set(&backend, &on_a.redis_key("bob"), &tampered);
    // Plain: the same namespace name written without encryption.
    let plain_kit = kit(&backend, None).await;
    let plain = plain_kit.namespace::<Profile>("profiles").build().unwrap();
    plain.set("carol", profile()).await.unwrap();
    // Sealed with a key the reader does not list.
    let other = kit(&backend, Some(keys(&[9]))).await;
    encrypted(&other).set("dave", profile()).await.unwrap();

    // A fresh instance (no L1 copies) with key 1 serves none of them.
    let reader = kit(&backend, Some(keys(&[1]))).await;
    let on_r = encrypted(&reader);
    for key in ["mallory", "bob", "carol", "dave"] {
        assert!(on_r.get(key).await.is_none(), "{key} was served");
    }
    assert_eq!(on_r.stats().decode_failures, 4);
    assert_eq!(*on_r.get("alice").await.unwrap(), profile());
    // And the plain reader does not read sealed values as anything.
    assert!(plain.get("alice").await.is_none());

    // The next fill replaces what did not decrypt, sealed for its own key.
    let fresh = Profile {
        email: "new@example.com".into(),
        ..profile()
    };
    let got = on_r
        .get_or_set("bob", {
            let fresh = fresh.clone();
            move || async move { Ok::<_, std::io::Error>(fresh) }
        })
        .await
        .unwrap();
    assert_eq!(*got, fresh);
    let healed = kit(&backend, Some(keys(&[1]))).await;
    assert_eq!(*encrypted(&healed).get("bob").await.unwrap(), fresh);
}

#[tokio::test]
async fn keys_rotate_without_a_flag_day() {
    let backend = Backend::redis();
    let old = kit(&backend, Some(keys(&[1]))).await;
    encrypted(&old).set("before", profile()).await.unwrap();
    // Key 2 becomes current; key 1 stays listed, so what it sealed still reads.
    let rotated = kit(&backend, Some(keys(&[2, 1]))).await;
    let on_rot = encrypted(&rotated);
    assert_eq!(*on_rot.get("before").await.unwrap(), profile());
    on_rot.set("after", profile()).await.unwrap();
    // Sealed under key 2: the sealed envelope's header is `TK`, version 1, flags 0b10, key id.
    let stored = raw_get(&backend, &on_rot.redis_key("after")).unwrap();
    let header = stored
        .windows(4)
        .position(|w| w == b"TK\x01\x02")
        .expect("a sealed envelope");
    assert_eq!(stored[header + 4], 2);
    // Once key 1 is dropped, what it sealed is a miss, what key 2 sealed reads.
    let dropped = kit(&backend, Some(keys(&[2]))).await;
    let on_dropped = encrypted(&dropped);
    assert!(on_dropped.get("before").await.is_none());
    assert_eq!(*on_dropped.get("after").await.unwrap(), profile());
    // An instance that never had key 2 cannot read the new value.
    let stale = kit(&backend, Some(keys(&[1]))).await;
    assert!(encrypted(&stale).get("after").await.is_none());
}

/// With keys configured, session records are sealed in Redis, bound to their session's key:
/// no IP, user agent or metadata in the clear, readable by every instance holding the keys,
/// and a record that does not open (no keys, moved, plain) is no session.
#[tokio::test]
async fn session_records_are_sealed_at_rest() {
    use tierkit::session::{NewSession, Validation};

    let backend = Backend::redis();
    let a = kit(&backend, Some(keys(&[1]))).await;
    let sessions = a.sessions().build().unwrap();
    let created = sessions
        .create(
            NewSession::new("user-42")
                .ip(IP)
                .user_agent(AGENT)
                .meta("email", EMAIL),
        )
        .await
        .unwrap();
    let id = created.session_id.expose().to_owned();

    // Every session record (a hash) holds nothing readable.
    let dumped = dump(&backend);
    let records: Vec<_> = dumped
        .iter()
        .filter(|(k, _)| k.contains(":sess:"))
        .collect();
    assert_eq!(records.len(), 1);
    for (key, values) in records {
        for value in values {
            for marker in [EMAIL, IP, AGENT, "user-42"] {
                assert!(!contains(value, marker), "{marker} in plain at {key}");
            }
        }
    }

    // Another instance with the keys validates it; one without, or with other keys, does not.
    let b = kit(&backend, Some(keys(&[1]))).await;
    let on_b = b.sessions().build().unwrap();
    match on_b.validate(&id).await {
        Validation::Valid(s) => assert_eq!(s.ip, IP),
        other => panic!("{other:?}"),
    }
    for ring in [None, Some(keys(&[9]))] {
        let other = kit(&backend, ring).await;
        let on_other = other.sessions().build().unwrap();
        assert!(
            !matches!(on_other.validate(&id).await, Validation::Valid(_)),
            "a sealed record was read without its key"
        );
    }
}

/// The whole keyspace after a session workload with encryption and keyed names on: no user id
/// (plain or e-mail-like), IP, user agent or metadata in any key name or stored byte; tokens
/// carry a tag no one can test a user id against without the name key.
#[tokio::test]
async fn no_session_secret_or_user_shows_anywhere_in_the_keyspace() {
    use tierkit::session::{DeviceKind, NewSession, Refresh, Validation};

    let backend = Backend::redis();
    let a = kit(&backend, Some(keys(&[1]))).await;
    let sessions = a.sessions().build().unwrap();
    let users = [EMAIL, "user-42", "bob.marker"];
    let mut ids = Vec::new();
    for (i, user) in users.iter().cycle().take(9).enumerate() {
        let created = sessions
            .create(
                NewSession::new(*user)
                    .device(DeviceKind::Mobile, "Pixel")
                    .ip(IP)
                    .user_agent(AGENT)
                    .meta("email", EMAIL),
            )
            .await
            .unwrap();
        // The tag is neither the user id nor its unkeyed hash.
        let tag = &created.session_id.expose()[..8];
        assert_ne!(tag, &sha256_hex(user)[..8], "an unkeyed tag for {user}");
        if i % 3 == 0 {
            let Refresh::Rotated { .. } = sessions
                .refresh(created.refresh_token.expose())
                .await
                .unwrap()
            else {
                panic!("a fresh token rotates")
            };
        }
        ids.push(created.session_id.expose().to_owned());
    }
    assert!(matches!(
        sessions.validate(&ids[1]).await,
        Validation::Valid(_)
    ));
    assert_eq!(sessions.list(EMAIL).await.unwrap().len(), 3);
    assert!(sessions.revoke(&ids[0]).await.unwrap());
    assert_eq!(sessions.revoke_all("bob.marker").await.unwrap(), 3);
    sessions.sweep().await.unwrap();
    assert_eq!(sessions.stats().await.unwrap().active, 5);

    let dumped = dump(&backend);
    assert!(dumped.iter().any(|(k, _)| k.contains(":idx:k1.")));
    assert!(dumped.iter().any(|(k, _)| k.ends_with(":s:users")));
    for (key, values) in &dumped {
        for marker in [EMAIL, IP, AGENT, "user-42", "bob.marker", "Pixel"] {
            assert!(!key.contains(marker), "{marker} in the key name {key}");
            for value in values {
                assert!(!contains(value, marker), "{marker} in plain at {key}");
            }
        }
    }

    // A record copied to another session's place does not open there.
    let server = backend.server().unwrap();
    let mut con = server.client().get_connection().unwrap();
    let record_keys: Vec<String> = dumped
        .iter()
        .map(|(k, _)| k.clone())
        .filter(|k| k.contains(":sess:"))
        .collect();
    let (from, to) = (&record_keys[0], &record_keys[1]);
    let blob: Vec<u8> = redis::cmd("HGET")
        .arg(from)
        .arg("d")
        .query(&mut con)
        .unwrap();
    let () = redis::cmd("HSET")
        .arg(to)
        .arg("d")
        .arg(blob)
        .query(&mut con)
        .unwrap();
    let mut valid = 0;
    for id in &ids {
        if matches!(sessions.validate(id).await, Validation::Valid(_)) {
            valid += 1;
        }
    }
    // Five live sessions, one of which now holds another's record: four validate.
    assert_eq!(valid, 4);
}

/// Turning the name key on signs every user out once: a session made under plain names is
/// not honoured (a revocation of all of its user's sessions could not reach it), and the sweep
/// takes it off the counts. The name key is required with encryption keys.
#[tokio::test]
async fn keyed_names_retire_plain_named_sessions_and_are_required_with_encryption() {
    use tierkit::session::{NewSession, Refresh, Validation};

    let backend = Backend::redis();
    let plain = backend.kit_with(backend.builder()).await;
    let before = plain.sessions().build().unwrap();
    let old = before.create(NewSession::new("ann")).await.unwrap();
    assert_eq!(before.stats().await.unwrap().active, 1);

    let keyed = backend
        .kit_with(backend.builder().session_name_key(NAME_KEY))
        .await;
    let after = keyed.sessions().build().unwrap();
    assert_eq!(
        after.validate(old.session_id.expose()).await,
        Validation::Invalid
    );
    assert!(matches!(
        after.refresh(old.refresh_token.expose()).await.unwrap(),
        Refresh::Invalid
    ));
    assert!(after.list("ann").await.unwrap().is_empty());
    let new = after.create(NewSession::new("ann")).await.unwrap();
    assert_eq!(after.list("ann").await.unwrap().len(), 1);
    // The sweep walks the plain name too, finds its session foreign, and counts it off.
    assert_eq!(after.sweep().await.unwrap(), 1);
    assert_eq!(after.stats().await.unwrap().active, 1);
    assert_eq!(after.revoke_all("ann").await.unwrap(), 1);
    assert_eq!(
        after.validate(new.session_id.expose()).await,
        Validation::Invalid
    );
    // Revoking the old session by its id still takes it off its plain index, once.
    assert!(!after.revoke(old.session_id.expose()).await.unwrap());

    let sealed_only = backend
        .kit_with(backend.builder().encryption_keys(keys(&[1])))
        .await;
    let err = sealed_only.sessions().build().unwrap_err();
    assert!(
        err.to_string().contains("session_name_key"),
        "unclear error: {err}"
    );
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
