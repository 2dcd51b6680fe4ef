//! `tierkit invalidate`: by key, tag, pattern or whole namespace, through the library's own
//! `Namespace` calls, so Redis changes exactly as when a service invalidates and the same
//! backplane message makes every instance drop its L1 copies.

use serde_json::json;
use tierkit::cache::admin::{self, CacheKey};
use tierkit::cache::{Namespace, Reach};
use tierkit::Tierkit;

use crate::args::{Invalidate, NamespaceOpts};
use crate::output::{self, Failure, Report};

/// A namespace handle for invalidating: the value type never matters, nothing is decoded.
fn namespace(
    kit: &Tierkit,
    name: &str,
    opts: &NamespaceOpts,
) -> Result<Namespace<Vec<u8>>, Failure> {
    kit.namespace::<Vec<u8>>(name)
        .version(opts.version)
        .ttl(opts.ttl)
        .build()
        .map_err(Failure::from)
}

/// Refuses a namespace Redis holds nothing of (a typo), unless `--force`.
async fn known(kit: &Tierkit, name: &str, opts: &NamespaceOpts) -> Result<(), Failure> {
    if opts.force {
        return Ok(());
    }
    let conn = kit.conn().ok_or_else(|| Failure::new("no Redis"))?;
    let prefix = kit.config().prefix();
    // The namespace's epoch lives as long as any instance uses it: one EXISTS mostly does.
    let epoch = admin::epoch_keys(prefix, name, opts.version, &[]);
    let exists: u64 = conn
        .query(redis::cmd("EXISTS").arg(&epoch))
        .await
        .map_err(Failure::from)?;
    if exists > 0 {
        return Ok(());
    }
    let mut any = false;
    admin::scan(conn, &format!("{prefix}:c:{name}:*"), 1000, |keys| {
        any |= !keys.is_empty()
    })
    .await
    .map_err(Failure::from)?;
    if any {
        return Ok(());
    }
    Err(Failure::new(format!(
        "unknown namespace {name:?}: Redis holds no key under {prefix}:c:{name}: \
         (`tierkit namespaces` lists them; --force to announce it anyway, e.g. for an L1-only namespace)"
    )))
}

fn not_an_entry(prefix: &str, full: &str) -> Failure {
    Failure::new(format!(
        "{full:?} is not a cache entry's key under prefix {prefix:?}; give NAMESPACE KEY or \
         {prefix}:c:NAMESPACE:vVERSION:KEY"
    ))
}

fn reached(reach: Reach) -> Result<(), Failure> {
    match reach {
        Reach::AllTiers => Ok(()),
        _ => Err(Failure::new(
            "Redis did not take the invalidation (it failed or timed out); nothing was announced, run it again",
        )),
    }
}

pub async fn run(kit: &Tierkit, cmd: Invalidate, progress: bool) -> Result<Report, Failure> {
    let (what, name, target, opts) = match cmd {
        Invalidate::Key { target, opts } => match target.as_slice() {
            [ns, key] => ("key", ns.clone(), Some(key.clone()), opts),
            [full] => match admin::parse_key(kit.config().prefix(), full) {
                Some(CacheKey::Entry {
                    namespace,
                    version,
                    key,
                }) => {
                    let opts = NamespaceOpts { version, ..opts };
                    ("key", namespace.to_owned(), Some(key.to_owned()), opts)
                }
                _ => return Err(not_an_entry(kit.config().prefix(), full)),
            },
            _ => return Err(Failure::new("give NAMESPACE KEY, or one full Redis key")),
        },
        Invalidate::Tag {
            namespace,
            tag,
            opts,
        } => ("tag", namespace, Some(tag), opts),
        Invalidate::Pattern {
            namespace,
            pattern,
            opts,
        } => ("pattern", namespace, Some(pattern), opts),
        Invalidate::Namespace { namespace, opts } => ("namespace", namespace, None, opts),
    };
    let ns = namespace(kit, &name, &opts)?;
    known(kit, &name, &opts).await?;
    let arg = target.clone().unwrap_or_default();
    let bar = output::spinner(
        progress && matches!(what, "pattern" | "namespace"),
        "invalidating (SCAN over the namespace)",
    );
    let done = async {
        Ok::<_, Failure>(match what {
            "key" => {
                reached(ns.invalidate(&arg).await?)?;
                None
            }
            "tag" => {
                reached(ns.invalidate_tag(&arg).await?)?;
                None
            }
            "pattern" => {
                let (reach, n) = ns.invalidate_pattern(&arg).await?;
                reached(reach)?;
                Some(n)
            }
            _ => {
                let (reach, n) = ns.clear().await?;
                reached(reach)?;
                Some(n)
            }
        })
    }
    .await;
    bar.finish_and_clear();
    let removed = done?;
    let json = json!({
        "invalidated": what,
        "namespace": name,
        "nsVersion": opts.version,
        "target": target,
        "removed": removed,
        "announced": true,
    });
    let mut text = format!("invalidated {what}");
    if let Some(t) = &target {
        text.push_str(&format!(" {t:?}"));
    }
    text.push_str(&format!(" in namespace {name} (v{})", opts.version));
    if let Some(n) = removed {
        text.push_str(&format!(": {n} Redis keys removed"));
    }
    text.push_str("; every instance was told to drop its L1 copies\n");
    Ok(Report::new(json, text))
}
