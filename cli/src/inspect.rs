//! `tierkit inspect KEY`: what one Redis key holds, read through the library's own parsers
//! (frame, envelope, keyring), never deserialized: bincode is not self-describing.

use std::fmt::Write;

use serde_json::{json, Map, Value};
use tierkit::cache::admin::{self, CacheKey, EntryKind};
use tierkit::{Codec, Tierkit};

use crate::args::InspectArgs;
use crate::output::{self, Failure, Report};

/// What a key is by the key schema.
fn kind_of(prefix: &str, key: &str) -> (&'static str, Map<String, Value>) {
    let mut about = Map::new();
    if let Some(cache) = admin::parse_key(prefix, key) {
        let kind = match cache {
            CacheKey::Entry {
                namespace,
                version,
                key,
            } => {
                about.insert("namespace".into(), namespace.into());
                about.insert("nsVersion".into(), version.into());
                about.insert("cacheKey".into(), key.into());
                "cacheEntry"
            }
            CacheKey::Epoch { namespace, version } => {
                about.insert("namespace".into(), namespace.into());
                about.insert("nsVersion".into(), version.into());
                "namespaceEpoch"
            }
            CacheKey::TagEpoch {
                namespace,
                version,
                tag,
            } => {
                about.insert("namespace".into(), namespace.into());
                about.insert("nsVersion".into(), version.into());
                about.insert("tag".into(), tag.into());
                "tagEpoch"
            }
            CacheKey::Lease {
                namespace,
                version,
                key,
            } => {
                about.insert("namespace".into(), namespace.into());
                about.insert("nsVersion".into(), version.into());
                about.insert("cacheKey".into(), key.into());
                "loadingLease"
            }
            _ => "backplaneChannel",
        };
        return (kind, about);
    }
    let Some(rest) = key.strip_prefix(prefix).and_then(|r| r.strip_prefix(':')) else {
        return ("foreign", about);
    };
    if let Some(s) = rest.strip_prefix("s:") {
        let kind = match s {
            "users" => "sessionUsers",
            "counts" => "sessionCounts",
            _ if s.contains("}:sess:") => "session",
            _ if s.contains("}:idx:") => "sessionIndex",
            _ if s.contains("}:rt:") => "refreshToken",
            _ => "foreign",
        };
        return (kind, about);
    }
    if let Some(rl) = rest.strip_prefix("rl:") {
        let mut it = rl.splitn(3, ':');
        if let (Some(name), Some(algo @ ("log" | "ctr")), Some(k)) =
            (it.next(), it.next(), it.next())
        {
            about.insert("limiter".into(), name.into());
            about.insert(
                "algorithm".into(),
                if algo == "log" {
                    "slidingLog"
                } else {
                    "slidingCounter"
                }
                .into(),
            );
            about.insert("limitKey".into(), k.into());
            return ("limiterWindow", about);
        }
    }
    ("foreign", about)
}

/// The envelope's header as JSON, and the text line.
fn envelope_json(header: &tierkit::codec::Envelope) -> Value {
    json!({
        "version": header.version,
        "flags": header.flags,
        "compressed": header.compressed,
        "encrypted": header.key_id.is_some(),
        "keyId": header.key_id,
        "storedLen": header.stored_len,
        "bodyLen": header.body_len,
    })
}

/// Reads an envelope at `key`: its header, and the body (opened with the configured keys when
/// sealed) for the preview. Adds `envelope`, `decodedLen` and `preview` to `out`.
fn read_envelope(
    kit: &Tierkit,
    key: &str,
    envelope: &[u8],
    preview_len: usize,
    out: &mut Map<String, Value>,
    text: &mut String,
) {
    let header = match Codec::envelope(envelope) {
        Ok(h) => h,
        Err(e) => {
            out.insert("envelopeError".into(), e.to_string().into());
            let _ = writeln!(text, "envelope    none: {e}");
            add_preview(envelope, preview_len, out, text);
            return;
        }
    };
    out.insert("envelope".into(), envelope_json(&header));
    let _ = writeln!(
        text,
        "envelope    format {}, flags {:#04x}{}{}, {} bytes stored",
        header.version,
        header.flags,
        if header.compressed { ", zstd" } else { "" },
        header
            .key_id
            .map_or_else(String::new, |id| format!(", encrypted with key {id}")),
        header.stored_len
    );
    let codec = kit.codec();
    let body = match header.key_id {
        None => codec.body(envelope).map_err(|e| e.to_string()),
        Some(_) => match kit.config().encryption_keys() {
            None => Err(
                "encrypted; set TIERKIT_ENCRYPTION_KEYS to read its size and preview".to_owned(),
            ),
            // Sealed values are bound to their full Redis key.
            Some(keys) => keys
                .open(envelope, key.as_bytes())
                .map_err(|e| e.to_string())
                .and_then(|plain| {
                    if let Ok(inner) = Codec::envelope(&plain) {
                        out.insert("plainEnvelope".into(), envelope_json(&inner));
                    }
                    codec.body(&plain).map_err(|e| e.to_string())
                }),
        },
    };
    match body {
        Ok(body) => {
            out.insert("decodedLen".into(), body.len().into());
            let _ = writeln!(
                text,
                "decoded     {} bytes ({}), the bincode body",
                body.len(),
                output::bytes(body.len() as u64)
            );
            add_preview(&body, preview_len, out, text);
        }
        Err(why) => {
            out.insert("decodedLen".into(), Value::Null);
            out.insert("bodyError".into(), why.clone().into());
            let _ = writeln!(text, "decoded     -: {why}");
        }
    }
}

fn add_preview(bytes: &[u8], len: usize, out: &mut Map<String, Value>, text: &mut String) {
    let shown = &bytes[..bytes.len().min(len)];
    let (hex, utf8) = output::preview(shown);
    let truncated = shown.len() < bytes.len();
    out.insert(
        "preview".into(),
        json!({ "hex": hex, "utf8": utf8, "bytes": shown.len(), "truncated": truncated }),
    );
    let more = if truncated { " ..." } else { "" };
    let _ = writeln!(text, "hex         {hex}{more}\nutf8        {utf8}{more}");
}

pub async fn run(kit: &Tierkit, args: &InspectArgs) -> Result<Report, Failure> {
    let conn = kit.conn().ok_or_else(|| Failure::new("no Redis"))?;
    let key = args.key.as_str();
    let redis_type: String = conn
        .query(redis::cmd("TYPE").arg(key))
        .await
        .map_err(Failure::from)?;
    if redis_type == "none" {
        return Err(Failure::new(format!(
            "no key {key:?} in Redis (give the full key, e.g. {}:c:NAMESPACE:v1:KEY; `tierkit namespaces` lists what there is)",
            kit.config().prefix()
        )));
    }
    let pttl: i64 = conn
        .query(redis::cmd("PTTL").arg(key))
        .await
        .map_err(Failure::from)?;
    let memory = admin::memory_usage(conn, key).await.ok().flatten();
    let prefix = kit.config().prefix();
    let (kind, about) = kind_of(prefix, key);
    let mut out = Map::new();
    out.insert("key".into(), key.into());
    out.insert("kind".into(), kind.into());
    out.extend(about);
    out.insert("type".into(), redis_type.clone().into());
    out.insert("pttlMs".into(), (pttl >= 0).then_some(pttl).into());
    out.insert("memoryBytes".into(), memory.into());
    let mut text = String::new();
    let _ = writeln!(
        text,
        "key         {key}\nkind        {kind} (Redis {redis_type})"
    );
    let _ = writeln!(
        text,
        "ttl         {}\nmemory      {}",
        if pttl >= 0 {
            format!("{pttl} ms")
        } else {
            "none".into()
        },
        memory.map_or_else(|| "-".into(), output::bytes)
    );
    match redis_type.as_str() {
        "string" => {
            let bytes: Option<Vec<u8>> = conn
                .query(redis::cmd("GET").arg(key))
                .await
                .map_err(Failure::from)?;
            let bytes = bytes.ok_or_else(|| Failure::new(format!("{key:?} expired meanwhile")))?;
            out.insert("storedLen".into(), bytes.len().into());
            if kind == "cacheEntry" {
                entry(kit, key, &bytes, pttl, args.preview, &mut out, &mut text).await;
            } else if matches!(kind, "namespaceEpoch" | "tagEpoch" | "loadingLease") {
                let value = String::from_utf8_lossy(&bytes).into_owned();
                let _ = writeln!(text, "value       {value}");
                out.insert("value".into(), value.into());
            } else {
                read_envelope(kit, key, &bytes, args.preview, &mut out, &mut text);
            }
        }
        "hash" => {
            let fields: Vec<(String, Vec<u8>)> = conn
                .query(redis::cmd("HGETALL").arg(key))
                .await
                .map_err(Failure::from)?;
            let mut list = Vec::new();
            for (field, value) in &fields {
                let mut f = Map::new();
                f.insert("field".into(), field.clone().into());
                f.insert("len".into(), value.len().into());
                let mut line =
                    format!("field       {field}: {}", output::bytes(value.len() as u64));
                if let Ok(header) = Codec::envelope(value) {
                    f.insert("envelope".into(), envelope_json(&header));
                    if let Some(id) = header.key_id {
                        line.push_str(&format!(", encrypted with key {id}"));
                    }
                } else if value.len() <= 32 {
                    let v = String::from_utf8_lossy(value).into_owned();
                    line.push_str(&format!(" = {v}"));
                    f.insert("value".into(), v.into());
                }
                let _ = writeln!(text, "{line}");
                list.push(Value::Object(f));
            }
            out.insert("fields".into(), list.into());
        }
        "zset" => {
            let n: u64 = conn
                .query(redis::cmd("ZCARD").arg(key))
                .await
                .map_err(Failure::from)?;
            let _ = writeln!(text, "members     {n}");
            out.insert("members".into(), n.into());
        }
        "set" | "list" => {
            let cmd = if redis_type == "set" { "SCARD" } else { "LLEN" };
            let n: u64 = conn
                .query(redis::cmd(cmd).arg(key))
                .await
                .map_err(Failure::from)?;
            let _ = writeln!(text, "members     {n}");
            out.insert("members".into(), n.into());
        }
        _ => {}
    }
    Ok(Report::new(Value::Object(out), text))
}

/// A cache entry: its frame, whether its epochs still hold it, its envelope.
async fn entry(
    kit: &Tierkit,
    key: &str,
    bytes: &[u8],
    pttl: i64,
    preview: usize,
    out: &mut Map<String, Value>,
    text: &mut String,
) {
    let Some(entry) = admin::parse_entry(bytes) else {
        out.insert("frameError".into(), "not a tierkit cache frame".into());
        let _ = writeln!(text, "frame       none: not a tierkit cache frame");
        add_preview(bytes, preview, out, text);
        return;
    };
    let kind = match entry.kind {
        EntryKind::Value => "value",
        EntryKind::Tombstone => "tombstone",
        EntryKind::Absent => "notFound",
        _ => "unknown",
    };
    let grace_ms = u64::try_from(entry.grace.as_millis()).unwrap_or(u64::MAX);
    // A fail-safe entry's logical life ends `grace` before Redis drops it.
    let logical =
        (pttl >= 0).then(|| pttl.saturating_sub(i64::try_from(grace_ms).unwrap_or(i64::MAX)));
    // Whether the epochs it names still hold: otherwise no instance serves it.
    let live = match (out.get("namespace"), out.get("nsVersion")) {
        (Some(Value::String(ns)), Some(v)) => {
            let tags: Vec<&str> = entry.tags.iter().map(|(t, _)| *t).collect();
            let version = v.as_u64().and_then(|v| u32::try_from(v).ok()).unwrap_or(1);
            let keys = admin::epoch_keys(kit.config().prefix(), ns, version, &tags);
            let wanted: Vec<u64> = std::iter::once(entry.namespace_epoch)
                .chain(entry.tags.iter().map(|(_, e)| *e))
                .collect();
            let mut live = Some(true);
            if let Some(conn) = kit.conn() {
                for (k, want) in keys.iter().zip(wanted) {
                    let got: Option<String> = match conn.query(redis::cmd("GET").arg(k)).await {
                        Ok(v) => v,
                        Err(_) => {
                            live = None;
                            break;
                        }
                    };
                    if got.and_then(|g| g.parse::<u64>().ok()) != Some(want) {
                        live = Some(false);
                    }
                }
            }
            live
        }
        _ => None,
    };
    let tags: Vec<Value> = entry
        .tags
        .iter()
        .map(|(t, e)| json!({ "tag": t, "epoch": e }))
        .collect();
    out.insert(
        "entry".into(),
        json!({
            "kind": kind,
            "version": entry.version,
            "namespaceEpoch": entry.namespace_epoch,
            "tags": tags,
            "graceMs": grace_ms,
            "logicalTtlMs": logical,
            "epochsHold": live,
        }),
    );
    let tag_names: Vec<&str> = entry.tags.iter().map(|(t, _)| *t).collect();
    let _ = writeln!(
        text,
        "entry       {kind}, version {}, namespace epoch {}{}",
        entry.version,
        entry.namespace_epoch,
        match live {
            Some(true) => " (epochs hold: served)",
            Some(false) => " (an epoch moved on: retired, never served)",
            None => "",
        }
    );
    let _ = writeln!(
        text,
        "tags        {}",
        if tag_names.is_empty() {
            "none".to_owned()
        } else {
            tag_names.join(", ")
        }
    );
    if grace_ms > 0 {
        let _ = writeln!(
            text,
            "fail-safe   kept {grace_ms} ms past its logical expiry (logical ttl {} ms)",
            logical.unwrap_or(-1)
        );
    }
    if entry.kind == EntryKind::Value {
        holders(kit, logical, out, text).await;
        read_envelope(kit, key, entry.envelope, preview, out, text);
    }
}

/// Which instances may hold an L1 copy: any instance subscribed to the backplane (the only
/// ones that can be told to drop it), each for at most the entry's remaining life in Redis
/// (an L1 copy never outlives it). Best effort: left out when Redis refuses the commands
/// (an ACL without `PUBSUB` or `CLIENT`).
async fn holders(
    kit: &Tierkit,
    logical_ttl: Option<i64>,
    out: &mut Map<String, Value>,
    text: &mut String,
) {
    let Some(conn) = kit.conn() else { return };
    let channel = admin::backplane_channel(kit.config().prefix());
    let numsub: Option<(String, i64)> = conn
        .query(redis::cmd("PUBSUB").arg("NUMSUB").arg(&channel))
        .await
        .ok();
    // This tool is subscribed too.
    let others = numsub.map(|(_, n)| (n - 1).max(0));
    // Addresses of the pub/sub connections the server sees (tierkit instances among them,
    // this tool's own included): where the copies can be.
    let clients: Option<String> = conn
        .query(redis::cmd("CLIENT").arg("LIST").arg("TYPE").arg("pubsub"))
        .await
        .ok();
    let addrs: Option<Vec<String>> = clients.map(|list| {
        list.lines()
            .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("addr=")))
            .map(str::to_owned)
            .collect()
    });
    out.insert(
        "l1".into(),
        json!({
            "otherSubscribers": others,
            "pubsubClients": addrs,
            "atMostMs": logical_ttl,
        }),
    );
    if let Some(n) = others {
        let _ = writeln!(
            text,
            "l1 copies   may be held by {n} other instance(s) on the backplane{}{}",
            logical_ttl.map_or_else(String::new, |ms| format!(", for at most {ms} ms")),
            addrs.map_or_else(String::new, |a| format!(
                " (pub/sub clients: {})",
                a.join(", ")
            ))
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_named_by_the_schema() {
        assert_eq!(kind_of("tk", "tk:c:users:v1:42").0, "cacheEntry");
        assert_eq!(kind_of("tk", "tk:c:users:e1").0, "namespaceEpoch");
        assert_eq!(kind_of("tk", "tk:s:{ab}:sess:ff").0, "session");
        assert_eq!(kind_of("tk", "tk:s:{ab}:idx:u").0, "sessionIndex");
        let (kind, about) = kind_of("tk", "tk:rl:login:ctr:ip:1");
        assert_eq!(
            (kind, &about["limitKey"]),
            ("limiterWindow", &json!("ip:1"))
        );
        assert_eq!(kind_of("tk", "other:c:users:v1:42").0, "foreign");
    }
}
